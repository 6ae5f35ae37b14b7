//! Every bad request gets its status and names its field; the tokenizer endpoints speak vLLM's
//! shapes as lm-evaluation-harness's remote tokenizer reads them.

use serde_json::{json, Value};

use crate::{trained, Server};

#[test]
fn bad_requests_get_a_4xx_naming_the_field() {
    let server = Server::start(&trained().run("castle"), &[]);
    let long: Vec<u32> = vec![5; 60];
    let cases: Vec<(Value, &str)> = vec![
        (json!({"max_tokens": 3}), "prompt"),
        (json!({"prompt": 7}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [[1, 2], []]}), "prompt[1]"),
        (json!({"prompt": ["a", 3]}), "prompt[1]"),
        (json!({"prompt": [1, 300]}), "prompt[1]"),
        (json!({"prompt": [[1, 2], [4, -1]]}), "prompt[1][1]"),
        (json!({"prompt": "a", "max_tokens": -1}), "max_tokens"),
        (json!({"prompt": "a", "max_tokens": "ten"}), "max_tokens"),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "a", "temperature": -0.5}), "temperature"),
        (json!({"prompt": "a", "top_p": 0}), "top_p"),
        (json!({"prompt": "a", "top_k": -3}), "top_k"),
        (json!({"prompt": "a", "logprobs": 21}), "logprobs"),
        (json!({"prompt": "a", "stop": ["x", ""]}), "stop[1]"),
        (json!({"prompt": "a", "stop": 5}), "stop"),
        (json!({"prompt": "a", "echo": "yes"}), "echo"),
        (json!({"prompt": "a", "n": 2}), "n"),
        (json!({"prompt": "a", "best_of": 3}), "best_of"),
        (json!({"prompt": "a", "suffix": "end"}), "suffix"),
        (
            json!({"prompt": "a", "presence_penalty": 0.5}),
            "presence_penalty",
        ),
        (
            json!({"prompt": "a", "logit_bias": {"5": 1.0}}),
            "logit_bias",
        ),
        (json!({"prompt": "a", "frobnicate": true}), "frobnicate"),
        (json!({"prompt": long, "max_tokens": 10}), "prompt"),
    ];
    for (body, param) in cases {
        let (status, reply) = server.post("/v1/completions", &body);
        assert_eq!(status, 400, "{body} -> {reply}");
        let error = &reply["error"];
        assert_eq!(error["param"], json!(param), "{body} -> {reply}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // The context error names both numbers.
    let (_, reply) = server.post(
        "/v1/completions",
        &json!({"prompt": long, "max_tokens": 10}),
    );
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("69") && message.contains("64"),
        "{message}"
    );
    // Accepted at their neutral values.
    let fine = json!({"prompt": "a", "max_tokens": 2, "n": 1, "best_of": 1, "suffix": null,
                      "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                      "user": "x", "model": "anything", "top_k": -1});
    assert_eq!(server.complete(&fine)["model"], "anything");
    // A body that is not JSON, or not an object.
    for raw in ["{\"prompt\": ", "[1, 2]"] {
        let result = ureq::post(&format!("{}/v1/completions", server.url))
            .set("Content-Type", "application/json")
            .send_string(raw);
        let (status, reply) = crate::reply(result);
        assert_eq!(status, 400, "{raw}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("JSON"));
    }
    let (status, reply) = server.get("/v1/nothing");
    assert_eq!(
        (status, reply["error"]["type"].clone()),
        (404, json!("not_found_error"))
    );
}

#[test]
fn tokenizer_endpoints_speak_vllms_shapes() {
    let loaded = trained().load("baseline");
    let server = Server::start(&trained().run("baseline"), &[]);
    let (status, info) = server.get("/tokenizer_info");
    assert_eq!(status, 200);
    assert_eq!(info["eos_token"], "<|endoftext|>");
    assert_eq!(info["model_max_length"], 64);
    // lm-eval finds the end-of-text id by tokenizing its text without special tokens.
    let (_, eos) = server.post(
        "/tokenize",
        &json!({"prompt": "<|endoftext|>", "add_special_tokens": false}),
    );
    assert_eq!(eos["tokens"], json!([loaded.tokenizer.eot_id()]));
    let text = "the union of the people";
    let (_, tokens) = server.post(
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": true}),
    );
    assert_eq!(
        tokens["tokens"],
        json!(loaded.tokenizer.encode(text).unwrap())
    );
    assert_eq!(
        tokens["count"],
        json!(tokens["tokens"].as_array().unwrap().len())
    );
    assert_eq!(tokens["max_model_len"], 64);
    let (_, back) = server.post("/detokenize", &json!({"tokens": tokens["tokens"]}));
    assert_eq!(back["prompt"], text);
    for (path, body, param) in [
        ("/tokenize", json!({"text": "a"}), "text"),
        ("/tokenize", json!({}), "prompt"),
        ("/tokenize", json!({"prompt": 5}), "prompt"),
        ("/detokenize", json!({"tokens": [1, 9999]}), "tokens[1]"),
        ("/detokenize", json!({"tokens": "abc"}), "tokens"),
    ] {
        let (status, reply) = server.post(path, &body);
        assert_eq!(
            (status, reply["error"]["param"].clone()),
            (400, json!(param)),
            "{path} {body}"
        );
    }
}
