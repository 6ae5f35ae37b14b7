//! The multiple-choice scorer: predictions from known likelihoods, lm-eval's tokenization of
//! (context, choice), the model's log-likelihoods, and task-file errors.

use std::path::Path;

use anyhow::Result;
use burn::backend::NdArray;
use burn::prelude::*;
use castle_data::Tok;
use castle_eval::mc::{
    char_len, encode_pair, evaluate_task, predict, read_items, ModelScorer, Request, Scorer,
};
use castle_model::KernelBackend;
use castle_model::{AttentionKind, ModelConfig};

type B = NdArray<f32>;

fn tokenizer() -> Tok {
    let docs: Vec<String> = (0..50)
        .map(|i| {
            format!("the cat sat on the mat {i}. Paris is the capital of France. a cow says moo.")
        })
        .collect();
    Tok::train(&docs, 300).unwrap()
}

#[test]
fn predictions_from_known_likelihoods() {
    // Choice 0 has the highest sum; per byte choice 2 wins (-6 / 12 = -0.5 > -2 / 2 = -1).
    let lls = [-2.0, -3.0, -6.0];
    let bytes = [2, 3, 12];
    assert_eq!(predict(&lls, &bytes), (0, 2));
    // Ties go to the first, as numpy's argmax.
    assert_eq!(predict(&[-1.0, -1.0], &[4, 4]), (0, 0));
}

/// Fixed log-likelihoods, one per choice in order.
struct FixedScorer(Vec<f64>);

impl Scorer for FixedScorer {
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>> {
        assert_eq!(requests.len(), self.0.len());
        Ok(self.0.clone())
    }
}

#[test]
fn acc_norm_divides_by_characters_as_python_len_not_bytes() {
    assert_eq!(char_len(" é"), 2);
    assert_eq!(char_len("naïve café"), 10);
    assert_eq!(char_len("日本"), 2);
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accents.jsonl");
    // " éé": 3 characters, 5 bytes, ll -4.5; " abc": 4 characters and bytes, ll -5.
    // Per character " abc" wins (-1.25 > -1.5); per byte " éé" would (-0.9 > -1.25).
    let line = serde_json::json!({"context": "Q:", "choices": [" éé", " abc"], "gold": 1});
    std::fs::write(&path, line.to_string()).unwrap();
    let result = evaluate_task(&path, &tok, &mut FixedScorer(vec![-4.5, -5.0])).unwrap();
    assert_eq!(result.acc, 0.0, "by the sum, choice 0 wins");
    assert_eq!(result.acc_norm, 1.0, "by characters, choice 1 wins");
}

/// Every token costs one nat, whatever the context: a choice's score is minus its token count.
struct KnownScorer;

impl Scorer for KnownScorer {
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>> {
        Ok(requests
            .iter()
            .map(|r| -(r.continuation.len() as f64))
            .collect())
    }
}

#[test]
fn evaluate_task_scores_acc_and_acc_norm_from_known_likelihoods() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known.jsonl");
    let ll =
        |text: &str| -> f64 { -(encode_pair(&tok, "Q:", text).unwrap().continuation.len() as f64) };
    // Item 1: gold is the best by sum and per byte. Item 2: a long gold choice loses on the
    // sum but wins per byte. Blank lines are skipped.
    let short = " a";
    let long = " the cat sat on the mat the cat sat on the mat";
    assert!(ll(long) < ll(short) && ll(long) / long.len() as f64 > ll(short) / short.len() as f64);
    let mut lines = vec![];
    let choices = [short, long];
    let best_sum = 0;
    lines.push(
        serde_json::json!({"context": "Q:", "choices": choices, "gold": best_sum}).to_string(),
    );
    lines.push(String::new());
    lines.push(
        serde_json::json!({"context": "Q:", "choices": choices, "gold": 1 - best_sum}).to_string(),
    );
    std::fs::write(&path, lines.join("\n")).unwrap();

    let result = evaluate_task(&path, &tok, &mut KnownScorer).unwrap();
    assert_eq!(result.task, "known");
    assert_eq!(result.items, 2);
    assert_eq!(result.acc, 0.5);
    assert_eq!(
        result.acc_norm, 0.5,
        "the long choice wins per byte, so only item 2 counts"
    );
    assert!(
        (result.acc_stderr - 0.5).abs() < 1e-12,
        "sqrt(0.25 / (n - 1))"
    );
}

#[test]
fn encode_pair_follows_lm_eval() {
    let tok = tokenizer();
    let r = encode_pair(&tok, "the cat sat on the ", "mat").unwrap();
    assert_eq!(r.context, tok.encode("the cat sat on the").unwrap());
    let whole = tok.encode("the cat sat on the mat").unwrap();
    assert_eq!([r.context.clone(), r.continuation.clone()].concat(), whole);
    let empty = encode_pair(&tok, "", " moo").unwrap();
    assert_eq!(empty.context, vec![tok.eot_id()]);
    assert_eq!(empty.continuation, tok.encode(" moo").unwrap());
}

#[test]
fn model_scores_equal_the_log_likelihood_of_each_sequence_alone() {
    let tok = tokenizer();
    let device = Default::default();
    for kind in [AttentionKind::Baseline, AttentionKind::Castle] {
        let mut config = ModelConfig::new(2, 32, 4, 8).with_attention(kind, None);
        config.block_size = 4;
        config.max_seq_len = 16;
        let model = config.init::<B>(tok.vocab_size(), &device);
        let requests = vec![
            encode_pair(&tok, "the cat sat on the", " mat").unwrap(),
            encode_pair(&tok, "a cow says", " moo moo moo said the cow").unwrap(),
            // Longer than the context (16): cut from the left.
            encode_pair(
                &tok,
                &"Paris is the capital of France. ".repeat(4),
                " Paris",
            )
            .unwrap(),
        ];
        assert!(requests[2].context.len() + requests[2].continuation.len() > 17);
        let mut scorer = ModelScorer {
            model: &model,
            device,
        };
        let got = scorer.loglikelihoods(&requests).unwrap();
        for (r, got) in requests.iter().zip(got) {
            let mut full: Vec<u32> = [r.context.clone(), r.continuation.clone()].concat();
            if full.len() > 17 {
                full.drain(..full.len() - 17);
            }
            let ids: Vec<i64> = full.iter().map(|&t| t as i64).collect();
            let n = ids.len();
            let all = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
            let nll: Vec<f32> = B::token_nll(
                model.forward(all.clone().slice([0..1, 0..n - 1])),
                all.slice([0..1, 1..n]),
            )
            .into_data()
            .iter::<f32>()
            .collect();
            let k = r.continuation.len();
            let want: f64 = -nll[nll.len() - k..].iter().map(|&x| x as f64).sum::<f64>();
            assert!((got - want).abs() < 1e-4, "{kind}: {got} vs {want}");
        }
    }
}

#[test]
fn task_file_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let good = r#"{"context": "a", "choices": [" b", " c"], "gold": 0}"#;
    let cases = [
        (
            r#"{"context": "a", "choices": [" b", " c"]}"#,
            "missing field `gold`",
        ),
        (
            r#"{"context": "a", "choices": [" b"], "gold": 1}"#,
            "only 1 choices",
        ),
        (
            r#"{"context": "a", "choices": [], "gold": 0}"#,
            "\"choices\" is empty",
        ),
        ("not json", "expected {\"context\""),
    ];
    for (bad, why) in cases {
        std::fs::write(&path, format!("{good}\n\n{bad}\n")).unwrap();
        let err = format!("{:#}", read_items(&path).unwrap_err());
        assert!(err.contains(&format!("{}:3", path.display())), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let err = format!(
        "{:#}",
        read_items(Path::new("/nonexistent/task.jsonl")).unwrap_err()
    );
    assert!(err.contains("/nonexistent/task.jsonl"), "{err}");
}

#[test]
fn the_shipped_task_file_reads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tasks/tiny-mc.jsonl");
    let items = read_items(&path).unwrap();
    assert_eq!(items.len(), 12);
    assert!(items
        .iter()
        .all(|i| i.choices.len() >= 3 && i.choices.iter().all(|c| c.starts_with(' '))));
}
