//! Corpus readers: plain text, JSON Lines (plain or gzip) and Parquet.
//!
//! Files are visited in sorted path order and documents keep their order
//! inside a file, so the document list (and the validation holdout built on
//! it) is the same on every machine.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, LargeStringArray, StringArray, StringViewArray};
use flate2::read::MultiGzDecoder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::config::InputFormat;
use crate::tokenizer::EOT;

/// Reads every document under `source` (a file or a folder) into memory.
///
/// Folders are walked recursively, skipping hidden entries; with
/// [`InputFormat::Auto`] files of unknown extension are skipped too.
/// Whitespace-only documents are dropped. Errors name the offending file.
pub fn read_documents(source: &Path, format: InputFormat, text_field: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for_each_document(source, format, text_field, &mut |doc| {
        docs.push(doc);
        Ok(())
    })?;
    Ok(docs)
}

/// Streams every document under `source` to `visit`, in [`read_documents`]' order, holding
/// one file's text (text files), one line (JSON Lines) or one record batch (Parquet) at a time.
/// Returns the number of documents; errors when there are none.
pub fn for_each_document(
    source: &Path,
    format: InputFormat,
    text_field: &str,
    visit: &mut dyn FnMut(String) -> Result<()>,
) -> Result<u64> {
    let files = list_files(source, format)?;
    let mut count = 0u64;
    let mut counted = |doc: String| {
        count += 1;
        visit(doc)
    };
    for file in &files {
        let format = match format {
            InputFormat::Auto => format_of(file).ok_or_else(|| {
                anyhow!(
                    "{}: cannot tell the format from the file name; set data.format to text, jsonl or parquet",
                    file.display()
                )
            })?,
            explicit => explicit,
        };
        match format {
            InputFormat::Text => read_text(file, &mut counted)?,
            InputFormat::Jsonl => read_jsonl(file, text_field, &mut counted)?,
            InputFormat::Parquet => read_parquet(file, text_field, &mut counted)?,
            InputFormat::Llmc => bail!(
                "{}: data.format = \"llmc\" holds token ids, not documents",
                file.display()
            ),
            // `format` was resolved from the file name just above.
            InputFormat::Auto => unreachable!("resolved above"),
        }
    }
    if count == 0 {
        bail!(
            "no documents found in {} ({} file(s) read, all empty or without text); \
             check data.source and data.format",
            source.display(),
            files.len()
        );
    }
    Ok(count)
}

/// The format a file name implies, if any.
pub fn format_of(path: &Path) -> Option<InputFormat> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let name = name
        .strip_suffix(".gz")
        .map(|n| (n, true))
        .unwrap_or((&name, false));
    match name {
        (n, false) if n.ends_with(".txt") || n.ends_with(".text") || n.ends_with(".md") => {
            Some(InputFormat::Text)
        }
        (n, _) if n.ends_with(".jsonl") || n.ends_with(".ndjson") => Some(InputFormat::Jsonl),
        (n, false) if n.ends_with(".parquet") => Some(InputFormat::Parquet),
        _ => None,
    }
}

/// The files to read, sorted by path.
pub fn list_files(source: &Path, format: InputFormat) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(source).with_context(|| {
        format!(
            "data.source {} does not exist or cannot be read",
            source.display()
        )
    })?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files = Vec::new();
    walk(source, &mut files)?;
    if format == InputFormat::Auto {
        files.retain(|f| {
            let known = format_of(f).is_some();
            if !known {
                tracing::debug!(file = %f.display(), "skipped: unknown extension");
            }
            known
        });
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "no input files in folder {} (looked for .txt, .md, .jsonl[.gz], .ndjson[.gz], .parquet); \
             check data.source or set data.format",
            source.display()
        );
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list folder {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// A document sink.
type Visit<'a> = dyn FnMut(String) -> Result<()> + 'a;

/// Visits `text` split at literal `<|endoftext|>` markers, dropping blank parts.
fn push_split(text: &str, visit: &mut Visit) -> Result<()> {
    text.split(EOT)
        .filter(|d| !d.trim().is_empty())
        .try_for_each(|d| visit(d.to_owned()))
}

fn utf8(bytes: Vec<u8>, file: &Path, line: Option<usize>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
        anyhow!(
            "{}{at}: invalid UTF-8 at byte {}; convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn read_text(file: &Path, visit: &mut Visit) -> Result<()> {
    let bytes = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    push_split(&utf8(bytes, file, None)?, visit)
}

fn read_jsonl(file: &Path, field: &str, visit: &mut Visit) -> Result<()> {
    let raw = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let gz = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{} line {line_no}: read failed", file.display()))?;
        if n == 0 {
            break;
        }
        let line = utf8(std::mem::take(&mut buf), file, Some(line_no))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {line_no}: not valid JSON", file.display()))?;
        match value.get(field) {
            Some(serde_json::Value::String(text)) => push_split(text, visit)?,
            Some(serde_json::Value::Null) => {}
            Some(_) => bail!(
                "{} line {line_no}: field \"{field}\" is not a string; set data.text_field to the text field",
                file.display()
            ),
            None => bail!(
                "{} line {line_no}: no field \"{field}\"; set data.text_field to the name of the text field",
                file.display()
            ),
        }
    }
    Ok(())
}

fn read_parquet(file: &Path, column: &str, visit: &mut Visit) -> Result<()> {
    let raw = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(raw)
        .with_context(|| format!("{}: not a readable Parquet file", file.display()))?;
    let fields = builder.schema().fields();
    let Some(index) = fields.iter().position(|f| f.name() == column) else {
        let names: Vec<_> = fields.iter().map(|f| f.name().as_str()).collect();
        bail!(
            "{}: no column \"{column}\" (columns: {}); set data.text_field to the text column",
            file.display(),
            names.join(", ")
        );
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .build()
        .with_context(|| format!("{}: cannot read column \"{column}\"", file.display()))?;
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: corrupt Parquet data", file.display()))?;
        let array = batch.column(0);
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            a.iter().flatten().try_for_each(|t| push_split(t, visit))?;
        } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
            a.iter().flatten().try_for_each(|t| push_split(t, visit))?;
        } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
            a.iter().flatten().try_for_each(|t| push_split(t, visit))?;
        } else {
            bail!(
                "{}: column \"{column}\" has type {}, not a string; set data.text_field to the text column",
                file.display(),
                array.data_type()
            );
        }
    }
    Ok(())
}
