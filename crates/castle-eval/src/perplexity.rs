//! Perplexity over fixed windows: the run's validation split (the trainer's exact windows) or
//! any documents, tokenized with the checkpoint's tokenizer.

use std::path::Path;

use anyhow::{bail, Context, Result};
use castle_data::{read_documents, validation_windows, InputFormat, Tok};
use castle_train::checkpoint::Checkpoint;

/// Each document's tokens followed by `<|endoftext|>`, as the data pipeline writes shards.
pub fn document_tokens(tok: &Tok, docs: &[String]) -> Result<Vec<u32>> {
    let mut tokens = vec![];
    for chunk in docs.chunks(256) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        tokens.extend(tok.encode_documents(&texts)?.concat());
    }
    Ok(tokens)
}

/// Where the evaluated tokens come from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// The run's validation split, from its `[data]` config (prepared if missing).
    Validation,
    /// Documents under a file or folder.
    Documents {
        path: &'a Path,
        format: InputFormat,
        text_field: &'a str,
    },
}

/// Windows to evaluate and a description of where they came from.
pub fn load_windows(
    ckpt: &Checkpoint,
    tok: &Tok,
    source: &Source,
    seq_len: usize,
    max_tokens: Option<usize>,
) -> Result<(Vec<Vec<u32>>, String)> {
    let config = &ckpt.config;
    let (windows, what) = match source {
        Source::Validation => {
            // Read-only: evaluating never prepares or rewrites a run's data.
            let data = castle_data::open_prepared(&config.data).with_context(|| {
                format!(
                    "cannot open the run's validation data (data.dir {}); run castle-eval from the directory the run was started in, prepare it with `castle-data prepare --config {}`, or pass --data",
                    config.data.out_dir().display(),
                    ckpt.dir.join("config.toml").display()
                )
            })?;
            if data.tokenizer.hash_hex() != ckpt.state.tokenizer_sha256 {
                bail!(
                    "the prepared data in {} uses tokenizer sha256 {}, but {} was trained with {}; prepare the run's data again with its tokenizer (set data.tokenizer to the checkpoint's tokenizer.json and run `castle-data prepare`), or pass --data to evaluate on raw documents",
                    data.dir.display(),
                    data.tokenizer.hash_hex(),
                    ckpt.dir.display(),
                    ckpt.state.tokenizer_sha256
                );
            }
            let max = max_tokens.unwrap_or(config.eval.tokens);
            (
                validation_windows(&data.val, seq_len, max)?,
                format!("validation split of {}", data.dir.display()),
            )
        }
        Source::Documents {
            path,
            format,
            text_field,
        } => {
            let docs = read_documents(path, *format, text_field)?;
            let tokens = document_tokens(tok, &docs)?;
            tracing::info!(
                documents = docs.len(),
                tokens = tokens.len(),
                "read {}",
                path.display()
            );
            (
                validation_windows(tokens.as_slice(), seq_len, max_tokens.unwrap_or(usize::MAX))?,
                path.display().to_string(),
            )
        }
    };
    if windows.is_empty() {
        bail!(
            "{what}: not enough tokens for one window of seq_len + 1 = {} (and --tokens must be at least seq_len = {seq_len})",
            seq_len + 1
        );
    }
    Ok((windows, what))
}
