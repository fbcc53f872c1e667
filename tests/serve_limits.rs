//! `chatforge serve` under load and abuse: a bounded queue answers 503 with Retry-After past its
//! size, slow or idle sockets are closed, huge prompts do not stall other routes, web pages cannot
//! reach a loopback server (Host and Content-Type checks), and SIGTERM ends live streams with a
//! final chunk and [DONE].

mod common;

use common::server::{start, tiny_chat_model};
use common::shared_data;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One raw HTTP/1.1 request (Connection: close); (status, headers and body as text).
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The JSON body of a response that [`http`] read whole.
fn json_body(response: &str) -> serde_json::Value {
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

#[test]
fn a_full_queue_answers_503_quickly_and_admitted_streams_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(
        &tiny_chat_model(tmp.path()),
        &["--max-batch", "4", "--max-queue", "64"],
    );
    let body = r#"{"prompt": "Hello", "max_tokens": 100, "temperature": 0.8, "stream": true}"#;
    let handles: Vec<_> = (0..300)
        .map(|_| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = http(&base, "POST", "/v1/completions", &[JSON], body);
                (r, t0.elapsed())
            })
        })
        .collect();
    let (mut ok, mut busy, mut slowest_busy) = (0, 0, Duration::ZERO);
    for h in handles {
        let ((status, text), took) = h.join().unwrap();
        match status {
            200 => {
                let last = text.lines().rfind(|l| l.starts_with("data: "));
                assert_eq!(last, Some("data: [DONE]"), "{text}");
                ok += 1;
            }
            503 => {
                assert!(
                    text.to_ascii_lowercase().contains("retry-after: 1"),
                    "{text}"
                );
                assert!(text.contains("server_busy"), "{text}");
                slowest_busy = slowest_busy.max(took);
                busy += 1;
            }
            other => panic!("status {other}: {text}"),
        }
    }
    eprintln!("300 streams: {ok} admitted and finished, {busy} answered 503 (slowest 503 after {slowest_busy:?})");
    assert_eq!(ok + busy, 300);
    assert!(busy > 0, "no request was refused");
    assert!(ok >= 68, "fewer admitted ({ok}) than the queue holds");
    assert!(slowest_busy < Duration::from_secs(5), "{slowest_busy:?}");
}

#[test]
fn slow_and_idle_sockets_are_closed_and_huge_prompts_do_not_stall_health() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(
        &tiny_chat_model(tmp.path()),
        &["--header-timeout", "2", "--max-body-bytes", "8000000"],
    );
    let addr = s.base.trim_start_matches("http://").to_string();
    // Slowloris: the head trickles in a byte a second; an idle socket sends nothing.
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&addr).unwrap();
            let t0 = Instant::now();
            c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_secs(1));
                if c.write_all(b"X").is_err() {
                    break;
                }
            }
            let mut buf = [0u8; 256];
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.read(&mut buf);
            t0.elapsed()
        })
    };
    let idle = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&addr).unwrap();
            let t0 = Instant::now();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap_or(0);
            (n, t0.elapsed())
        })
    };
    // Two ~3.9 MB prompts, and /health asked meanwhile.
    let prompt = "All the world's a stage. ".repeat(160_000);
    let big = serde_json::json!({"prompt": prompt, "max_tokens": 4}).to_string();
    let bigs: Vec<_> = (0..2)
        .map(|_| {
            let (base, big) = (s.base.clone(), big.clone());
            std::thread::spawn(move || http(&base, "POST", "/v1/completions", &[JSON], &big))
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        let (status, _) = http(&s.base, "GET", "/health", &[], "");
        assert_eq!(status, 200);
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for b in bigs {
        let (status, text) = b.join().unwrap();
        assert_eq!(status, 400, "{}", &text[..text.len().min(400)]);
        assert!(text.contains("context_length_exceeded"), "{}", &text[..400]);
    }
    eprintln!("/health while two 3.9 MB prompts were handled: slowest {worst:?}");
    assert!(worst < Duration::from_secs(1), "/health took {worst:?}");
    let slow = slow.join().unwrap();
    let (n, idle) = idle.join().unwrap();
    eprintln!("slowloris socket closed after {slow:?}, idle socket after {idle:?}");
    assert!(slow < Duration::from_secs(8), "slow head kept for {slow:?}");
    assert!(
        n == 0 || idle < Duration::from_secs(8),
        "idle socket kept for {idle:?}"
    );
    assert!(
        idle < Duration::from_secs(8),
        "idle socket kept for {idle:?}"
    );
}

#[test]
fn web_pages_cannot_reach_a_loopback_server_and_bad_numbers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tiny_chat_model(tmp.path()), &["--allowed-host", "box.lan"]);
    let body = r#"{"prompt": "Hello", "max_tokens": 4, "temperature": 0}"#;
    let (st, text) = http(
        &s.base,
        "POST",
        "/v1/completions",
        &[("Host", "evil.example"), JSON],
        body,
    );
    assert_eq!(st, 403, "{text}");
    assert!(text.contains("--allowed-host"), "{text}");
    let (st, _) = http(&s.base, "GET", "/", &[("Host", "evil.example:8000")], "");
    assert_eq!(st, 403);
    let (st, _) = http(
        &s.base,
        "POST",
        "/v1/completions",
        &[("Host", "box.lan:8000"), JSON],
        body,
    );
    assert_eq!(st, 200);
    let (st, text) = http(
        &s.base,
        "POST",
        "/v1/completions",
        &[("Content-Type", "text/plain")],
        body,
    );
    assert_eq!(st, 415, "{text}");
    assert!(text.contains("application/json"), "{text}");
    let (st, text) = http(&s.base, "GET", "/v2/nothing", &[], "");
    assert_eq!(st, 404);
    assert!(text.contains("/v1/chat/completions"), "{text}");

    // max_tokens 2^64 - 1 used to pass the context check by overflow.
    let huge = r#"{"prompt": "Hello", "max_tokens": 18446744073709551615}"#;
    let (st, text) = http(&s.base, "POST", "/v1/completions", &[JSON], huge);
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("context_length_exceeded"), "{text}");
    // Sampling values outside their range are a 400 naming the field.
    for (field, value) in [("repetition_penalty", "0"), ("min_p", "2"), ("top_p", "0")] {
        let b = format!(r#"{{"prompt": "Hello", "max_tokens": 4, "{field}": {value}}}"#);
        let (st, text) = http(&s.base, "POST", "/v1/completions", &[JSON], &b);
        assert_eq!(st, 400, "{text}");
        assert!(text.contains(&format!(r#""param":"{field}""#)), "{text}");
    }
    // A temperature too small for f32 is greedy decoding, not the least likely token.
    let reply = |t: &str| {
        let b =
            format!(r#"{{"prompt": "Hello", "max_tokens": 12, "temperature": {t}, "seed": 3}}"#);
        let (st, text) = http(&s.base, "POST", "/v1/completions", &[JSON], &b);
        assert_eq!(st, 200, "{text}");
        json_body(&text)["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reply("1e-300"), reply("0"));
}

#[test]
fn sigterm_ends_live_streams_with_a_final_chunk() {
    let model = shared_data().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut s = start(&model, &["--shutdown-grace", "1"]);
    // A short greedy chat reply ends at <|im_end|>; with ignore_eos it runs to max_tokens.
    let finish = |extra: &str| {
        let b = format!(
            r#"{{"messages": [{{"role": "user", "content": "Say hi."}}], "max_tokens": 60, "temperature": 0{extra}}}"#
        );
        let (st, text) = http(&s.base, "POST", "/v1/chat/completions", &[JSON], &b);
        assert_eq!(st, 200, "{text}");
        let v = json_body(&text);
        let reason = v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string();
        (reason, v["usage"]["completion_tokens"].as_u64().unwrap())
    };
    let (reason, n) = finish("");
    assert_eq!(reason, "stop", "{n} tokens");
    assert!(n < 60, "{n}");
    assert_eq!(
        finish(r#", "ignore_eos": true"#),
        ("length".to_string(), 60)
    );
    // The streams run to SIGTERM, however early the sampled text would end.
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0.9, "ignore_eos": true, "stream": true}"#;
    // Streams that have received two chunks.
    let going = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let addr = s.base.trim_start_matches("http://").to_string();
            let going = going.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                let req = format!("POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                c.write_all(req.as_bytes()).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut lines = Vec::new();
                for line in BufReader::new(c).lines() {
                    match line {
                        Ok(l) => {
                            let chunk = l.starts_with("data: ");
                            lines.push(l);
                            if chunk && lines.iter().filter(|l| l.starts_with("data: ")).count() == 2 {
                                going.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        Err(_) => break,
                    }
                }
                lines
            })
        })
        .collect();
    // Let every stream get going (the machine may be busy).
    let deadline = Instant::now() + Duration::from_secs(120);
    while going.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the streams never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let code = s.terminate();
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "serve exits cleanly after SIGTERM");
    for h in streams {
        let lines = h.join().unwrap();
        let data: Vec<&String> = lines.iter().filter(|l| l.starts_with("data: ")).collect();
        assert!(data.len() > 2, "the stream had started: {lines:?}");
        assert_eq!(data.last().unwrap().as_str(), "data: [DONE]", "{lines:?}");
        let before = data[data.len() - 2];
        assert!(
            before.contains("shutting down"),
            "final chunk says why: {before}"
        );
    }
    eprintln!("SIGTERM to exit with 3 live streams: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
