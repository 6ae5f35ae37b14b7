//! [`TokenSource`]: token ids addressed `0..len()`, read in windows; implemented by one shard,
//! a split's [`crate::ShardSet`] and tokens already in memory.

use anyhow::{bail, Result};

/// Token ids addressed `0..len()`, read in windows.
pub trait TokenSource {
    /// Number of tokens.
    fn len(&self) -> usize;

    /// Whether there are no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens `start..start + n` to `out`. Errors when the range is not within
    /// `0..len()`, or when the data there is damaged (naming the file and the tokens; no token
    /// of a damaged block is appended).
    fn extend_window(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()>;

    /// Tokens `start..start + n` as a new vector.
    fn window(&self, start: usize, n: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        self.extend_window(start, n, &mut out)?;
        Ok(out)
    }
}

/// `start + n`, or an error unless `start..start + n` lies within `0..len`.
pub(crate) fn window_end(start: usize, n: usize, len: usize) -> Result<usize> {
    match start.checked_add(n).filter(|&end| end <= len) {
        Some(end) => Ok(end),
        None => bail!("window {start}..{start}+{n} is out of range for {len} tokens"),
    }
}

/// Tokens already in memory (e.g. documents `castle-eval` tokenized itself).
impl TokenSource for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }

    fn extend_window(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let end = window_end(start, n, self.len())?;
        out.extend_from_slice(&self[start..end]);
        Ok(())
    }
}
