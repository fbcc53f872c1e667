//! One decoder for every way of generating: the server's batched engine gives the same greedy
//! reply as `chatforge generate` for the same chat, and every sampling field's bad value is refused
//! the same way by both (a 400 naming the field, a CLI error naming the flag).

mod common;

use common::server::start;
use common::*;

fn post(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (r.status().as_u16(), v)
}

#[test]
fn server_and_generate_give_the_same_greedy_reply() {
    let model = shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = model.to_str().unwrap();
    let question = "What is the capital of France? Answer in one sentence.";
    let (code, out, err) = run(&[
        "generate",
        "--model",
        m,
        "--chat",
        "--prompt",
        question,
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ]);
    assert_eq!(code, 0, "{err}");
    let cli = out.strip_suffix('\n').unwrap_or(&out);
    let s = start(&model, &[]);
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 24,
        "temperature": 0,
    })
    .to_string();
    let (st, v) = post(&s.base, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    let served = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!served.is_empty());
    assert_eq!(served, cli, "server and generate differ");
    // The same budget: both stopped for the same reason after as many tokens.
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(
        err.contains(&format!("finish: {}", capitalized(finish))),
        "{err}"
    );
    let tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(err.contains(&format!("| {tokens} new tokens")), "{err}");
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Every sampling value that means nothing: the server's field and the CLI's flag.
const BAD: [(&str, &str, &str); 10] = [
    ("temperature", "-0.5", "--temperature"),
    ("temperature", "101", "--temperature"),
    ("top_p", "0", "--top-p"),
    ("top_p", "1.5", "--top-p"),
    ("min_p", "-0.1", "--min-p"),
    ("min_p", "2", "--min-p"),
    ("repetition_penalty", "0", "--repetition-penalty"),
    ("repetition_penalty", "-1", "--repetition-penalty"),
    ("top_k", "-1", "--top-k"),
    ("max_tokens", "0", "--max-tokens"),
];

#[test]
fn every_bad_sampling_value_is_refused_by_server_and_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::server::tiny_chat_model(tmp.path());
    let s = start(&model, &[]);
    for (field, value, flag) in BAD {
        let body = format!(r#"{{"prompt": "Hello", "max_tokens": 4, "{field}": {value}}}"#);
        let (st, v) = post(&s.base, "/v1/completions", &body);
        assert_eq!(st, 400, "{field}={value}: {v}");
        let e = &v["error"];
        let named = e["param"] == field || e["message"].as_str().unwrap().contains(field);
        assert!(named, "{field}={value}: {v}");
        let (code, _, err) = run(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Hi",
            &format!("{flag}={value}"),
        ]);
        assert_ne!(code, 0, "{flag}={value} was accepted");
        assert!(err.contains(flag), "{flag}={value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // NaN is not JSON; the CLI refuses it.
    let (code, _, err) = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--temperature",
        "nan",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--temperature"), "{err}");
}
