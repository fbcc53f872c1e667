//! `chatforge serve` as a user meets it: the OpenAI API over HTTP (with the official openai Python
//! client too), errors, the API key, streaming, several requests at once, and the web page.

mod common;

use common::server::{start, tiny_chat_model};
use std::path::Path;
use std::process::Command;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn post(base: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut req = agent()
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut r = req.send(body).unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn error_code(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    v["error"].clone()
}

#[test]
fn api_answers_and_refuses_like_openai() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(
        &tiny_chat_model(tmp.path()),
        &["--api-key", "sekret", "--max-body-bytes", "2000"],
    );
    let k = Some("sekret");
    let mut r = agent().get(&format!("{}/health", s.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("ok"));
    // Key: missing or wrong is 401, right is 200.
    let mut r = agent()
        .get(&format!("{}/v1/models", s.base))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        error_code(&r.body_mut().read_to_string().unwrap())["code"],
        "invalid_api_key"
    );
    let chat = r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}"#;
    assert_eq!(
        post(&s.base, "/v1/chat/completions", Some("nope"), chat).0,
        401
    );
    let (code, body) = post(&s.base, "/v1/chat/completions", k, chat);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap()
            + v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["total_tokens"].as_u64().unwrap()
    );
    // Bad requests.
    let (code, body) = post(&s.base, "/v1/chat/completions", k, "{\"messages\": [");
    assert_eq!(code, 400);
    assert!(error_code(&body)["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let (code, body) = post(
        &s.base,
        "/v1/chat/completions",
        k,
        &chat.replace("\"tiny\"", "\"gpt-4\""),
    );
    assert_eq!(code, 404);
    assert_eq!(error_code(&body)["code"], "model_not_found");
    let (code, body) = post(
        &s.base,
        "/v1/chat/completions",
        k,
        &chat.replace("\"max_tokens\": 8", "\"max_tokens\": 5000"),
    );
    assert_eq!(code, 400);
    assert_eq!(error_code(&body)["code"], "context_length_exceeded");
    let (code, _) = post(
        &s.base,
        "/v1/chat/completions",
        k,
        &chat.replace("\"temperature\": 0", "\"temperature\": 7"),
    );
    assert_eq!(code, 400);
    let big = format!(r#"{{"model": "tiny", "prompt": "{}"}}"#, "a".repeat(5000));
    let (code, body) = post(&s.base, "/v1/completions", k, &big);
    assert_eq!(code, 413, "{body}");
    error_code(&body);
    // Streaming: chunks, then [DONE].
    let (code, body) = post(
        &s.base,
        "/v1/chat/completions",
        k,
        &chat.replace("\"temperature\": 0", "\"temperature\": 0, \"stream\": true"),
    );
    assert_eq!(code, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]", "{body}");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        "greedy streaming equals greedy"
    );
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[test]
fn many_requests_are_served_together() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tiny_chat_model(tmp.path()), &[]);
    let base = s.base.clone();
    let t0 = std::time::Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"model": "tiny", "prompt": "KING {i}:", "max_tokens": 24, "temperature": 1, "seed": {i}, "stream": {}}}"#, i % 2 == 0);
                post(&base, "/v1/completions", None, &body)
            })
        })
        .collect();
    for h in handles {
        let (code, body) = h.join().unwrap();
        assert_eq!(code, 200, "{body}");
    }
    eprintln!(
        "16 concurrent requests in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    // A client that stops reading does not stall the others.
    let slow = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    use std::io::Write;
    let req = r#"{"model": "tiny", "prompt": "A", "max_tokens": 200, "stream": true}"#;
    write!(&slow, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}", req.len()).unwrap();
    let (code, _) = post(
        &base,
        "/v1/completions",
        None,
        r#"{"model": "tiny", "prompt": "B", "max_tokens": 8}"#,
    );
    assert_eq!(code, 200);
    drop(slow);
}

#[test]
fn the_official_openai_client_works() {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python");
    let python = std::env::var("CHATFORGE_TEST_PYTHON").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let probe = Command::new(&python).args(["-c", "import openai"]).status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "this test needs the openai package: run tests/install-deps.sh (or set CHATFORGE_TEST_PYTHON to a python that has it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tiny_chat_model(tmp.path()), &["--api-key", "k123"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/openai_client.py");
    let out = Command::new(&python)
        .arg(script)
        .args([&format!("{}/v1", s.base), "k123", "tiny"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}
