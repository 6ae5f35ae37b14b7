//! A split as one token stream over all its shards, opened cheaply (headers only) and
//! checked lazily: each [`BLOCK_TOKENS`]-token block is verified against the manifest's
//! checksum the first time a window reads from it, so damaged data is never handed out: the
//! read returns an error naming the shard and the tokens instead.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::manifest::MANIFEST_FILE;
use crate::shard::{damaged, Shard};
use crate::source::{window_end, TokenSource};
use crate::writer::{BlockCrcs, BLOCK_TOKENS};

/// The shards of one split, concatenated in order.
#[derive(Debug)]
pub struct ShardSet {
    shards: Vec<Shard>,
    /// Global index one past each shard's last token.
    ends: Vec<usize>,
    /// Expected CRC-32 of each block of each shard.
    crcs: Vec<Vec<u32>>,
    verified: Vec<Vec<AtomicBool>>,
}

impl ShardSet {
    /// Joins opened shards with their block checksums (from the manifest).
    pub fn new(shards: Vec<(Shard, Vec<u32>)>) -> Result<Self> {
        let (mut ends, mut crcs, mut verified, mut list) = (vec![], vec![], vec![], vec![]);
        let mut total = 0;
        for (shard, blocks) in shards {
            if blocks.len() != shard.len().div_ceil(BLOCK_TOKENS) {
                bail!(
                    "{} has {} tokens but the manifest lists {} block checksums; \
                     run `castle-data prepare` again",
                    shard.path().display(),
                    shard.len(),
                    blocks.len()
                );
            }
            total += shard.len();
            ends.push(total);
            verified.push(blocks.iter().map(|_| AtomicBool::new(false)).collect());
            crcs.push(blocks);
            list.push(shard);
        }
        Ok(Self {
            shards: list,
            ends,
            crcs,
            verified,
        })
    }

    /// Number of tokens in all shards.
    pub fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Whether the split holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The first shard's path (for messages); the split may have more.
    pub fn path(&self) -> &Path {
        self.shards.first().map_or(Path::new(""), |s| s.path())
    }

    /// Checks one block, once; errors name the shard and the token range.
    fn check_block(&self, shard: usize, block: usize) -> Result<()> {
        if self.verified[shard][block].load(Ordering::Acquire) {
            return Ok(());
        }
        let s = &self.shards[shard];
        let width = s.dtype().width();
        let first = block * BLOCK_TOKENS;
        let last = (first + BLOCK_TOKENS).min(s.len());
        let bytes = &s.payload()[first * width..last * width];
        if BlockCrcs::of(bytes, width) != [self.crcs[shard][block]] {
            return Err(damaged(
                s.path(),
                s.kind(),
                format!("tokens {first}..{last} do not match their checksum in {MANIFEST_FILE}"),
            ));
        }
        self.verified[shard][block].store(true, Ordering::Release);
        Ok(())
    }

    /// Reads and checks every block of every shard (on all cores).
    pub fn verify(&self) -> Result<()> {
        let blocks: Vec<(usize, usize)> = (0..self.shards.len())
            .flat_map(|s| (0..self.crcs[s].len()).map(move |b| (s, b)))
            .collect();
        blocks
            .par_iter()
            .try_for_each(|&(s, b)| self.check_block(s, b))
    }
}

impl TokenSource for ShardSet {
    fn len(&self) -> usize {
        ShardSet::len(self)
    }

    fn extend_window(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let end = window_end(start, n, self.len())?;
        let mut at = start;
        while at < end {
            let shard = self.ends.partition_point(|&e| e <= at);
            let base = self.ends[shard] - self.shards[shard].len();
            let (from, to) = (at - base, end.min(self.ends[shard]) - base);
            for block in from / BLOCK_TOKENS..=(to - 1) / BLOCK_TOKENS {
                self.check_block(shard, block)?;
            }
            self.shards[shard].extend_window(from, to - from, out)?;
            at = base + to;
        }
        Ok(())
    }
}
