use crate::common;

use std::fs;

use castle_data::{Tok, EOT};

#[test]
fn encode_decode_round_trip() {
    let docs = common::documents(40);
    let tok = Tok::train(&docs, 320).unwrap();
    assert!(tok.vocab_size() <= 320 && tok.vocab_size() > 257);
    for text in [
        docs[3].as_str(),
        "  leading spaces, tabs\tand\nnew lines\r\n",
        "unicode: café — 東京 🚀",
        "",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // A literal end-of-text marker becomes the single EOT id.
    let ids = tok.encode(&format!("a{EOT}b")).unwrap();
    assert!(ids.contains(&tok.eot_id()));
    assert_eq!(tok.decode(&ids).unwrap(), format!("a{EOT}b"));
}

#[test]
fn document_encoding_is_each_text_then_eot() {
    let docs = common::documents(12);
    let tok = Tok::train(&docs, 300).unwrap();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let batch = tok.encode_documents(&refs).unwrap();
    assert_eq!(batch.len(), docs.len());
    for (doc, ids) in docs.iter().zip(batch) {
        let mut expected = tok.encode(doc).unwrap();
        expected.push(tok.eot_id());
        assert_eq!(ids, expected);
    }
}

#[test]
fn save_load_keeps_hash_and_ids() {
    let docs = common::documents(20);
    let tok = Tok::train(&docs, 300).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let loaded = Tok::load(&path).unwrap();
    assert_eq!(loaded.hash(), tok.hash());
    assert_eq!(loaded.eot_id(), tok.eot_id());
    assert_eq!(
        loaded.encode(&docs[0]).unwrap(),
        tok.encode(&docs[0]).unwrap()
    );
    // Training is deterministic: same corpus, same tokenizer.
    assert_eq!(Tok::train(&docs, 300).unwrap().hash(), tok.hash());
}

#[test]
fn vocab_too_small_is_rejected() {
    let err = Tok::train(&common::documents(2), 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.vocab_size = 100"), "{err}");
    assert!(err.contains("257"), "{err}");
}

#[test]
fn tokenizer_without_eot_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    Tok::train(&common::documents(5), 300)
        .unwrap()
        .save(&good)
        .unwrap();
    let path = dir.path().join("other.json");
    let json = fs::read_to_string(&good).unwrap().replace(EOT, "<|other|>");
    fs::write(&path, json).unwrap();
    let err = format!("{:#}", Tok::load(&path).unwrap_err());
    assert!(err.contains("other.json") && err.contains(EOT), "{err}");

    let err = format!(
        "{:#}",
        Tok::load(dir.path().join("missing.json")).unwrap_err()
    );
    assert!(err.contains("missing.json"), "{err}");
}
