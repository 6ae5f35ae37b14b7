//! Cached generation (KV cache for the baseline, UQ-KV cache for CASTLE and CASTLE-SWL) gives
//! the same tokens as recomputing the full sequence at every step.

use burn::backend::NdArray;
use castle_eval::generate::{
    fit_to_context, generate, generate_uncached, sample, Rng, SamplingOptions, TextStream,
};
use castle_model::{AttentionKind, CastleLm, ModelConfig};
use rand::SeedableRng;

type B = NdArray<f32>;
const VOCAB: usize = 61;

fn model(kind: AttentionKind, window: Option<usize>) -> CastleLm<B> {
    let mut config = ModelConfig::new(2, 32, 4, 8).with_attention(kind, window);
    config.block_size = 4;
    config.max_seq_len = 48;
    config.validate().unwrap();
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 3);
    config.init::<B>(VOCAB, &device)
}

fn kinds() -> [(AttentionKind, Option<usize>); 3] {
    [
        (AttentionKind::Baseline, None),
        (AttentionKind::Castle, None),
        // A window shorter than the sequence, so rows do leave it during generation.
        (AttentionKind::CastleSwl, Some(3)),
    ]
}

#[test]
fn greedy_generation_through_the_cache_equals_full_recomputation() {
    let prompt = [5u32, 17, 3, 42, 8, 8, 30];
    let greedy = SamplingOptions::default();
    for (kind, window) in kinds() {
        let m = model(kind, window);
        let mut streamed = vec![];
        let cached = generate(&m, &prompt, 30, None, &greedy, |t| streamed.push(t)).unwrap();
        let full = generate_uncached(&m, &prompt, 30, None, &greedy, |_| {}).unwrap();
        assert_eq!(cached.tokens.len(), 30, "{kind}");
        assert_eq!(
            cached.tokens, full.tokens,
            "{kind}: cached and recomputed greedy tokens differ"
        );
        assert_eq!(streamed, cached.tokens, "{kind}: every token is streamed");
        assert!(cached.tokens_per_s() > 0.0);
        // The tokens are not trivially constant: different prompts lead elsewhere.
        let other = generate(&m, &[1, 2], 30, None, &greedy, |_| {}).unwrap();
        assert_ne!(other.tokens, cached.tokens, "{kind}");
    }
}

#[test]
fn seeded_sampling_through_the_cache_equals_full_recomputation() {
    let options = SamplingOptions {
        temperature: 1.0,
        top_k: 10,
        top_p: 1.0,
        seed: 11,
    };
    for (kind, window) in kinds() {
        let m = model(kind, window);
        let a = generate(&m, &[4, 9], 20, None, &options, |_| {}).unwrap();
        let b = generate_uncached(&m, &[4, 9], 20, None, &options, |_| {}).unwrap();
        let again = generate(&m, &[4, 9], 20, None, &options, |_| {}).unwrap();
        assert_eq!(a.tokens, b.tokens, "{kind}");
        assert_eq!(a.tokens, again.tokens, "{kind}: same seed, same text");
    }
}

#[test]
fn generation_stops_at_eot_and_at_the_context() {
    let m = model(AttentionKind::Castle, None);
    let greedy = SamplingOptions::default();
    let free = generate(&m, &[1, 2, 3], 10, None, &greedy, |_| {}).unwrap();
    // Declare the 3rd generated token the end of text: generation stops before it.
    let eot = free.tokens[2];
    let first = free.tokens.iter().position(|&t| t == eot).unwrap();
    let stopped = generate(&m, &[1, 2, 3], 10, Some(eot), &greedy, |_| {}).unwrap();
    assert!(stopped.stopped_at_eot);
    assert_eq!(stopped.tokens, free.tokens[..first]);

    // 48 positions: a 40-token prompt leaves room for 8.
    let prompt: Vec<u32> = (0..40).map(|i| i % VOCAB as u32).collect();
    let capped = generate(&m, &prompt, 100, None, &greedy, |_| {}).unwrap();
    assert_eq!(capped.tokens.len(), 8);
    let full: Vec<u32> = (0..48).collect();
    assert!(generate(&m, &full, 5, None, &greedy, |_| {})
        .unwrap()
        .tokens
        .is_empty());
    let long: Vec<u32> = (0..49).collect();
    let err = generate(&m, &long, 5, None, &greedy, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("longer than the model's context of 48"),
        "{err}"
    );
    assert_eq!(fit_to_context(10, 100, 48).unwrap(), 38);
}

#[test]
fn sampling_respects_temperature_and_top_k() {
    let logits = [0.0f32, 3.0, 2.9, -1.0, 2.8];
    let mut rng = Rng::seed_from_u64(1);
    assert_eq!(sample(&logits, &SamplingOptions::default(), &mut rng), 1);
    let top2 = SamplingOptions {
        temperature: 5.0,
        top_k: 2,
        top_p: 1.0,
        seed: 0,
    };
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        seen[sample(&logits, &top2, &mut rng)] += 1;
    }
    assert_eq!(
        seen[0] + seen[3] + seen[4],
        0,
        "only the two most likely: {seen:?}"
    );
    assert!(seen[1] > 800 && seen[2] > 800, "{seen:?}");
    let all = SamplingOptions {
        temperature: 100.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
    let mut seen = [0usize; 5];
    for _ in 0..5000 {
        seen[sample(&logits, &all, &mut rng)] += 1;
    }
    assert!(
        seen.iter().all(|&n| n > 700),
        "near uniform at high temperature: {seen:?}"
    );
}

#[test]
fn top_p_keeps_the_fewest_tokens_that_reach_it() {
    // Probabilities 0.5, 0.3, 0.15, 0.05 (temperature 1): top_p 0.75 keeps the first two,
    // 0.81 needs the third, 0.3 only the first.
    let logits = [0.5f64, 0.3, 0.15, 0.05].map(|p| p.ln() as f32);
    let mut rng = Rng::seed_from_u64(3);
    for (top_p, kept) in [(0.75, 2), (0.81, 3), (0.3, 1)] {
        let options = SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p,
            seed: 0,
        };
        let mut seen = [0usize; 4];
        for _ in 0..3000 {
            seen[sample(&logits, &options, &mut rng)] += 1;
        }
        let used = seen.iter().filter(|&&n| n > 0).count();
        assert_eq!(used, kept, "top_p {top_p}: {seen:?}");
        assert!(
            seen[..kept].iter().all(|&n| n > 100),
            "top_p {top_p}: {seen:?}"
        );
    }
}

#[test]
fn text_stream_holds_back_incomplete_characters() {
    // A fake decoder over bytes: id = byte; invalid UTF-8 tails decode to U+FFFD.
    let decode = |ids: &[u32]| -> anyhow::Result<String> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut s = TextStream::new();
    let mut out = String::new();
    for b in "hé€!".bytes() {
        out.push_str(&s.push(b as u32, decode).unwrap());
        assert!(!out.contains('\u{FFFD}'), "{out:?}");
    }
    out.push_str(&s.finish(decode).unwrap());
    assert_eq!(out, "hé€!");
}

#[test]
fn text_stream_ends_before_a_stop_string_and_holds_back_its_start() {
    let decode = |ids: &[u32]| -> anyhow::Result<String> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let run = |text: &str, stops: &[&str]| {
        let mut s = TextStream::with_stops(stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = vec![];
        for b in text.bytes() {
            pieces.push(s.push(b as u32, decode).unwrap());
        }
        pieces.push(s.finish(decode).unwrap());
        (pieces, s.stopped())
    };
    let (pieces, stopped) = run("one\n\ntwo", &["\n\n", "xyz"]);
    assert!(stopped);
    assert_eq!(pieces.concat(), "one");
    // The first newline could start the stop: it is never handed out.
    assert!(pieces.iter().all(|p| !p.contains('\n')), "{pieces:?}");
    // The earliest of several stops wins; a stop across a multi-byte character works.
    assert_eq!(run("a€b€c", &["b€", "€"]).0.concat(), "a");
    // A held-back start that turns out not to be a stop is handed out later.
    let (pieces, stopped) = run("ab\nc", &["\n\n"]);
    assert!(!stopped);
    assert_eq!(pieces.concat(), "ab\nc");
    assert_eq!(pieces[2], "", "the newline is held back: {pieces:?}");
}
