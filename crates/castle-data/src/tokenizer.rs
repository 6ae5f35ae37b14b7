//! Byte-level BPE tokenizer: trained with the `tokenizers` crate or loaded
//! from an existing `tokenizer.json` (e.g. GPT-2's).

use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::atomic::write_atomic;

/// The end-of-text special token that separates documents.
pub const EOT: &str = "<|endoftext|>";

/// Smallest trainable vocabulary: the 256 byte tokens plus [`EOT`].
pub const MIN_VOCAB_SIZE: usize = 257;

/// A loaded tokenizer plus the exact `tokenizer.json` bytes it came from.
///
/// Its [`hash`](Tok::hash) is the SHA-256 of those bytes; shards record it.
pub struct Tok {
    inner: Tokenizer,
    json: Vec<u8>,
    hash: [u8; 32],
    eot: u32,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok")
            .field("vocab_size", &self.vocab_size())
            .field("eot_id", &self.eot)
            .field("hash", &self.hash_hex())
            .finish()
    }
}

impl Tok {
    /// Loads a `tokenizer.json`; it must define the `<|endoftext|>` token.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read(path)
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        Self::from_json(json).with_context(|| format!("tokenizer {}", path.display()))
    }

    /// Parses `tokenizer.json` bytes.
    pub fn from_json(json: Vec<u8>) -> Result<Self> {
        let inner =
            Tokenizer::from_bytes(&json).map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))?;
        let eot = inner.token_to_id(EOT).ok_or_else(|| {
            anyhow!(
                "has no {EOT} token; add it as a special token or train one (unset data.tokenizer)"
            )
        })?;
        let hash = Sha256::digest(&json).into();
        Ok(Self {
            inner,
            json,
            hash,
            eot,
        })
    }

    /// Trains a byte-level BPE (GPT-2 style: no prefix space) on `docs`.
    pub fn train(docs: &[String], vocab_size: usize) -> Result<Self> {
        if vocab_size < MIN_VOCAB_SIZE {
            bail!(
                "data.vocab_size = {vocab_size} is too small: a byte-level BPE needs at least \
                 {MIN_VOCAB_SIZE} (256 byte tokens + {EOT}); use e.g. 4096"
            );
        }
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            ByteLevel,
            PostProcessorWrapper,
            ByteLevel,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(None)
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| anyhow!("cannot build tokenizer: {e}"))?;
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        tokenizer
            .train(&mut trainer, docs.iter())
            .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
        let json = tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialize tokenizer: {e}"))?;
        // Round-trip through the generic `Tokenizer` so trained and loaded
        // tokenizers behave identically.
        Tokenizer::from_str(&json)
            .map_err(|e| anyhow!("trained tokenizer does not reload: {e}"))?;
        Self::from_json(json.into_bytes())
    }

    /// Writes the exact `tokenizer.json` bytes (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.json)
    }

    /// Token ids of `text` (no special tokens added; literal `<|endoftext|>` maps to EOT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("encoding failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Each document's ids followed by `<|endoftext|>`, as shards hold documents (the one place
    /// this rule lives: `prepare` and `castle-eval --data` both use it). Encodes in parallel on
    /// all cores.
    pub fn encode_documents(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| anyhow!("encoding failed: {e}"))?;
        Ok(encs
            .into_iter()
            .map(|e| {
                let mut ids = e.get_ids().to_vec();
                ids.push(self.eot);
                ids
            })
            .collect())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("decoding failed: {e}"))
    }

    /// The bytes token `id` stands for: for a byte-level BPE, its piece read back through the
    /// byte alphabet (possibly part of a UTF-8 character); otherwise its decoded text. Ids
    /// outside the vocabulary give no bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let piece = self.inner.id_to_token(id).unwrap_or_default();
        match piece.chars().map(byte_of_char).collect::<Option<Vec<u8>>>() {
            Some(bytes) => bytes,
            None => self.decode(&[id]).unwrap_or_default().into_bytes(),
        }
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<|endoftext|>`.
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// SHA-256 of the `tokenizer.json` bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// [`hash`](Tok::hash) as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The byte a character of GPT-2's byte-level alphabet stands for: printable Latin-1 bytes
/// stand for themselves, the other 68 bytes are written as U+0100.. in byte order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    match u32::from(c) {
        b @ 0..=0xFF if printable(b as u8) => Some(b as u8),
        n @ 0x100..=0x143 => (0..=255u8)
            .filter(|&b| !printable(b))
            .nth((n - 0x100) as usize),
        _ => None,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
