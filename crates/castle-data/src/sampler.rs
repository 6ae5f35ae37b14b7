//! Seeded random windows for training and a fixed validation set.
//!
//! The data is any [`TokenSource`]: one shard, or a split's [`crate::ShardSet`] seen as one
//! stream (a window may span two shards). Window starts come from a counter-based generator: row `r` of batch `b`
//! starts at `uniform(hash(seed, b, r), num_tokens - seq_len)`. So the state is
//! just `{seed, batches_drawn}`, and a restored sampler draws exactly the
//! batches the original would have drawn next.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::source::TokenSource;

/// Everything needed to resume a [`BatchSampler`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SamplerState {
    pub seed: u64,
    pub batches_drawn: u64,
}

/// Draws batches of random windows of `seq_len + 1` tokens.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    num_tokens: usize,
    seq_len: usize,
    state: SamplerState,
}

/// SplitMix64 finalizer: a good 64-bit mixing function. The sampler hashes `(seed, batch, row)`
/// rather than stepping a generator (a crate's PRNG, e.g. `rand_chacha`, is sequential), so that
/// any batch, and any rank's rows of it, can be drawn directly from `{seed, batches_drawn}`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BatchSampler {
    /// A fresh sampler over a shard of `num_tokens` tokens.
    /// Errors when the shard is shorter than one window (`seq_len + 1`).
    pub fn new(num_tokens: usize, seq_len: usize, seed: u64) -> Result<Self> {
        Self::from_state(
            num_tokens,
            seq_len,
            SamplerState {
                seed,
                batches_drawn: 0,
            },
        )
    }

    /// Resumes from a saved [`SamplerState`].
    pub fn from_state(num_tokens: usize, seq_len: usize, state: SamplerState) -> Result<Self> {
        if seq_len == 0 {
            bail!("seq_len must be at least 1");
        }
        if num_tokens < seq_len + 1 {
            bail!(
                "the training shard has {num_tokens} tokens, fewer than one window of seq_len + 1 = {}; \
                 use a larger corpus or a smaller seq_len",
                seq_len + 1
            );
        }
        Ok(Self {
            num_tokens,
            seq_len,
            state,
        })
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> SamplerState {
        self.state.clone()
    }

    /// Window start of row `row` in batch `batch`.
    fn start(&self, batch: u64, row: u64) -> usize {
        let starts = (self.num_tokens - self.seq_len) as u64;
        let x = mix(mix(self.state.seed ^ mix(batch)) ^ row);
        ((x as u128 * starts as u128) >> 64) as usize
    }

    /// The next batch: `batch_size` windows of `seq_len + 1` tokens, row-major.
    /// Errors if `shard` is not the `num_tokens`-long data this sampler was made for, or if a
    /// window falls on damaged data (the error names the shard and the tokens); the sampler then
    /// stays where it was.
    pub fn next_batch(
        &mut self,
        shard: &(impl TokenSource + ?Sized),
        batch_size: usize,
    ) -> Result<Vec<u32>> {
        self.next_batch_part(shard, batch_size, 0, 1)
    }

    /// Rank `rank` of `world`'s part of the next global batch of `batch_size` windows: rows
    /// `rank * batch_size / world .. (rank + 1) * batch_size / world`. The parts of all ranks,
    /// concatenated in rank order, are exactly [`Self::next_batch`]'s batch, so the data order
    /// does not depend on the number of ranks. Every rank must call this once per global batch.
    /// Errors as [`Self::next_batch`] does, and if `batch_size` is not a multiple of `world` or
    /// `rank >= world`.
    pub fn next_batch_part(
        &mut self,
        shard: &(impl TokenSource + ?Sized),
        batch_size: usize,
        rank: usize,
        world: usize,
    ) -> Result<Vec<u32>> {
        if shard.len() != self.num_tokens {
            bail!(
                "the sampler was made for {} tokens, the data has {}",
                self.num_tokens,
                shard.len()
            );
        }
        if rank >= world || !batch_size.is_multiple_of(world) {
            bail!("rank {rank} of {world} cannot take an equal part of a batch of {batch_size}");
        }
        let rows = batch_size / world;
        let first = (rank * rows) as u64;
        let batch = self.state.batches_drawn;
        let mut out = Vec::with_capacity(rows * (self.seq_len + 1));
        for row in first..first + rows as u64 {
            shard.extend_window(self.start(batch, row), self.seq_len + 1, &mut out)?;
        }
        self.state.batches_drawn += 1;
        Ok(out)
    }
}

/// The fixed validation set: non-overlapping windows of `seq_len + 1` tokens
/// starting at 0, `seq_len`, `2·seq_len`, … (consecutive windows share one
/// boundary token so every token is predicted once), as many as fit in the
/// shard while the predicted tokens (`seq_len` per window) stay within
/// `max_tokens`. Identical on every call. Errors name damaged data.
pub fn validation_windows(
    shard: &(impl TokenSource + ?Sized),
    seq_len: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    if seq_len == 0 || shard.len() < seq_len + 1 {
        return Ok(Vec::new());
    }
    let available = (shard.len() - 1) / seq_len;
    let count = available.min(max_tokens / seq_len);
    (0..count)
        .map(|i| shard.window(i * seq_len, seq_len + 1))
        .collect()
}
