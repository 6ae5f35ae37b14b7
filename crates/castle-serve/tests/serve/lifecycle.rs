//! Streaming, stop strings, the API key, the body limit, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};

use serde_json::{json, Value};

use crate::{trained, Server};

/// The `data:` payloads of a server-sent event stream, as read so far.
pub fn events(reader: &mut impl BufRead, until_done: bool, limit: usize) -> Vec<String> {
    let mut out = vec![];
    let mut line = String::new();
    while out.len() < limit {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            out.push(data.to_string());
            if until_done && data == "[DONE]" {
                break;
            }
        }
    }
    out
}

pub fn open_stream(server: &Server, body: &Value) -> impl BufRead {
    let response = ureq::post(&format!("{}/v1/completions", server.url))
        .send_json(body.clone())
        .unwrap();
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    BufReader::new(response.into_reader())
}

/// Each choice's text and finish reason from a stream's chunks.
pub fn texts(chunks: &[String], n: usize) -> (Vec<String>, Vec<Value>) {
    let (mut text, mut finish) = (vec![String::new(); n], vec![Value::Null; n]);
    for chunk in chunks.iter().filter(|c| *c != "[DONE]") {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            text[i].push_str(choice["text"].as_str().unwrap());
            if !choice["finish_reason"].is_null() {
                finish[i] = choice["finish_reason"].clone();
            }
        }
    }
    (text, finish)
}

#[test]
fn streams_carry_the_same_text_and_end_with_done() {
    let server = Server::start(&trained().run("castle-swl"), &[]);
    for extra in [
        json!({}),
        json!({"stop": [" the", "\n"]}),
        json!({"echo": true, "logprobs": 2}),
    ] {
        let mut body =
            json!({"prompt": ["the union", "we shall"], "max_tokens": 20, "temperature": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let whole = server.complete(&body);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let chunks = events(&mut open_stream(&server, &body), true, usize::MAX);
        assert_eq!(chunks.last().unwrap(), "[DONE]", "{body}");
        let usage: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
        assert_eq!(usage["usage"], whole["usage"]);
        let (text, finish) = texts(&chunks, 2);
        for i in 0..2 {
            assert_eq!(json!(text[i]), whole["choices"][i]["text"], "{body}");
            assert_eq!(finish[i], whole["choices"][i]["finish_reason"], "{body}");
        }
        if body.get("stop").is_some() {
            assert!(
                text.iter()
                    .all(|t| !t.contains(" the") && !t.contains('\n')),
                "{text:?}"
            );
        }
    }
}

#[test]
fn sigterm_finishes_the_requests_in_flight() {
    let server = Server::start(&trained().run("castle"), &[]);
    let prompts: Vec<String> = (0..8).map(|i| format!("the nation {i}")).collect();
    let body = json!({"prompt": prompts, "max_tokens": 50, "temperature": 0, "stream": true});
    let mut stream = open_stream(&server, &body);
    let before = events(&mut stream, false, 3);
    server.terminate();
    let after = events(&mut stream, true, usize::MAX);
    assert!(
        after.len() > 10,
        "still streaming when SIGTERM arrived: {} chunks after it",
        after.len()
    );
    assert_eq!(after.last().unwrap(), "[DONE]");
    let all: Vec<String> = before.into_iter().chain(after).collect();
    let (_, finish) = texts(&all, 8);
    assert!(
        finish.iter().all(|f| !f.is_null()),
        "every choice finished: {finish:?}"
    );
    let mut child = server;
    let status = child.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_api_key_guards_everything_but_health_and_bodies_are_limited() {
    let server = Server::start(
        &trained().run("baseline"),
        &["--api-key", "sesame", "--max-body-bytes", "2000"],
    );
    let url = |p: &str| format!("{}{p}", server.url);
    assert_eq!(server.get("/health").0, 200);
    for path in ["/v1/models", "/tokenizer_info"] {
        let (status, reply) = server.get(path);
        assert_eq!(
            (status, reply["error"]["type"].clone()),
            (401, json!("authentication_error")),
            "{path}"
        );
        let wrong = crate::reply(
            ureq::get(&url(path))
                .set("Authorization", "Bearer open")
                .call(),
        );
        assert_eq!(wrong.0, 401, "{path}");
        let right = crate::reply(
            ureq::get(&url(path))
                .set("Authorization", "Bearer sesame")
                .call(),
        );
        assert_eq!(right.0, 200, "{path}");
    }
    let (status, _) = server.post("/v1/completions", &json!({"prompt": "a", "max_tokens": 2}));
    assert_eq!(status, 401);
    let ok = crate::reply(
        ureq::post(&url("/v1/completions"))
            .set("Authorization", "Bearer sesame")
            .send_json(json!({"prompt": "a", "max_tokens": 2})),
    );
    assert_eq!(ok.0, 200, "{}", ok.1);
    let big = json!({"prompt": "a ".repeat(1500), "max_tokens": 2});
    let (status, reply) = crate::reply(
        ureq::post(&url("/v1/completions"))
            .set("Authorization", "Bearer sesame")
            .send_json(big),
    );
    assert_eq!(status, 413, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-body-bytes"));
}

#[test]
fn slow_and_vanished_clients_do_not_stall_the_queue() {
    use std::io::Write as _;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let server = Server::start(&trained().run("castle"), &[]);
    let address = server.url.strip_prefix("http://").unwrap();
    let body = json!({"prompt": vec!["the people"; 8], "max_tokens": 50, "temperature": 0,
                      "stream": true})
    .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // One client that never reads its stream, one that goes away after sending.
    let mut slow = TcpStream::connect(address).unwrap();
    slow.write_all(request.as_bytes()).unwrap();
    let mut gone = TcpStream::connect(address).unwrap();
    gone.write_all(request.as_bytes()).unwrap();
    drop(gone);
    let start = Instant::now();
    for _ in 0..5 {
        let reply = server.complete(&json!({"prompt": "we", "max_tokens": 3, "temperature": 0}));
        assert!(!reply["choices"][0]["finish_reason"].is_null());
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    drop(slow);
    assert_eq!(server.get("/health").0, 200);
}
