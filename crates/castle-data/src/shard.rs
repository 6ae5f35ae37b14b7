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
//! place, so a file with the final name is always complete ([`crate::writer`]).
//! llm.c / modded-nanogpt shards are read too ([`Shard::open_llmc`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

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
    /// Header bytes before the first token.
    offset: usize,
    dtype: TokenDtype,
    len: usize,
    tokenizer_hash: [u8; 32],
}

/// The 64-byte header of a castle shard; bytes 56..60 (CRC) are left zero.
pub(crate) fn header(dtype: TokenDtype, count: u64, tokenizer_hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(dtype.width() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..56].copy_from_slice(tokenizer_hash);
    h
}

/// Magic number of llm.c / modded-nanogpt token shards (first int32 of the header).
pub const LLMC_MAGIC: i32 = 20240520;
/// Header size of llm.c shards: 256 little-endian int32.
pub const LLMC_HEADER_LEN: usize = 1024;

fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
    // SAFETY: shards are only ever replaced by rename, never modified in place.
    unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map shard {}", path.display()))
}

fn corrupt(path: &Path, why: String) -> anyhow::Error {
    anyhow::anyhow!(
        "corrupt token shard {}: {why}; delete it and run `castle-data prepare` again",
        path.display()
    )
}

/// Errors unless a file of `len` bytes holds exactly `count` tokens of `width` after `header`.
fn check_length(path: &Path, len: usize, header: usize, count: u64, width: usize) -> Result<()> {
    let expected = (count as u128) * width as u128 + header as u128;
    if expected != len as u128 {
        let kind = if (len as u128) < expected {
            "truncated"
        } else {
            "too long"
        };
        return Err(corrupt(
            path,
            format!("{kind}: header says {count} tokens ({expected} bytes), file has {len} bytes"),
        ));
    }
    Ok(())
}

impl Shard {
    /// Maps and fully verifies a shard (header, length and checksum).
    /// Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let shard = Self::open_header(path)?;
        shard.verify_checksum()?;
        Ok(shard)
    }

    /// Maps a castle shard checking only its header and length (no payload is read).
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mmap = map(path)?;
        if mmap.len() < HEADER_LEN {
            return Err(corrupt(
                path,
                format!(
                    "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                    mmap.len()
                ),
            ));
        }
        if &mmap[0..8] != MAGIC {
            return Err(corrupt(path, "bad magic, not a castle token shard".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(mmap[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(corrupt(
                path,
                format!("format version {version}, this build reads version {VERSION}"),
            ));
        }
        let dtype = match u32_at(12) {
            2 => TokenDtype::U16,
            4 => TokenDtype::U32,
            w => return Err(corrupt(path, format!("invalid token width {w}"))),
        };
        let count = u64::from_le_bytes(mmap[16..24].try_into().unwrap());
        check_length(path, mmap.len(), HEADER_LEN, count, dtype.width())?;
        if u32_at(60) != 0 {
            return Err(corrupt(path, "reserved header bytes are not zero".into()));
        }
        let tokenizer_hash = mmap[24..56].try_into().unwrap();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            offset: HEADER_LEN,
            dtype,
            len: count as usize,
            tokenizer_hash,
        })
    }

    /// Maps an llm.c / modded-nanogpt shard (header of 256 little-endian int32: magic
    /// 20240520, version 1, token count; then u16 ids), checking its header and length.
    /// It records no tokenizer: [`Shard::tokenizer_hash`] is all zeros.
    pub fn open_llmc(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mmap = map(path)?;
        if mmap.len() < LLMC_HEADER_LEN {
            return Err(corrupt(
                path,
                format!(
                    "{} bytes, shorter than the {LLMC_HEADER_LEN}-byte llm.c header",
                    mmap.len()
                ),
            ));
        }
        let i32_at = |i: usize| i32::from_le_bytes(mmap[4 * i..4 * i + 4].try_into().unwrap());
        if i32_at(0) != LLMC_MAGIC {
            return Err(corrupt(
                path,
                format!("magic {} is not llm.c's {LLMC_MAGIC}", i32_at(0)),
            ));
        }
        if i32_at(1) != 1 {
            return Err(corrupt(
                path,
                format!(
                    "llm.c shard version {}, only version 1 (u16 ids) is read",
                    i32_at(1)
                ),
            ));
        }
        let count = u64::try_from(i32_at(2))
            .map_err(|_| corrupt(path, format!("negative token count {}", i32_at(2))))?;
        check_length(path, mmap.len(), LLMC_HEADER_LEN, count, 2)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            offset: LLMC_HEADER_LEN,
            dtype: TokenDtype::U16,
            len: count as usize,
            tokenizer_hash: [0; 32],
        })
    }

    /// Checks a castle shard's header CRC against its header and whole payload.
    pub fn verify_checksum(&self) -> Result<()> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.mmap[..56]);
        crc.update(self.payload());
        let stored = u32::from_le_bytes(self.mmap[56..60].try_into().unwrap());
        if crc.finalize() != stored {
            return Err(corrupt(&self.path, "checksum mismatch".into()));
        }
        Ok(())
    }

    /// The token ids as stored (little-endian, [`Shard::dtype`] wide).
    pub fn payload(&self) -> &[u8] {
        &self.mmap[self.offset..]
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
        let o = self.offset + i * self.dtype.width();
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
        let bytes = &self.payload()[start * w..(start + n) * w];
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
