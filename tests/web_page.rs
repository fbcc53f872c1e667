//! The web chat page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by .ci/run) loads `/`, sends a message and sees a streamed reply.
//! Driven over the W3C WebDriver protocol with plain HTTP.

mod common;

use common::server::{start, tiny_chat_model};
use serde_json::{json, Value};
use std::process::{Command, Stdio};

fn wd(agent: &ureq::Agent, method: &str, url: &str, body: Value) -> Value {
    let mut r = match method {
        "GET" => agent.get(url).call(),
        "DELETE" => agent.delete(url).call(),
        _ => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string()),
    }
    .unwrap();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["value"].clone()
}

#[test]
fn the_web_page_streams_a_reply_in_chromium() {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let driver = driver
        .expect("this test needs Debian's chromium and chromium-driver: run tests/install-deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tiny_chat_model(tmp.path()), &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut chromedriver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wd_base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.get(&format!("{wd_base}/status")).call().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let profile = tmp.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 format!("--user-data-dir={}", profile.display())]}}}});
    let session = wd(&agent, "POST", &format!("{wd_base}/session"), caps);
    let sid = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_string();
    let s = format!("{wd_base}/session/{sid}");
    wd(
        &agent,
        "POST",
        &format!("{s}/url"),
        json!({"url": server.base}),
    );
    let find = |css: &str| -> String {
        let e = wd(
            &agent,
            "POST",
            &format!("{s}/element"),
            json!({"using": "css selector", "value": css}),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    };
    let input = find("#input");
    wd(
        &agent,
        "POST",
        &format!("{s}/element/{input}/value"),
        json!({"text": "Hello there"}),
    );
    let send = find("#send");
    wd(
        &agent,
        "POST",
        &format!("{s}/element/{send}/click"),
        json!({}),
    );
    // Wait until the reply bubble has finished streaming.
    let script = "const m = document.querySelectorAll('.msg.assistant, .msg.error'); const last = m[m.length - 1]; \
                  return last ? [last.dataset.state || '', last.querySelector('.text').textContent, document.querySelectorAll('.msg.user').length] : null;";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reply = loop {
        let v = wd(
            &agent,
            "POST",
            &format!("{s}/execute/sync"),
            json!({"script": script, "args": []}),
        );
        if v[0] == "done" {
            break v;
        }
        if std::time::Instant::now() > deadline {
            let page = wd(
                &agent,
                "POST",
                &format!("{s}/execute/sync"),
                json!({"script": "return document.body.innerText", "args": []}),
            );
            panic!("no finished reply: {v}; the page shows: {page}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let model = wd(
        &agent,
        "POST",
        &format!("{s}/execute/sync"),
        json!({"script": "return document.getElementById('model').textContent", "args": []}),
    );
    wd(&agent, "DELETE", &s, json!({}));
    let _ = chromedriver.kill();
    let _ = chromedriver.wait();
    assert_eq!(reply[2], 1, "the user's message is shown");
    assert!(!reply[1].as_str().unwrap().starts_with("Error"), "{reply}");
    assert!(
        !reply[1].as_str().unwrap().is_empty(),
        "the reply streamed into the page: {reply}"
    );
    assert_eq!(model, "tiny");
}
