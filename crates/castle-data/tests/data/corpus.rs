use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use castle_data::{read_documents, InputFormat};
use flate2::write::GzEncoder;
use parquet::arrow::ArrowWriter;

fn write_jsonl(path: &Path, gzip: bool) {
    let lines = "{\"text\": \"first story\", \"id\": 1}\n\n{\"id\": 2, \"text\": \"second \\\"quoted\\\" story\\n\"}\n{\"text\": null}\n";
    if gzip {
        let mut enc = GzEncoder::new(
            fs::File::create(path).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(lines.as_bytes()).unwrap();
        enc.finish().unwrap();
    } else {
        fs::write(path, lines).unwrap();
    }
}

fn write_parquet(path: &Path, column: &str, texts: &[Option<&str>]) {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..texts.len() as i64));
    let text: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
    let batch = RecordBatch::try_from_iter([("id", ids), (column, text)]).unwrap();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn text_folder_sorted_with_hidden_and_unknown_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("b.txt"), "second").unwrap();
    fs::write(
        p.join("a.txt"),
        "first<|endoftext|>first again<|endoftext|>\n",
    )
    .unwrap();
    fs::write(p.join(".hidden.txt"), "hidden").unwrap();
    fs::write(p.join("notes.json"), "{}").unwrap();
    fs::write(p.join("blank.txt"), "  \n").unwrap();
    fs::create_dir(p.join("sub")).unwrap();
    fs::write(p.join("sub").join("c.md"), "third").unwrap();
    let docs = read_documents(p, InputFormat::Auto, "text").unwrap();
    assert_eq!(docs, ["first", "first again", "second", "third"]);
}

#[test]
fn jsonl_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    for (name, gzip) in [("d.jsonl", false), ("d.jsonl.gz", true)] {
        let path = dir.path().join(name);
        write_jsonl(&path, gzip);
        for format in [InputFormat::Auto, InputFormat::Jsonl] {
            let docs = read_documents(&path, format, "text").unwrap();
            assert_eq!(docs, ["first story", "second \"quoted\" story\n"], "{name}");
        }
    }
    let err = format!(
        "{:#}",
        read_documents(&dir.path().join("d.jsonl"), InputFormat::Auto, "body").unwrap_err()
    );
    assert!(
        err.contains("d.jsonl line 1")
            && err.contains("\"body\"")
            && err.contains("data.text_field"),
        "{err}"
    );
}

#[test]
fn parquet_reads_the_named_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000.parquet");
    write_parquet(
        &path,
        "content",
        &[Some("alpha"), None, Some("beta"), Some("")],
    );
    let docs = read_documents(&path, InputFormat::Auto, "content").unwrap();
    assert_eq!(docs, ["alpha", "beta"]);

    let err = read_documents(&path, InputFormat::Parquet, "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-00000.parquet"), "{err}");
    assert!(
        err.contains("no column \"text\"") && err.contains("id, content"),
        "{err}"
    );
    assert!(err.contains("data.text_field"), "{err}");

    let err = read_documents(&path, InputFormat::Parquet, "id")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a string"), "{err}");
}

#[test]
fn missing_path_is_named() {
    let err = format!(
        "{:#}",
        read_documents(Path::new("/no/such/corpus"), InputFormat::Auto, "text").unwrap_err()
    );
    assert!(err.contains("/no/such/corpus"), "{err}");
}

#[test]
fn empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.txt"), " \n\t").unwrap();
    let err = read_documents(dir.path(), InputFormat::Auto, "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no documents"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = read_documents(empty.path(), InputFormat::Auto, "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no input files"), "{err}");
}

#[test]
fn invalid_utf8_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good.txt"), "fine").unwrap();
    fs::write(dir.path().join("latin1.txt"), b"caf\xe9").unwrap();
    let err = read_documents(dir.path(), InputFormat::Auto, "text")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.txt") && err.contains("UTF-8") && err.contains("byte 3"),
        "{err}"
    );

    let path = dir.path().join("bad.jsonl");
    fs::write(&path, b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n").unwrap();
    let err = read_documents(&path, InputFormat::Auto, "text")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.jsonl line 2") && err.contains("UTF-8"),
        "{err}"
    );
}

#[test]
fn unknown_extension_needs_a_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.dat");
    fs::write(&path, "plain text").unwrap();
    let err = read_documents(&path, InputFormat::Auto, "text")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corpus.dat") && err.contains("data.format"),
        "{err}"
    );
    assert_eq!(
        read_documents(&path, InputFormat::Text, "text").unwrap(),
        ["plain text"]
    );
}
