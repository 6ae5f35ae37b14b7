//! Token shards: a 64-byte header followed by little-endian token ids,
//! read through a memory map.
//!
//! | offset | size | field                                                      |
//! |-------:|-----:|------------------------------------------------------------|
//! | 0      | 8    | magic `CASTLTOK`                                           |
//! | 8      | 4    | format version, u32 = 1                                    |
//! | 12     | 4    | bytes per token, u32: 2 (u16 ids) or 4 (u32 ids)           |
//! | 16     | 8    | token count, u64                                           |
//! | 24     | 32   | SHA-256 of the `tokenizer.json` that produced the ids      |
//! | 56     | 4    | CRC-32 (IEEE) of bytes 0..56 followed by the whole payload |
//! | 60     | 4    | reserved, zero                                             |
//! | 64     | n·w  | token ids                                                  |
//!
//! All integers are little-endian. The file length must be exactly
//! `64 + count * width`. Shards are written to a temp file and renamed into
//! place, so a file with the final name is always complete.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::atomic::write_with;
use crate::tokenizer::hex;

/// First 8 bytes of every shard.
pub const MAGIC: &[u8; 8] = b"CASTLTOK";
/// Current format version.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 64;

/// Storage type of the token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// The narrowest type that holds every id in `tokens`.
    pub fn for_tokens(tokens: &[u32]) -> Self {
        if tokens.iter().all(|&t| t <= u16::MAX as u32) {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }
}

/// A memory-mapped, checksum-verified token shard.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    mmap: Mmap,
    dtype: TokenDtype,
    len: usize,
    tokenizer_hash: [u8; 32],
}

fn header(dtype: TokenDtype, count: u64, tokenizer_hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(dtype.width() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..56].copy_from_slice(tokenizer_hash);
    h
}

/// Writes `tokens` as a shard at `path`, atomically (temp file + rename).
/// Uses u16 ids when every id fits, else u32.
pub fn write_shard(
    path: impl AsRef<Path>,
    tokens: &[u32],
    tokenizer_hash: &[u8; 32],
) -> Result<()> {
    let path = path.as_ref();
    let dtype = TokenDtype::for_tokens(tokens);
    let mut head = header(dtype, tokens.len() as u64, tokenizer_hash);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..56]);
    write_with(path, |file| {
        let ctx = || format!("cannot write shard {}", path.display());
        let mut out = BufWriter::with_capacity(1 << 20, &mut *file);
        out.write_all(&head).with_context(ctx)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in tokens.chunks(1 << 14) {
            buf.clear();
            match dtype {
                TokenDtype::U16 => chunk
                    .iter()
                    .for_each(|&t| buf.extend((t as u16).to_le_bytes())),
                TokenDtype::U32 => chunk.iter().for_each(|&t| buf.extend(t.to_le_bytes())),
            }
            crc.update(&buf);
            out.write_all(&buf).with_context(ctx)?;
        }
        out.flush().with_context(ctx)?;
        drop(out);
        head[56..60].copy_from_slice(&crc.clone().finalize().to_le_bytes());
        file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        file.write_all(&head).with_context(ctx)
    })
}

impl Shard {
    /// Maps and fully verifies a shard (header, length and checksum).
    /// Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file =
            File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
        // SAFETY: shards are only ever replaced by rename, never modified in place.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map shard {}", path.display()))?;
        let bad = |why: String| -> Result<Self> {
            bail!(
                "corrupt token shard {}: {why}; delete it and run `castle-data prepare` again",
                path.display()
            )
        };
        if mmap.len() < HEADER_LEN {
            return bad(format!(
                "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                mmap.len()
            ));
        }
        if &mmap[0..8] != MAGIC {
            return bad("bad magic, not a castle token shard".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(mmap[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return bad(format!(
                "format version {version}, this build reads version {VERSION}"
            ));
        }
        let dtype = match u32_at(12) {
            2 => TokenDtype::U16,
            4 => TokenDtype::U32,
            w => return bad(format!("invalid token width {w}")),
        };
        let count = u64::from_le_bytes(mmap[16..24].try_into().unwrap());
        let expected = (count as u128) * dtype.width() as u128 + HEADER_LEN as u128;
        if expected != mmap.len() as u128 {
            let kind = if (mmap.len() as u128) < expected {
                "truncated"
            } else {
                "too long"
            };
            return bad(format!(
                "{kind}: header says {count} tokens ({expected} bytes), file has {} bytes",
                mmap.len()
            ));
        }
        if u32_at(60) != 0 {
            return bad("reserved header bytes are not zero".into());
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&mmap[..56]);
        crc.update(&mmap[HEADER_LEN..]);
        if crc.finalize() != u32_at(56) {
            return bad("checksum mismatch".into());
        }
        let tokenizer_hash = mmap[24..56].try_into().unwrap();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            dtype,
            len: count as usize,
            tokenizer_hash,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`. Panics when `i >= len()`.
    pub fn get(&self, i: usize) -> u32 {
        assert!(
            i < self.len,
            "token index {i} out of range for shard of {} tokens",
            self.len
        );
        let o = HEADER_LEN + i * self.dtype.width();
        match self.dtype {
            TokenDtype::U16 => u16::from_le_bytes([self.mmap[o], self.mmap[o + 1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes(self.mmap[o..o + 4].try_into().unwrap()),
        }
    }

    /// Appends tokens `start..start + n` to `out`. Panics when out of range.
    pub fn extend_window(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        assert!(
            start.checked_add(n).is_some_and(|end| end <= self.len),
            "window {start}..{start}+{n} out of range for shard of {} tokens",
            self.len
        );
        let w = self.dtype.width();
        let bytes = &self.mmap[HEADER_LEN + start * w..HEADER_LEN + (start + n) * w];
        match self.dtype {
            TokenDtype::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
            ),
            TokenDtype::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
            ),
        }
    }

    /// Tokens `start..start + n` as a new vector.
    pub fn window(&self, start: usize, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        self.extend_window(start, n, &mut out);
        out
    }

    /// Storage type of the ids.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// SHA-256 of the tokenizer recorded in the header.
    pub fn tokenizer_hash(&self) -> [u8; 32] {
        self.tokenizer_hash
    }

    /// Path the shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Errors (naming the file) unless the shard was made by a tokenizer with `hash`.
    pub fn check_tokenizer(&self, hash: &[u8; 32]) -> Result<()> {
        if &self.tokenizer_hash != hash {
            bail!(
                "token shard {} was made with tokenizer {} but the tokenizer in use is {}; \
                 re-run `castle-data prepare` or use the matching tokenizer.json",
                self.path.display(),
                hex(&self.tokenizer_hash),
                hex(hash)
            );
        }
        Ok(())
    }
}
