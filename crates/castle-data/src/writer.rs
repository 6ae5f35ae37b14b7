//! Writing castle shards as a stream of tokens: a temp file beside the target, the header
//! (count and CRC) written last, fsync, rename. A file with the final name is always complete.
//! Also the per-block checksums the manifest records for every shard.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::atomic::temp_path;
use crate::shard::{header, TokenDtype, HEADER_LEN};

/// Tokens per checksummed block: a block is verified the first time a window reads from it.
pub const BLOCK_TOKENS: usize = 1 << 20;

/// CRC-32 of each [`BLOCK_TOKENS`]-token block of a payload, fed in pieces of any size.
pub struct BlockCrcs {
    block_bytes: usize,
    filled: usize,
    hasher: crc32fast::Hasher,
    done: Vec<u32>,
}

impl BlockCrcs {
    /// For ids `width` bytes wide.
    pub fn new(width: usize) -> Self {
        Self {
            block_bytes: BLOCK_TOKENS * width,
            filled: 0,
            hasher: crc32fast::Hasher::new(),
            done: Vec::new(),
        }
    }

    /// Feeds the next payload bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.block_bytes - self.filled).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.block_bytes {
                let full = std::mem::replace(&mut self.hasher, crc32fast::Hasher::new());
                self.done.push(full.finalize());
                self.filled = 0;
            }
        }
    }

    /// The checksums, the last (partial) block included.
    pub fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.done.push(self.hasher.finalize());
        }
        self.done
    }

    /// The checksums of a whole payload.
    pub fn of(payload: &[u8], width: usize) -> Vec<u32> {
        let mut crcs = Self::new(width);
        crcs.update(payload);
        crcs.finish()
    }
}

/// A castle shard being written; [`ShardWriter::finish`] puts it in place.
/// Dropped unfinished, it removes its temp file and leaves the target untouched.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    dtype: TokenDtype,
    tokenizer_hash: [u8; 32],
    count: u64,
    crc: crc32fast::Hasher,
    blocks: BlockCrcs,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Starts a shard of `dtype` ids made by the tokenizer with `tokenizer_hash`.
    pub fn create(path: &Path, dtype: TokenDtype, tokenizer_hash: [u8; 32]) -> Result<Self> {
        let tmp = temp_path(path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0; HEADER_LEN])
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            dtype,
            tokenizer_hash,
            count: 0,
            crc: crc32fast::Hasher::new(),
            blocks: BlockCrcs::new(dtype.width()),
            buf: Vec::new(),
        })
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no token was written yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `tokens`. Errors if an id does not fit the shard's width.
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        self.buf.clear();
        match self.dtype {
            TokenDtype::U16 => {
                for &t in tokens {
                    let t = u16::try_from(t).map_err(|_| {
                        anyhow!(
                            "{}: token id {t} does not fit the shard's u16 ids",
                            self.path.display()
                        )
                    })?;
                    self.buf.extend(t.to_le_bytes());
                }
            }
            TokenDtype::U32 => tokens
                .iter()
                .for_each(|&t| self.buf.extend(t.to_le_bytes())),
        }
        self.crc.update(&self.buf);
        self.blocks.update(&self.buf);
        self.count += tokens.len() as u64;
        // `out` is `None` only inside `finish` and `drop`, which consume the writer.
        let out = self.out.as_mut().expect("writer is open until finish");
        out.write_all(&self.buf)
            .with_context(|| format!("cannot write {}", self.tmp.display()))
    }

    /// Writes the header, syncs and renames the shard into place; returns its block checksums.
    pub fn finish(mut self) -> Result<Vec<u32>> {
        let ctx = || format!("cannot write shard {}", self.tmp.display());
        let mut head = header(self.dtype, self.count, &self.tokenizer_hash);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..56]);
        crc.combine(&self.crc);
        head[56..60].copy_from_slice(&crc.finalize().to_le_bytes());
        // `out` is `None` only after this `take` and in `drop`.
        let mut file = self
            .out
            .take()
            .expect("writer is open until finish")
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(ctx)?;
        file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        file.write_all(&head).with_context(ctx)?;
        file.sync_all().with_context(ctx)?;
        fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.path.display()
            )
        })?;
        let blocks = std::mem::replace(&mut self.blocks, BlockCrcs::new(1));
        Ok(blocks.finish())
    }
}

impl Drop for ShardWriter {
    /// Removes the temp file (already renamed away after a successful finish).
    fn drop(&mut self) {
        self.out = None;
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes `tokens` as a shard at `path`, atomically (temp file + rename).
/// Uses u16 ids when every id fits, else u32.
pub fn write_shard(
    path: impl AsRef<Path>,
    tokens: &[u32],
    tokenizer_hash: &[u8; 32],
) -> Result<()> {
    let mut w = ShardWriter::create(
        path.as_ref(),
        TokenDtype::for_tokens(tokens),
        *tokenizer_hash,
    )?;
    for chunk in tokens.chunks(1 << 16) {
        w.push(chunk)?;
    }
    w.finish().map(drop)
}
