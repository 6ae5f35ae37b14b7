//! Building the output folder in bounded memory, resumably.
//!
//! A fresh build trains (or loads) the tokenizer, saves it and an empty manifest, then streams
//! the corpus: a reader thread sends chunks of documents, the tokenizer encodes each chunk on
//! every core, and each split's tokens go to numbered shards closed after the first document
//! that brings them to `data.shard_tokens`. After every closed shard the manifest is rewritten
//! (atomically). A shard's content depends only on the document sequence, so a build started
//! again after an interruption keeps the finished shards whose headers check out, skips the
//! training documents they hold, re-reads the validation documents not yet in a finished
//! shard, and ends with exactly the shards of an uninterrupted build.

use std::fs;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::config::{DataConfig, InputFormat};
use crate::corpus::{for_each_document, list_files};
use crate::holdout::{check_holdout, train_tokenizer, Holdout};
use crate::manifest::{Manifest, ShardEntry, ShardKind, MANIFEST_FILE, TOKENIZER_FILE};
use crate::shard::{Shard, TokenDtype};
use crate::tokenizer::Tok;
use crate::writer::{BlockCrcs, ShardWriter};

/// Text bytes per chunk handed from the reader to the tokenizer.
const CHUNK_BYTES: usize = 4 << 20;

/// Wall-clock seconds of a build (or of the part a resumed build still had to do).
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// Sampling the training documents and training the BPE (0 when it existed or was given).
    pub tokenizer_s: f64,
    /// Streaming, tokenizing and writing the shards.
    pub tokenize_s: f64,
}

/// Builds or finishes the output for `cfg`; returns the tokenizer time of a fresh build.
pub fn build(cfg: &DataConfig) -> Result<Timing> {
    cfg.validate()?;
    let dir = cfg.out_dir();
    check_source(cfg)?;
    check_replaceable(&dir)?;
    let mut timing = Timing::default();
    let (tok, mut manifest) = match resumable(cfg, &dir) {
        Some(found) => found,
        None => {
            let t = Instant::now();
            let tok = match &cfg.tokenizer {
                Some(path) => Tok::load(path)
                    .with_context(|| format!("data.tokenizer = {}", path.display()))?,
                None if cfg.format == InputFormat::Llmc => {
                    unreachable!("validate() above requires data.tokenizer for llm.c shards")
                }
                None => train_tokenizer(cfg)?,
            };
            timing.tokenizer_s = t.elapsed().as_secs_f64();
            clear(&dir)?;
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            tok.save(dir.join(TOKENIZER_FILE))?;
            let manifest = Manifest::new(cfg, tok.hash_hex());
            manifest.save(&dir)?;
            (tok, manifest)
        }
    };
    remove_temp_files(&dir)?;
    match cfg.format {
        InputFormat::Llmc => import_llmc(cfg, &tok, &mut manifest)?,
        _ => tokenize_corpus(cfg, &dir, &tok, &mut manifest)?,
    }
    manifest.complete = true;
    manifest.save(&dir)?;
    Ok(timing)
}

/// An earlier build of the same settings to continue: its tokenizer and manifest, cut at the
/// first shard of each split whose file is missing or does not match its header.
fn resumable(cfg: &DataConfig, dir: &Path) -> Option<(Tok, Manifest)> {
    let mut manifest = Manifest::load(dir).ok()?;
    let tok = Tok::load(dir.join(TOKENIZER_FILE)).ok()?;
    let given_same = match &cfg.tokenizer {
        Some(path) => Tok::load(path).ok()?.hash() == tok.hash(),
        None => true,
    };
    if !manifest.same_settings(cfg) || tok.hash_hex() != manifest.tokenizer_sha256 || !given_same {
        return None;
    }
    for split in [&mut manifest.train, &mut manifest.val] {
        let good = split
            .shards
            .iter()
            .take_while(|e| Shard::open_entry(dir, e).is_ok())
            .count();
        split.truncate(good);
    }
    manifest.complete = false;
    tracing::info!(
        train_shards = manifest.train.shards.len(),
        val_shards = manifest.val.shards.len(),
        "resuming the preparation in {}",
        dir.display()
    );
    Some((tok, manifest))
}

fn check_source(cfg: &DataConfig) -> Result<()> {
    if cfg.source.exists() {
        return Ok(());
    }
    if cfg.is_default_source() {
        bail!(
            "data.source = {} does not exist: run `scripts/fetch_sotu.sh` to download the default \
             corpus (State of the Union addresses), or set data.source to your own files",
            cfg.source.display()
        );
    }
    bail!(
        "data.source = {} does not exist: set data.source to a file or folder of documents",
        cfg.source.display()
    )
}

/// Whether castle-data writes files of this name (legacy `train.bin` / `val.bin` included).
fn ours(name: &str) -> bool {
    let shard = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(".bin"))
            .is_some_and(|n| n.is_empty() || n.bytes().all(|b| b.is_ascii_digit()))
    };
    [TOKENIZER_FILE, MANIFEST_FILE].contains(&name)
        || shard("train-")
        || shard("val-")
        || name == "train.bin"
        || name == "val.bin"
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Refuses to write into a folder that holds files castle-data did not write.
fn check_replaceable(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !ours(&name) {
            bail!(
                "data.dir {} holds {name}, which castle-data did not write; choose another data.dir \
                 or empty that folder",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Removes the files of `dir` whose names pass `which`.
fn remove_where(dir: &Path, which: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| which(&n.to_string_lossy()))
        {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes earlier output from `dir` (only files [`ours`] accepts).
fn clear(dir: &Path) -> Result<()> {
    remove_where(dir, ours)
}

/// Removes temp files left by an interrupted run.
fn remove_temp_files(dir: &Path) -> Result<()> {
    remove_where(dir, |n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// A document on its way to the tokenizer.
struct Doc {
    index: u64,
    val: bool,
    text: String,
}

/// Reads the corpus, sending in chunks the documents not yet in finished shards: training
/// documents from `train_from` on, validation documents from the `val_from`-th on.
fn read_chunks(
    cfg: &DataConfig,
    train_from: u64,
    val_from: u64,
    send: std::sync::mpsc::SyncSender<Vec<Doc>>,
) -> Result<(u64, u64)> {
    let mut holdout = Holdout::new(cfg);
    let (mut index, mut val_docs, mut chunk, mut size) = (0u64, 0u64, Vec::new(), 0);
    let stopped = || anyhow!("the tokenizer stopped");
    let total = for_each_document(&cfg.source, cfg.format, &cfg.text_field, &mut |text| {
        let (i, ordinal) = (index, holdout.visit(index));
        index += 1;
        val_docs += ordinal.is_some() as u64;
        let wanted = match ordinal {
            Some(k) => k >= val_from,
            None => i >= train_from,
        };
        if wanted {
            size += text.len();
            chunk.push(Doc {
                index: i,
                val: ordinal.is_some(),
                text,
            });
            if size >= CHUNK_BYTES {
                size = 0;
                send.send(std::mem::take(&mut chunk))
                    .map_err(|_| stopped())?;
            }
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        send.send(chunk).map_err(|_| stopped())?;
    }
    Ok((total, val_docs))
}

/// The open shard of one split and what it holds.
struct SplitWriter<'a> {
    dir: &'a Path,
    prefix: &'static str,
    next: usize,
    dtype: TokenDtype,
    hash: [u8; 32],
    shard_tokens: u64,
    open: Option<(ShardWriter, ShardEntry)>,
}

impl<'a> SplitWriter<'a> {
    /// Appends one document's ids (`<|endoftext|>` included); returns the shard it closed, if any.
    fn push(&mut self, ids: &[u32], doc: &Doc) -> Result<Option<ShardEntry>> {
        if self.open.is_none() {
            let file = format!("{}-{:06}.bin", self.prefix, self.next);
            let writer = ShardWriter::create(&self.dir.join(&file), self.dtype, self.hash)?;
            let entry = ShardEntry {
                file: file.into(),
                kind: ShardKind::Castle,
                tokens: 0,
                documents: 0,
                bytes: 0,
                next_document: 0,
                block_crc32: vec![],
            };
            self.open = Some((writer, entry));
        }
        // Impossible to be `None`: set just above when it was.
        let (writer, entry) = self.open.as_mut().expect("opened above");
        writer.push(ids)?;
        entry.documents += 1;
        entry.bytes += doc.text.len() as u64;
        entry.next_document = doc.index + 1;
        if writer.len() >= self.shard_tokens {
            return self.close();
        }
        Ok(None)
    }

    /// Finishes the open shard, if any.
    fn close(&mut self) -> Result<Option<ShardEntry>> {
        let Some((writer, mut entry)) = self.open.take() else {
            return Ok(None);
        };
        entry.tokens = writer.len();
        entry.block_crc32 = writer.finish()?;
        self.next += 1;
        tracing::info!(shard = %entry.file.display(), tokens = entry.tokens, "shard written");
        Ok(Some(entry))
    }
}

/// Streams the corpus into shards, continuing after the shards `manifest` already lists.
fn tokenize_corpus(cfg: &DataConfig, dir: &Path, tok: &Tok, manifest: &mut Manifest) -> Result<()> {
    let train_from = manifest.train.shards.last().map_or(0, |e| e.next_document);
    let val_from = manifest.val.documents as u64;
    let dtype = if tok.vocab_size() <= 1 << 16 {
        TokenDtype::U16
    } else {
        TokenDtype::U32
    };
    let writer = |prefix, next| SplitWriter {
        dir,
        prefix,
        next,
        dtype,
        hash: tok.hash(),
        shard_tokens: cfg.shard_tokens as u64,
        open: None,
    };
    let mut train = writer("train", manifest.train.shards.len());
    let mut val = writer("val", manifest.val.shards.len());
    let bar = progress_bar();
    let (send, receive) = sync_channel::<Vec<Doc>>(2);
    let (written, read) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_chunks(cfg, train_from, val_from, send));
        let written = (|| -> Result<()> {
            for chunk in receive {
                let texts: Vec<&str> = chunk.iter().map(|d| d.text.as_str()).collect();
                let ids = tok.encode_documents(&texts)?;
                for (doc, ids) in chunk.iter().zip(&ids) {
                    let split = if doc.val { &mut val } else { &mut train };
                    if let Some(entry) = split.push(ids, doc)? {
                        let stats = if doc.val {
                            &mut manifest.val
                        } else {
                            &mut manifest.train
                        };
                        stats.push(entry);
                        manifest.save(dir)?;
                    }
                }
                bar.inc(texts.iter().map(|t| t.len() as u64).sum());
            }
            if let Some(entry) = train.close()? {
                manifest.train.push(entry);
                manifest.save(dir)?;
            }
            if let Some(entry) = val.close()? {
                manifest.val.push(entry);
                manifest.save(dir)?;
            }
            Ok(())
        })();
        // A reader that panicked (a parser's bug on a damaged file) still ends with an error.
        let read = reader.join().unwrap_or_else(|_| {
            Err(anyhow!(
                "reading data.source {} failed (the message above names the cause): a file there \
                 may be damaged",
                cfg.source.display()
            ))
        });
        (written, read)
    });
    bar.finish_and_clear();
    written?;
    let (total, val_docs) = read?;
    check_holdout(cfg, total, val_docs)
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} tokenized {binary_bytes} at {binary_bytes_per_sec}, {elapsed}",
        )
        // A constant template, which parses.
        .expect("valid template"),
    );
    bar
}

/// Lists the llm.c shards under `data.source` in place (names containing `val` are the
/// validation split), checking each one's header, ids (below the tokenizer's vocabulary) and
/// recording its block checksums.
fn import_llmc(cfg: &DataConfig, tok: &Tok, manifest: &mut Manifest) -> Result<()> {
    let mut files = list_files(&cfg.source, InputFormat::Llmc)?;
    files.retain(|f| f.extension().is_some_and(|e| e == "bin"));
    let entries = files
        .par_iter()
        .map(|file| {
            let shard = Shard::open_llmc(file)?;
            let largest = shard
                .payload()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .max()
                .unwrap_or(0);
            if largest as usize >= tok.vocab_size() {
                bail!(
                    "{} holds token id {largest}, outside data.tokenizer's {} ids; set data.tokenizer \
                     to the tokenizer that made these shards",
                    file.display(),
                    tok.vocab_size()
                );
            }
            let val = file.file_name().is_some_and(|n| n.to_string_lossy().contains("val"));
            let entry = ShardEntry {
                file: file.clone(),
                kind: ShardKind::Llmc,
                tokens: shard.len() as u64,
                documents: 0,
                bytes: 0,
                next_document: 0,
                block_crc32: BlockCrcs::of(shard.payload(), 2),
            };
            Ok((val, entry))
        })
        .collect::<Result<Vec<_>>>()?;
    manifest.train.truncate(0);
    manifest.val.truncate(0);
    for (val, entry) in entries {
        if val {
            &mut manifest.val
        } else {
            &mut manifest.train
        }
        .push(entry);
    }
    if manifest.train.shards.is_empty() || manifest.val.shards.is_empty() {
        bail!(
            "data.source {} needs .bin shards for both splits (names containing \"val\" are the \
             validation split, as llm.c and modded-nanogpt name them: fineweb_val_000000.bin); \
             found {} training and {} validation shard(s)",
            cfg.source.display(),
            manifest.train.shards.len(),
            manifest.val.shards.len()
        );
    }
    Ok(())
}
