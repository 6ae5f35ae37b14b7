//! The decoder (`castle_model::Decoder`) against the uncached full forward, token by token:
//! float64 on NdArray to 1e-10 and float32 on Flex to 1e-5 (the host decoder), for the baseline,
//! CASTLE and CASTLE-SWL (W = 3), from a 1-token prompt and one across a kernel block, through
//! the lookahead window up to the model's context; a batch of sequences with prompts of
//! different lengths, one finishing and another taking its slot, against each decoded alone;
//! the errors. On wgpu, the tensor-op path behind the same calls.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::Flex;
use burn::prelude::*;
use castle_model::{AttentionKind, DecodeError, Decoder, KernelBackend, PromptLogits};
use common::{max_abs_diff, random_tokens, tiny_config, values};

const VOCAB: usize = 61;
const CONTEXT: usize = 14;
const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];

fn model<B: KernelBackend>(kind: AttentionKind, device: &B::Device) -> castle_model::CastleLm<B> {
    let mut config = tiny_config(kind);
    config.max_seq_len = CONTEXT;
    config.init::<B>(VOCAB, device)
}

fn ids<B: Backend>(tokens: &Tensor<B, 2, Int>) -> Vec<u32> {
    tokens.to_data().iter::<i64>().map(|t| t as u32).collect()
}

/// The full forward's logits over `tokens[..len]`, every position, as f32.
fn forward<B: KernelBackend>(
    model: &castle_model::CastleLm<B>,
    tokens: &Tensor<B, 2, Int>,
    len: usize,
) -> Vec<f64> {
    values(model.forward(tokens.clone().slice([0..1, 0..len])))
}

/// Decodes a context's worth of random tokens after prompts of 1 and 5 positions (the kernel
/// block is 4) and compares every logit with the full forward's.
fn decoding_matches_the_forward<B: KernelBackend>(tolerance: f64) {
    let device = Default::default();
    for kind in KINDS {
        let model = model::<B>(kind, &device);
        let tokens = random_tokens::<B>(1, CONTEXT, VOCAB, 5, &device);
        let ids = ids(&tokens);
        for prompt in [1, 5] {
            let mut decoder = Decoder::new(&model);
            let (seq, logits) = decoder
                .start::<f64>(&ids[..prompt], PromptLogits::All)
                .unwrap();
            let err = max_abs_diff(&forward(&model, &tokens, prompt), &logits);
            assert!(err < tolerance, "{kind}, prompt {prompt}: error {err:e}");
            let mut logits: Vec<f64> = vec![];
            for t in prompt..CONTEXT {
                decoder.step(&[(seq, ids[t])], &mut logits).unwrap();
                let full = forward(&model, &tokens, t + 1);
                let err = max_abs_diff(&full[t * VOCAB..], &logits);
                assert!(
                    err < tolerance,
                    "{kind}, prompt {prompt}, position {t}: error {err:e}"
                );
            }
            assert_eq!(decoder.len(seq), Some(CONTEXT));
            assert_eq!(
                decoder.step(&[(seq, 0)], &mut logits),
                Err(DecodeError::Full { seq, max: CONTEXT })
            );
        }
    }
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn host_decoding_in_f64_matches_the_forward() {
    decoding_matches_the_forward::<NdArray<f64>>(1e-10);
}

#[test]
fn host_decoding_in_f32_on_flex_matches_the_forward() {
    decoding_matches_the_forward::<Flex>(1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn tensor_op_decoding_on_wgpu_matches_the_forward() {
    decoding_matches_the_forward::<castle_kernels::cube::Wgpu>(1e-4);
}

/// A sequence in the batch test: its prompt, then the tokens fed after it.
struct Script {
    prompt: Vec<u32>,
    fed: Vec<u32>,
}

/// Logits of each step of `script` decoded alone.
fn alone<B: KernelBackend>(model: &castle_model::CastleLm<B>, script: &Script) -> Vec<Vec<f32>> {
    let mut decoder = Decoder::new(model);
    let (seq, first) = decoder.start(&script.prompt, PromptLogits::Last).unwrap();
    let mut out = vec![first];
    for &token in &script.fed {
        let mut logits = vec![];
        decoder.step(&[(seq, token)], &mut logits).unwrap();
        out.push(logits);
    }
    out
}

/// A batch of `2 workers + 1` sequences (so that the decoder splits it into groups of rows,
/// unequal ones) with prompts of 1 to 8 tokens; after three steps the second one finishes and a
/// new sequence takes its slot. Each sequence's logits equal its own decoded alone.
#[test]
fn a_batch_decodes_as_each_sequence_alone() {
    type B = Flex;
    let device = Default::default();
    let n = 2 * rayon::current_num_threads() + 1;
    for kind in KINDS {
        let model = model::<B>(kind, &device);
        let stream = ids(&random_tokens::<B>(1, 16 * (n + 1), VOCAB, 11, &device));
        let script = |i: usize, prompt: usize, fed: usize| Script {
            prompt: stream[16 * i..16 * i + prompt].to_vec(),
            fed: stream[16 * i + prompt..16 * i + prompt + fed].to_vec(),
        };
        // Sequence `n` is the one that starts in the finished one's slot.
        let scripts: Vec<Script> = (0..=n)
            .map(|i| match i {
                1 => script(i, 4, 3),
                _ if i == n => script(i, 2, 3),
                _ => script(i, 1 + 3 * i % 8, 6),
            })
            .collect();
        let expected: Vec<Vec<Vec<f32>>> = scripts.iter().map(|s| alone(&model, s)).collect();
        let mut decoder = Decoder::new(&model);
        let mut got: Vec<Vec<Vec<f32>>> = vec![vec![]; scripts.len()];
        // `(script, sequence)` of the running ones, in the order each step lists them.
        let mut running = vec![];
        for (i, s) in scripts[..n].iter().enumerate() {
            let (seq, logits) = decoder.start(&s.prompt, PromptLogits::Last).unwrap();
            running.push((i, seq));
            got[i].push(logits);
        }
        let mut logits = vec![];
        for step in 0..6 {
            if step == 3 {
                let (_, freed) = running.remove(1);
                decoder.finish(freed);
                let (seq, first) = decoder
                    .start(&scripts[n].prompt, PromptLogits::Last)
                    .unwrap();
                assert_eq!(seq, freed, "the new sequence takes the free slot");
                got[n].push(first);
                running.push((n, seq));
                running.reverse(); // any order
            }
            let fed: Vec<(usize, u32)> = running
                .iter()
                .map(|&(i, seq)| (seq, scripts[i].fed[got[i].len() - 1]))
                .collect();
            decoder.step(&fed, &mut logits).unwrap();
            for (&(i, _), row) in running.iter().zip(logits.chunks(VOCAB)) {
                got[i].push(row.to_vec());
            }
        }
        assert_eq!(decoder.running(), n);
        for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(got.len(), expected.len(), "{kind}: sequence {i}'s steps");
            for (t, (g, e)) in got.iter().zip(expected).enumerate() {
                let err = max_abs_diff(&to_f64(g), &to_f64(e));
                assert!(err < 1e-5, "{kind}: sequence {i}, step {t}: error {err:e}");
            }
        }
    }
}

#[test]
fn bad_requests_are_refused_with_their_numbers() {
    type B = NdArray<f64>;
    let device = Default::default();
    let model = model::<B>(AttentionKind::Castle, &device);
    let mut decoder = Decoder::new(&model);
    let long = vec![1; CONTEXT + 1];
    let err = decoder.start::<f32>(&long, PromptLogits::Last).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PromptTooLong {
            len: CONTEXT + 1,
            max: CONTEXT
        }
    );
    assert!(err.to_string().contains("15 tokens") && err.to_string().contains("14 tokens"));
    assert_eq!(
        decoder.start::<f32>(&[], PromptLogits::Last).unwrap_err(),
        DecodeError::EmptyPrompt
    );
    assert_eq!(
        decoder
            .start::<f32>(&[3, VOCAB as u32], PromptLogits::Last)
            .unwrap_err(),
        DecodeError::TokenOutOfVocab {
            token: VOCAB as u32,
            vocab: VOCAB
        }
    );
    let (seq, _) = decoder.start::<f32>(&[3, 4], PromptLogits::Last).unwrap();
    let mut logits: Vec<f32> = vec![];
    assert_eq!(
        decoder.step(&[(seq, 1), (seq, 2)], &mut logits),
        Err(DecodeError::Twice { seq })
    );
    assert_eq!(
        decoder.step(&[(seq + 1, 1)], &mut logits),
        Err(DecodeError::NotRunning { seq: seq + 1 })
    );
    assert_eq!(decoder.len(seq), Some(2), "a refused step changes nothing");
    decoder.step(&[(seq, 1)], &mut logits).unwrap();
    assert_eq!(logits.len(), VOCAB);
    decoder.finish(seq);
    assert_eq!(
        decoder.step(&[(seq, 1)], &mut logits),
        Err(DecodeError::NotRunning { seq })
    );
}
