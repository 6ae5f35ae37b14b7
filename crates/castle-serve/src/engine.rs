//! The engine: the one thread that owns the model. Requests wait in one queue; each turn the
//! engine takes everything queued, scores the prompts that need at most one new token in
//! batches (grouped by length, right-padded: the model is causal, so padding after a prompt
//! changes none of its positions), starts the longer generations in the engine's [`Decoder`]
//! (a forward pass over the prompt that fills the generation's cache), and then advances every
//! running generation together by one token in one batched decoding step, so a long generation
//! never holds up a short request, and generations at different positions share the step.
//! Results go back through each request's own channel, which never blocks: a slow client cannot
//! stall the queue, and a client that went away has its work dropped.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use burn::prelude::*;
use castle_data::Tok;
use castle_eval::generate::{sample, Rng, SamplingOptions, TextStream};
use castle_model::{CastleLm, Decoder, KernelBackend, PromptLogits};
use rand::SeedableRng;
use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::logprobs::{score, Scored};

/// One prompt of a request, checked and tokenized.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    /// Tokens to generate (0: score the prompt only).
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    /// Alternatives per position; `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Score the prompt's own tokens too (with `logprobs`).
    pub echo: bool,
    pub stop: Vec<String>,
}

/// A request's prompts and where their results go.
pub struct Job {
    pub sequences: Vec<Sequence>,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `<|endoftext|>` or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine reports about prompt `index` of a job, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt's tokens, scored (echo with logprobs): the first has no score.
    Prompt {
        index: usize,
        positions: Vec<(u32, Option<Scored>)>,
    },
    /// A generated token, its log-probabilities when asked for, and the text it made final.
    Token {
        index: usize,
        token: u32,
        scored: Option<Scored>,
        text: String,
    },
    /// The prompt is done; `text` is what was left of the completion.
    Done {
        index: usize,
        finish: Finish,
        text: String,
    },
}

/// A generation between its steps.
struct Running {
    index: usize,
    events: UnboundedSender<Event>,
    sequence: Sequence,
    rng: Rng,
    text: TextStream,
    generated: usize,
    /// Its sequence in the engine's [`Decoder`].
    seq: usize,
    /// The token to feed next.
    last: u32,
}

/// The engine's state: the model and what it needs to turn logits into events.
pub struct Engine<'a, B: KernelBackend> {
    pub model: &'a CastleLm<B>,
    pub tokenizer: Arc<Tok>,
    pub device: B::Device,
    /// The most positions (batch x padded length) one scoring forward pass may hold.
    pub batch_tokens: usize,
}

impl<B: KernelBackend> Engine<'_, B> {
    /// Serves `jobs` until every sender is gone and every generation has finished.
    pub fn run(&self, jobs: Receiver<Job>) {
        let mut decoder = Decoder::new(self.model);
        let mut running: Vec<Running> = vec![];
        let mut logits = vec![];
        loop {
            let mut arrived = vec![];
            if running.is_empty() {
                match jobs.recv() {
                    Ok(job) => arrived.push(job),
                    Err(_) => return,
                }
            }
            arrived.extend(jobs.try_iter());
            let mut scoring = vec![];
            for job in arrived {
                for (index, sequence) in job.sequences.into_iter().enumerate() {
                    let events = job.events.clone();
                    if sequence.max_tokens <= 1 {
                        scoring.push((index, events, sequence));
                    } else if let Some(r) = self.start(&mut decoder, index, events, sequence) {
                        running.push(r);
                    }
                }
            }
            self.score(scoring);
            self.step(&mut decoder, &mut running, &mut logits);
        }
    }

    /// Scores prompts that need at most one new token, in batches of similar length.
    fn score(&self, mut pending: Vec<(usize, UnboundedSender<Event>, Sequence)>) {
        pending.retain(|(_, events, _)| !events.is_closed());
        pending.sort_by_key(|(_, _, s)| s.prompt.len());
        let mut rest = &mut pending[..];
        while !rest.is_empty() {
            let mut n = 1;
            while n < rest.len() && (n + 1) * rest[n].2.prompt.len() <= self.batch_tokens {
                n += 1;
            }
            let (batch, tail) = rest.split_at_mut(n);
            rest = tail;
            let prompts: Vec<&[u32]> = batch.iter().map(|(_, _, s)| &s.prompt[..]).collect();
            let all = self.forward(&prompts);
            let vocab = self.model.vocab_size();
            let width = all.len() / (vocab * batch.len());
            for (b, (index, events, sequence)) in batch.iter().enumerate() {
                let start = b * width * vocab;
                let logits = &all[start..start + sequence.prompt.len() * vocab];
                self.report_prompt(*index, events, sequence, logits);
                let mut rng = Rng::seed_from_u64(sequence.sampling.seed);
                let mut text = TextStream::with_stops(sequence.stop.clone());
                let finish = if sequence.max_tokens == 1 {
                    let last = &logits[logits.len() - vocab..];
                    let (_, finish) =
                        self.emit(*index, events, sequence, last, &mut rng, &mut text);
                    finish.unwrap_or(Finish::Length)
                } else {
                    Finish::Length
                };
                self.done(*index, events, finish, &mut text);
            }
        }
    }

    /// Starts a generation in `decoder` (its prompt's forward pass) and emits its first token.
    fn start(
        &self,
        decoder: &mut Decoder<B>,
        index: usize,
        events: UnboundedSender<Event>,
        sequence: Sequence,
    ) -> Option<Running> {
        if events.is_closed() {
            return None;
        }
        // `report_prompt` scores every prompt position; otherwise only the last one is drawn from.
        let which = if sequence.echo && sequence.logprobs.is_some() {
            PromptLogits::All
        } else {
            PromptLogits::Last
        };
        // `completions` has checked the prompt (not empty, in the vocabulary, within the
        // context with its new tokens), so this fails only on a bug: the client gets what was
        // made, as if the context had ended, rather than a stopped server.
        let (seq, logits) = match decoder.start::<f32>(&sequence.prompt, which) {
            Ok(started) => started,
            Err(e) => {
                tracing::error!("cannot start prompt {index}: {e}");
                let mut text = TextStream::with_stops(vec![]);
                self.done(index, &events, Finish::Length, &mut text);
                return None;
            }
        };
        self.report_prompt(index, &events, &sequence, &logits);
        let vocab = self.model.vocab_size();
        let mut r = Running {
            index,
            events,
            rng: Rng::seed_from_u64(sequence.sampling.seed),
            text: TextStream::with_stops(sequence.stop.clone()),
            sequence,
            generated: 0,
            seq,
            last: 0,
        };
        if self.advance(&mut r, &logits[logits.len() - vocab..]) {
            Some(r)
        } else {
            decoder.finish(seq);
            None
        }
    }

    /// One batched decoding step for every running generation whose client is still there;
    /// those that end (or whose client went away) leave `running` and free their sequence.
    fn step(&self, decoder: &mut Decoder<B>, running: &mut Vec<Running>, logits: &mut Vec<f32>) {
        running.retain(|r| {
            let gone = r.events.is_closed();
            if gone {
                decoder.finish(r.seq);
            }
            !gone
        });
        if running.is_empty() {
            return;
        }
        let batch: Vec<(usize, u32)> = running.iter().map(|r| (r.seq, r.last)).collect();
        // Every sequence is running, once, with room for this token (`completions` caps
        // max_tokens to the context): an error is a bug, and ends the generations as if their
        // context had ended rather than stopping the server.
        if let Err(e) = decoder.step(&batch, logits) {
            tracing::error!("decoding step failed: {e}");
            for mut r in running.drain(..) {
                self.done(r.index, &r.events, Finish::Length, &mut r.text);
                decoder.finish(r.seq);
            }
            return;
        }
        let vocab = self.model.vocab_size();
        for (mut r, row) in std::mem::take(running)
            .into_iter()
            .zip(logits.chunks_exact(vocab))
        {
            if self.advance(&mut r, row) {
                running.push(r);
            } else {
                decoder.finish(r.seq);
            }
        }
    }

    /// Draws the next token from `logits` and reports it; false once the generation is over.
    fn advance(&self, r: &mut Running, logits: &[f32]) -> bool {
        r.generated += 1;
        let (token, finish) = self.emit(
            r.index,
            &r.events,
            &r.sequence,
            logits,
            &mut r.rng,
            &mut r.text,
        );
        r.last = token;
        let finish = finish.or((r.generated == r.sequence.max_tokens).then_some(Finish::Length));
        match finish {
            Some(finish) => {
                self.done(r.index, &r.events, finish, &mut r.text);
                false
            }
            None => true,
        }
    }

    /// Draws a token from `logits`, sends it with the text it made final, and says whether it
    /// stopped the generation.
    fn emit(
        &self,
        index: usize,
        events: &UnboundedSender<Event>,
        sequence: &Sequence,
        logits: &[f32],
        rng: &mut Rng,
        text: &mut TextStream,
    ) -> (u32, Option<Finish>) {
        let token = sample(logits, &sequence.sampling, rng) as u32;
        let scored = sequence.logprobs.map(|k| score(logits, token, k));
        let eot = token == self.tokenizer.eot_id();
        let piece = if eot {
            String::new()
        } else {
            text.push(token, |ids| self.tokenizer.decode(ids))
                .unwrap_or_default()
        };
        let _ = events.send(Event::Token {
            index,
            token,
            scored,
            text: piece,
        });
        (token, (eot || text.stopped()).then_some(Finish::Stop))
    }

    fn done(
        &self,
        index: usize,
        events: &UnboundedSender<Event>,
        finish: Finish,
        text: &mut TextStream,
    ) {
        let text = text
            .finish(|ids| self.tokenizer.decode(ids))
            .unwrap_or_default();
        let _ = events.send(Event::Done {
            index,
            finish,
            text,
        });
    }

    /// With echo and logprobs, the prompt's tokens scored from the logits of the positions
    /// before them (`logits`: the prompt's positions, row-major).
    fn report_prompt(
        &self,
        index: usize,
        events: &UnboundedSender<Event>,
        sequence: &Sequence,
        logits: &[f32],
    ) {
        let (true, Some(k)) = (sequence.echo, sequence.logprobs) else {
            return;
        };
        let vocab = self.model.vocab_size();
        let scored: Vec<_> = sequence.prompt[1..]
            .par_iter()
            .zip(logits.par_chunks(vocab))
            .map(|(&token, logits)| (token, Some(score(logits, token, k))))
            .collect();
        let positions = std::iter::once((sequence.prompt[0], None))
            .chain(scored)
            .collect();
        let _ = events.send(Event::Prompt { index, positions });
    }

    /// One forward pass over `prompts` right-padded (with token 0) to the longest: the logits
    /// `[batch, longest, vocab]`, row-major, as f32 (the parameters' type).
    fn forward(&self, prompts: &[&[u32]]) -> Vec<f32> {
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; prompts.len() * width];
        for (row, p) in ids.chunks_mut(width.max(1)).zip(prompts) {
            for (slot, &t) in row.iter_mut().zip(*p) {
                *slot = t as i64;
            }
        }
        let tokens = Tensor::from_data(TensorData::new(ids, [prompts.len(), width]), &self.device);
        // `into_vec` fails only on another element type, which `convert` has just ruled out (a
        // buffer it cannot take as is, it copies).
        self.model
            .forward(tokens)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("converted to f32")
    }
}
