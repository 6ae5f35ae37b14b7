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

use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::manifest::{Manifest, ShardEntry, ShardKind, MANIFEST_FILE};
use crate::source::{window_end, TokenSource};
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
    kind: ShardKind,
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

/// The `N` bytes of `bytes` from `at` (callers have checked the length).
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
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

/// A shard whose bytes are not what they should be (the error of every read or open that finds
/// one; reach it through `anyhow::Error::downcast_ref`). Its message says how to get a good
/// copy: castle's own shards are derived data that `castle-data prepare` writes again once the
/// file is gone; an llm.c shard is the user's source data, read in place, which castle never
/// rewrites.
#[derive(Debug)]
pub struct DamagedShard {
    pub path: PathBuf,
    pub kind: ShardKind,
    /// What is wrong, e.g. which tokens fail their checksum.
    pub why: String,
}

impl Display for DamagedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, why) = (self.path.display(), &self.why);
        match self.kind {
            ShardKind::Castle => write!(
                f,
                "corrupt token shard {path}: {why}; delete it and run `castle-data prepare \
                 --config <your config>` again to rewrite it"
            ),
            ShardKind::Llmc => write!(
                f,
                "damaged llm.c token shard {path} (source data, read in place): {why}; castle \
                 never rewrites source files: replace it with a good copy (download it again, or \
                 run llm.c's data script again, e.g. `python dev/data/fineweb.py`) and run \
                 `castle-data prepare --config <your config>` again"
            ),
        }
    }
}

impl std::error::Error for DamagedShard {}

/// A [`DamagedShard`] error.
pub(crate) fn damaged(path: &Path, kind: ShardKind, why: impl Display) -> anyhow::Error {
    anyhow::Error::new(DamagedShard {
        path: path.to_path_buf(),
        kind,
        why: why.to_string(),
    })
}

/// [`damaged`] for castle's own shards.
fn corrupt(path: &Path, why: String) -> anyhow::Error {
    damaged(path, ShardKind::Castle, why)
}

/// Errors unless a file of `len` bytes holds exactly `count` tokens of `width` after the header
/// of a `kind` shard.
fn check_length(path: &Path, kind: ShardKind, len: usize, count: u64, width: usize) -> Result<()> {
    let header = match kind {
        ShardKind::Castle => HEADER_LEN,
        ShardKind::Llmc => LLMC_HEADER_LEN,
    };
    let expected = (count as u128) * width as u128 + header as u128;
    if expected != len as u128 {
        let what = if (len as u128) < expected {
            "truncated"
        } else {
            "too long"
        };
        return Err(damaged(
            path,
            kind,
            format!("{what}: header says {count} tokens ({expected} bytes), file has {len} bytes"),
        ));
    }
    Ok(())
}

impl Shard {
    /// Maps one shard of the manifest; errors unless its header agrees with the entry.
    pub(crate) fn open_entry(dir: &Path, entry: &ShardEntry) -> Result<Shard> {
        let path = Manifest::shard_path(dir, entry);
        let shard = match entry.kind {
            ShardKind::Castle => Shard::open_header(&path)?,
            ShardKind::Llmc => Shard::open_llmc(&path)?,
        };
        if shard.len() as u64 != entry.tokens {
            return Err(damaged(
                &path,
                entry.kind,
                format!(
                    "{} tokens, {MANIFEST_FILE} says {}",
                    shard.len(),
                    entry.tokens
                ),
            ));
        }
        Ok(shard)
    }

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
        let u32_at = |o: usize| u32::from_le_bytes(array(&mmap, o));
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
        let count = u64::from_le_bytes(array(&mmap, 16));
        check_length(path, ShardKind::Castle, mmap.len(), count, dtype.width())?;
        if u32_at(60) != 0 {
            return Err(corrupt(path, "reserved header bytes are not zero".into()));
        }
        let tokenizer_hash = array(&mmap, 24);
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            kind: ShardKind::Castle,
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
            return Err(damaged(
                path,
                ShardKind::Llmc,
                format!(
                    "{} bytes, shorter than the {LLMC_HEADER_LEN}-byte llm.c header",
                    mmap.len()
                ),
            ));
        }
        let i32_at = |i: usize| i32::from_le_bytes(array(&mmap, 4 * i));
        if i32_at(0) != LLMC_MAGIC {
            return Err(damaged(
                path,
                ShardKind::Llmc,
                format!("magic {} is not llm.c's {LLMC_MAGIC}", i32_at(0)),
            ));
        }
        if i32_at(1) != 1 {
            return Err(damaged(
                path,
                ShardKind::Llmc,
                format!(
                    "llm.c shard version {}, only version 1 (u16 ids) is read",
                    i32_at(1)
                ),
            ));
        }
        let count = u64::try_from(i32_at(2)).map_err(|_| {
            damaged(
                path,
                ShardKind::Llmc,
                format!("negative token count {}", i32_at(2)),
            )
        })?;
        check_length(path, ShardKind::Llmc, mmap.len(), count, 2)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            kind: ShardKind::Llmc,
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
        let stored = u32::from_le_bytes(array(&self.mmap, 56));
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

    /// castle's own shard or an llm.c one.
    pub fn kind(&self) -> ShardKind {
        self.kind
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

impl TokenSource for Shard {
    fn len(&self) -> usize {
        self.len
    }

    fn extend_window(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let end = window_end(start, n, self.len)
            .with_context(|| format!("token shard {}", self.path.display()))?;
        let w = self.dtype.width();
        let bytes = &self.payload()[start * w..end * w];
        match self.dtype {
            TokenDtype::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes(array(b, 0)) as u32),
            ),
            TokenDtype::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(array(b, 0))),
            ),
        }
        Ok(())
    }
}
