//! The numbers: log-probabilities against castle-eval's log-likelihood, greedy completions
//! against castle-eval's generation, and batched (scoring, and generations sharing decoding
//! steps) against alone.

use std::thread;

use castle_eval::generate::{generate, SamplingOptions};
use castle_eval::mc::{encode_pair, ModelScorer, Scorer};
use castle_model::safetensors::ExportTokenizer;
use castle_serve::logprobs::token_text;
use serde_json::{json, Value};

use crate::lifecycle::{events, open_stream, texts};
use crate::{trained, Server, KINDS};

const PAIRS: [(&str, &str); 3] = [
    ("the union of the", " people"),
    ("we shall", " keep peace and trade in our nation"),
    ("Congress must", " act"),
];

/// `token_logprobs` of a scoring request as lm-eval sends it: one token prompt, echo, one new token.
fn scored(server: &Server, prompt: &[u32]) -> Value {
    let body = json!({"model": null, "prompt": [prompt], "temperature": 0, "max_tokens": 1,
                      "logprobs": 1, "seed": 1234, "echo": true});
    server.complete(&body)["choices"][0]["logprobs"].clone()
}

#[test]
fn echoed_logprobs_are_castle_evals_loglikelihood() {
    for kind in KINDS {
        let loaded = trained().load(kind);
        let server = Server::start(&trained().run(kind), &[]);
        let mut scorer = ModelScorer {
            model: &loaded.model,
            device: Default::default(),
        };
        for (context, continuation) in PAIRS {
            let request = encode_pair(&loaded.tokenizer, context, continuation).unwrap();
            let expected = scorer
                .loglikelihoods(std::slice::from_ref(&request))
                .unwrap()[0];
            let prompt: Vec<u32> = request
                .context
                .iter()
                .chain(&request.continuation)
                .copied()
                .collect();
            let logprobs = scored(&server, &prompt);
            let values = logprobs["token_logprobs"].as_array().unwrap();
            assert_eq!(
                values.len(),
                prompt.len() + 1,
                "the prompt and the new token"
            );
            assert!(values[0].is_null());
            // lm-eval: sum(token_logprobs[ctxlen:-1]).
            let ctxlen = request.context.len();
            let got: f64 = values[ctxlen..values.len() - 1]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!(
                (got - expected).abs() < 1e-5,
                "{kind} {context:?}+{continuation:?}: server {got}, castle-eval {expected}"
            );
            // lm-eval's greediness test reads the chosen token's entry among the alternatives.
            let tokens = logprobs["tokens"].as_array().unwrap();
            for k in 1..values.len() {
                let top = logprobs["top_logprobs"][k].as_object().unwrap();
                assert_eq!(
                    top[tokens[k].as_str().unwrap()],
                    values[k],
                    "{kind} position {k}"
                );
                let max = top
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                assert!(max >= values[k].as_f64().unwrap());
            }
            let ids: Vec<String> = prompt
                .iter()
                .map(|&t| token_text(&loaded.tokenizer.token_bytes(t)))
                .collect();
            assert_eq!(
                tokens[..prompt.len()],
                ids.iter().map(|s| json!(s)).collect::<Vec<_>>()[..]
            );
        }
    }
}

#[test]
fn greedy_completions_are_castle_evals_generation() {
    for kind in KINDS {
        let loaded = trained().load(kind);
        let server = Server::start(&trained().run(kind), &[]);
        for (prompt, max_tokens) in [("the union", 25usize), ("we", 40), ("peace and", 2)] {
            let ids = loaded.tokenizer.encode(prompt).unwrap();
            let eot = loaded.tokenizer.eot_id();
            let generation = generate(
                &loaded.model,
                &ids,
                max_tokens,
                Some(eot),
                &SamplingOptions::default(),
                |_| {},
            )
            .unwrap();
            let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0});
            let reply = server.complete(&body);
            let choice = &reply["choices"][0];
            let mut expected: Vec<Value> = generation
                .tokens
                .iter()
                .map(|&t| json!(token_text(&loaded.tokenizer.token_bytes(t))))
                .collect();
            if generation.stopped_at_eot {
                expected.push(json!("<|endoftext|>"));
            }
            assert_eq!(
                choice["logprobs"]["tokens"].as_array().unwrap(),
                &expected,
                "{kind} {prompt:?}"
            );
            assert_eq!(
                choice["text"],
                json!(loaded.tokenizer.decode(&generation.tokens).unwrap())
            );
            let finish = if generation.stopped_at_eot {
                "stop"
            } else {
                "length"
            };
            assert_eq!(choice["finish_reason"], finish);
            assert_eq!(reply["usage"]["prompt_tokens"], json!(ids.len()));
            assert_eq!(reply["usage"]["completion_tokens"], json!(expected.len()));
        }
    }
}

/// Prompts of several lengths, across the tiny model's block of 8 and up to its context of 64.
fn prompts() -> Vec<Vec<u32>> {
    [1usize, 9, 3, 17, 30, 8, 64]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| ((i * 31 + j * 7) % 250) as u32 + 1)
                .collect()
        })
        .collect()
}

fn close(a: &Value, b: &Value, what: &str) {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => assert!((x - y).abs() < 1e-5, "{what}: {x} vs {y}"),
            _ => assert_eq!(x, y, "{what}"),
        }
    }
}

#[test]
fn batched_requests_give_the_numbers_of_each_alone() {
    let server = Server::start(&trained().run("castle"), &[]);
    let alone: Vec<Value> = prompts()
        .iter()
        .map(|p| scored(&server, p)["token_logprobs"].clone())
        .collect();
    // All in one request, also cut into several forward passes of at most 64 positions.
    let small_batches = Server::start(&trained().run("castle"), &["--max-batch-tokens", "64"]);
    for server in [&server, &small_batches] {
        let body = json!({"prompt": prompts(), "temperature": 0, "max_tokens": 1, "logprobs": 1, "echo": true});
        let reply = server.complete(&body);
        for (i, expected) in alone.iter().enumerate() {
            assert_eq!(reply["choices"][i]["index"], json!(i));
            close(
                &reply["choices"][i]["logprobs"]["token_logprobs"],
                expected,
                &format!("prompt {i}"),
            );
        }
    }
    // 8 concurrent clients, each scoring its own prompt and generating from it, several times.
    let generate = |server: &Server, p: &[u32]| {
        let p = &p[..p.len().min(40)];
        server.complete(&json!({"prompt": p, "max_tokens": 12, "temperature": 0}))["choices"][0]
            ["text"]
            .clone()
    };
    let generated: Vec<Value> = prompts().iter().map(|p| generate(&server, p)).collect();
    thread::scope(|scope| {
        for c in 0..8 {
            let (server, alone, generated) = (&server, &alone, &generated);
            scope.spawn(move || {
                let i = c % prompts().len();
                for _ in 0..3 {
                    let p = &prompts()[i];
                    close(
                        &scored(server, p)["token_logprobs"],
                        &alone[i],
                        &format!("client {c}"),
                    );
                    assert_eq!(generate(server, p), generated[i], "client {c}");
                }
            });
        }
    });
}

/// Streamed generations of several prompt lengths at once, in one request (they share every
/// decoding step) and from concurrent clients (they join and leave one another's steps), each
/// give the text, tokens and log-probabilities of its prompt alone; the echoed prompt's are those
/// of scoring it.
#[test]
fn overlapping_streams_give_the_numbers_of_each_alone() {
    let prompts: Vec<Vec<u32>> = prompts().into_iter().take(5).collect();
    let body = |prompts: &[Vec<u32>]| {
        json!({"prompt": prompts, "max_tokens": 20, "temperature": 0, "logprobs": 1,
               "echo": true})
    };
    for kind in KINDS {
        let server = Server::start(&trained().run(kind), &[]);
        let alone: Vec<Value> = prompts
            .iter()
            .map(|p| server.complete(&body(std::slice::from_ref(p)))["choices"][0].clone())
            .collect();
        for (p, alone) in prompts.iter().zip(&alone) {
            let values = &alone["logprobs"]["token_logprobs"].as_array().unwrap()[..=p.len()];
            close(
                &json!(values),
                &scored(&server, p)["token_logprobs"],
                &format!("{kind}: echoed prompt of {} tokens", p.len()),
            );
        }
        thread::scope(|scope| {
            for c in 0..3 {
                let (server, prompts, alone) = (&server, &prompts, &alone);
                scope.spawn(move || {
                    for round in 0..2 {
                        // Each client's own order, so sequences take different decoder slots.
                        let order: Vec<usize> = (0..prompts.len())
                            .map(|i| (i + c + round) % prompts.len())
                            .collect();
                        let sent: Vec<Vec<u32>> =
                            order.iter().map(|&i| prompts[i].clone()).collect();
                        let mut request = body(&sent);
                        request["stream"] = json!(true);
                        let chunks = events(&mut open_stream(server, &request), true, usize::MAX);
                        let (text, finish) = texts(&chunks, sent.len());
                        let (mut tokens, mut logprobs) =
                            (vec![vec![]; sent.len()], vec![vec![]; sent.len()]);
                        for chunk in chunks.iter().filter(|c| *c != "[DONE]") {
                            let chunk: Value = serde_json::from_str(chunk).unwrap();
                            let choice = &chunk["choices"][0];
                            if let Some(l) = choice["logprobs"].as_object() {
                                let at = choice["index"].as_u64().unwrap() as usize;
                                tokens[at].extend(l["tokens"].as_array().unwrap().clone());
                                logprobs[at]
                                    .extend(l["token_logprobs"].as_array().unwrap().clone());
                            }
                        }
                        for (k, &i) in order.iter().enumerate() {
                            let what = format!("{kind} client {c} round {round} prompt {i}");
                            let expected = &alone[i];
                            assert_eq!(json!(text[k]), expected["text"], "{what}");
                            assert_eq!(finish[k], expected["finish_reason"], "{what}");
                            assert_eq!(json!(tokens[k]), expected["logprobs"]["tokens"], "{what}");
                            close(
                                &json!(logprobs[k]),
                                &expected["logprobs"]["token_logprobs"],
                                &what,
                            );
                        }
                    }
                });
            }
        });
    }
}

#[test]
fn an_export_serves_the_checkpoints_numbers() {
    let loaded = trained().load("baseline");
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    let tokenizer = loaded.checkpoint.dir.join("tokenizer.json");
    let sha = loaded.tokenizer.hash_hex();
    let tokenizer = ExportTokenizer {
        file: &tokenizer,
        sha256: &sha,
        eot_id: loaded.tokenizer.eot_id(),
    };
    castle_model::safetensors::export(&loaded.model, Some(tokenizer), &export).unwrap();
    let from_export = Server::start(&export, &[]);
    let from_checkpoint = Server::start(&trained().run("baseline"), &[]);
    for p in prompts() {
        close(
            &scored(&from_export, &p)["token_logprobs"],
            &scored(&from_checkpoint, &p)["token_logprobs"],
            "export vs checkpoint",
        );
    }
    let (_, models) = from_export.get("/v1/models");
    assert_eq!(models["data"][0]["id"], "export");
    assert_eq!(models["data"][0]["attention"], "baseline");
    assert_eq!(models["data"][0]["step"], Value::Null);
}
