//! Generation's decoder: a batch of sequences, each with its own cache and position, decoded
//! together one token per step (docs/castle.md, section 4). A sequence starts with the model's
//! forward pass over its prompt ([`CastleLm::prefill`], the training kernels), which fills its
//! cache; each step then takes one new token for any subset of the running sequences and
//! returns their logits; a finished sequence leaves without disturbing the others, and its slot
//! (with its memory) goes to the next one.
//!
//! On the CPU backends the step runs on the host ([`host`]): the weights are read once, and each
//! cache is preallocated to the model's context and written in place. Elsewhere (the GPU
//! backends) it is the model's tensor-op [`CastleLm::decode`], one sequence at a time.

mod host;

use burn::prelude::*;
use burn::tensor::{DType, Element};

use crate::lm::{CastleLm, LmCache};
use castle_kernels::{Elem, KernelBackend};
use host::HostDecoder;

/// What a [`Decoder`] refuses, with the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt is {len} tokens, longer than the model's context of {max} tokens (model.max_seq_len); shorten it"
    )]
    PromptTooLong { len: usize, max: usize },
    #[error(
        "sequence {seq} is full: it holds the model's context of {max} tokens (model.max_seq_len)"
    )]
    Full { seq: usize, max: usize },
    #[error("token id {token} is outside the model's vocabulary of {vocab}")]
    TokenOutOfVocab { token: u32, vocab: usize },
    #[error("sequence {seq} is not running")]
    NotRunning { seq: usize },
    #[error("sequence {seq} appears twice in one step")]
    Twice { seq: usize },
}

/// Which of a prompt's logits [`Decoder::start`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptLogits {
    /// The last position's, `[vocab]`: what the next token is drawn from.
    Last,
    /// Every position's, `[len, vocab]`: to score the prompt's own tokens too.
    All,
}

enum Engine<B: KernelBackend> {
    HostF32(HostDecoder<f32>),
    HostF64(HostDecoder<f64>),
    /// The model's tensor-op decode: each slot's [`LmCache`].
    Tensor(Vec<Option<LmCache<B>>>),
}

/// Sequences being decoded by one model, by slot.
pub struct Decoder<'m, B: KernelBackend> {
    model: &'m CastleLm<B>,
    engine: Engine<B>,
    /// Cached positions of each slot's sequence; `None`: a free slot.
    lens: Vec<Option<usize>>,
}

impl<'m, B: KernelBackend> Decoder<'m, B> {
    pub fn new(model: &'m CastleLm<B>) -> Self {
        // The CPU backends decode on the host, in the parameters' precision (f64 for the
        // float64 reference tests, f32 otherwise, bf16 compute included).
        let engine = if !B::HOST_KERNELS {
            Engine::Tensor(vec![])
        } else if model.embed.weight.val().dtype() == DType::F64 {
            Engine::HostF64(HostDecoder::new(model))
        } else {
            Engine::HostF32(HostDecoder::new(model))
        };
        Self {
            model,
            engine,
            lens: vec![],
        }
    }

    /// Runs the model over `prompt` and keeps its cache as a new sequence: its id, and the
    /// prompt's logits (`which`), row-major, in `L` (`f32` to sample from; `f64` keeps a
    /// float64 model's precision).
    pub fn start<L: Elem + Element>(
        &mut self,
        prompt: &[u32],
        which: PromptLogits,
    ) -> Result<(usize, Vec<L>), DecodeError> {
        let max = self.model.config.max_seq_len;
        if prompt.is_empty() {
            return Err(DecodeError::EmptyPrompt);
        }
        if prompt.len() > max {
            return Err(DecodeError::PromptTooLong {
                len: prompt.len(),
                max,
            });
        }
        self.check_vocab(prompt.iter().copied())?;
        let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let device = self.model.embed.weight.device();
        let tokens = Tensor::from_data(TensorData::new(ids, [1, prompt.len()]), &device);
        let (logits, cache) = self.model.prefill(tokens);
        let [_, len, vocab] = logits.dims();
        let logits = match which {
            PromptLogits::Last => logits.slice([0..1, len - 1..len, 0..vocab]),
            PromptLogits::All => logits,
        };
        let seq = self
            .lens
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.lens.len());
        match &mut self.engine {
            Engine::HostF32(host) => host.start(seq, cache),
            Engine::HostF64(host) => host.start(seq, cache),
            Engine::Tensor(caches) => {
                caches.resize_with(caches.len().max(seq + 1), || None);
                caches[seq] = Some(cache);
            }
        }
        if seq == self.lens.len() {
            self.lens.push(None);
        }
        self.lens[seq] = Some(prompt.len());
        Ok((seq, values(logits)))
    }

    /// One new token for each `(sequence, token)` of `batch`: their logits `[n, vocab]`,
    /// row-major in the batch's order, into `logits`. Nothing changes on an error.
    pub fn step<L: Elem + Element>(
        &mut self,
        batch: &[(usize, u32)],
        logits: &mut Vec<L>,
    ) -> Result<(), DecodeError> {
        let max = self.model.config.max_seq_len;
        for (i, &(seq, _)) in batch.iter().enumerate() {
            match self.lens.get(seq).copied().flatten() {
                None => return Err(DecodeError::NotRunning { seq }),
                Some(len) if len >= max => return Err(DecodeError::Full { seq, max }),
                Some(_) if batch[..i].iter().any(|&(s, _)| s == seq) => {
                    return Err(DecodeError::Twice { seq })
                }
                Some(_) => {}
            }
        }
        self.check_vocab(batch.iter().map(|&(_, t)| t))?;
        match &mut self.engine {
            Engine::HostF32(host) => host.step(batch, logits),
            Engine::HostF64(host) => host.step(batch, logits),
            Engine::Tensor(caches) => {
                logits.clear();
                let device = self.model.embed.weight.device();
                for &(seq, token) in batch {
                    let cache = caches[seq].as_mut().expect("checked running above");
                    let token = TensorData::new(vec![token as i64], [1, 1]);
                    let out = self.model.decode(Tensor::from_data(token, &device), cache);
                    logits.extend(values::<B, L>(out));
                }
            }
        }
        for &(seq, _) in batch {
            if let Some(len) = &mut self.lens[seq] {
                *len += 1;
            }
        }
        Ok(())
    }

    /// Ends sequence `seq`; its slot and memory go to the next [`Decoder::start`].
    pub fn finish(&mut self, seq: usize) {
        if let Some(len) = self.lens.get_mut(seq) {
            *len = None;
        }
        if let Engine::Tensor(caches) = &mut self.engine {
            if let Some(cache) = caches.get_mut(seq) {
                *cache = None;
            }
        }
    }

    /// Positions sequence `seq` holds (prompt and generated tokens); `None` if not running.
    pub fn len(&self, seq: usize) -> Option<usize> {
        self.lens.get(seq).copied().flatten()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.lens.iter().flatten().count()
    }

    fn check_vocab(&self, tokens: impl Iterator<Item = u32>) -> Result<(), DecodeError> {
        let vocab = self.model.vocab_size();
        match tokens.into_iter().find(|&t| t as usize >= vocab) {
            Some(token) => Err(DecodeError::TokenOutOfVocab { token, vocab }),
            None => Ok(()),
        }
    }
}

/// A logits tensor's values in `L`, row-major.
fn values<B: KernelBackend, L: Element>(logits: Tensor<B, 3>) -> Vec<L> {
    logits.into_data().iter::<L>().collect()
}
