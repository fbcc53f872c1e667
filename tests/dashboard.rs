//! The live dashboard: `chatforge dashboard RUN...` streams each run's metrics records as they
//! are written (server-sent events), answers only under its own host name, refuses what is not a
//! run; and in headless Chromium, the page's loss curve gains points while `pretrain
//! --dashboard` trains.

mod common;

use common::browser::Browser;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Starts chatforge with `args` and returns it with the dashboard URL it printed (the caller
/// kills and waits for it).
#[allow(clippy::zombie_processes)]
fn start(args: &[&str]) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut child = chatforge_command()
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no dashboard URL in:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(at) = line.find("http://127.0.0.1:") {
            let url = line[at..].split_whitespace().next().unwrap().to_string();
            return (child, url, err);
        }
    }
}

fn record(kind: &str, step: u64) -> String {
    match kind {
        "train" => format!(
            "{{\"kind\":\"train\",\"step\":{step},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_sec\":1000.0,\"mfu\":0.1,\"tokens\":{},\"elapsed\":{step}.0,\"total_steps\":10}}\n",
            5.0 - step as f64 * 0.1,
            step * 512
        ),
        _ => format!("{{\"kind\":\"val\",\"step\":{step},\"val_loss\":4.5,\"val_bpb\":1.2}}\n"),
    }
}

#[test]
fn the_dashboard_streams_records_as_they_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("run-a"), tmp.path().join("run-b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(
            d.join("metrics.jsonl"),
            record("train", 1) + &record("val", 1),
        )
        .unwrap();
    }
    let (mut child, url, _err) = start(&[
        "dashboard",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--port",
        "0",
    ]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let page = agent
        .get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("<title>chatforge dashboard</title>"));
    let runs: serde_json::Value = serde_json::from_str(
        &agent
            .get(&format!("{url}runs"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(runs[0]["name"], "run-a");
    assert_eq!(runs[1]["name"], "run-b");

    // Both runs' records, then a record appended to run-b arrives on the open stream.
    let mut resp = agent.get(&format!("{url}events")).call().unwrap();
    let mut lines = BufReader::new(resp.body_mut().as_reader()).lines();
    let mut event = || loop {
        let l = lines.next().expect("the stream goes on").unwrap();
        if let Some(data) = l.strip_prefix("data: ") {
            return serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
    };
    let (e0, e1) = (event(), event());
    assert_eq!((e0["run"].as_u64(), e1["run"].as_u64()), (Some(0), Some(1)));
    assert_eq!(e0["records"].as_array().unwrap().len(), 2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("metrics.jsonl"))
        .unwrap();
    f.write_all(record("train", 2).as_bytes()).unwrap();
    let e2 = event();
    assert_eq!(e2["run"], 1);
    assert_eq!(e2["records"][0]["step"], 2);

    // Another site's page that resolves its name to 127.0.0.1 gets nothing.
    let r = agent
        .get(&url)
        .header("host", "evil.example")
        .call()
        .unwrap();
    assert_eq!(r.status(), 403);
    let _ = child.kill();
    let _ = child.wait();

    // What is not a run directory is refused, and so is a port in use.
    let (code, _, err) = run(&["dashboard", tmp.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a chatforge run directory"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(&["dashboard", a.to_str().unwrap(), "--port", &port]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the dashboard cannot listen on 127.0.0.1:"),
        "{err}"
    );
}

fn loss_points(b: &Browser) -> u64 {
    b.eval("return Number(document.getElementById('chart-loss').dataset.points || 0)")
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn the_page_draws_the_curve_while_a_run_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shakespeare_shards(200_000);
    let out = tmp.path().join("live");
    let set = [
        format!("data.dir={}", data.display()),
        "model.n_layer=2".into(),
        "model.n_embd=64".into(),
        "model.n_head=4".into(),
        "train.context=64".into(),
        "train.batch_size=4".into(),
        "train.max_steps=100000".into(),
        "eval.every=20".into(),
        "eval.tokens=2048".into(),
        "checkpoint.every=100000".into(),
    ];
    let mut args = vec![
        "pretrain",
        "--out",
        out.to_str().unwrap(),
        "--dashboard",
        "0",
    ];
    for s in &set {
        args.extend(["--set", s.as_str()]);
    }
    let (mut child, url, mut err) = start(&args);
    // Keep the pipe drained so the run never blocks on its progress lines.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    let browser = Browser::start(&tmp.path().join("profile"));
    browser.open(&url);
    let wait_for = |what: &str, ok: &dyn Fn(u64) -> bool| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = loss_points(&browser);
            if ok(n) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the loss chart has {n} points"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = wait_for("the first steps", &|n| n >= 5);
    let later = wait_for("more steps", &|n| n >= first + 20);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run is still training"
    );
    let row = browser.eval("return document.querySelector('#stats tbody tr').innerText");
    let row = row.as_str().unwrap();
    assert!(row.starts_with("live"), "{row}");
    assert!(row.contains("/ 100000"), "step of total: {row}");
    if let Ok(p) = std::env::var("CHATFORGE_DASHBOARD_SCREENSHOT") {
        std::fs::write(Path::new(&p), browser.screenshot()).unwrap();
    }
    drop(browser);
    let _ = child.kill();
    let _ = child.wait();
    assert!(later > first);
}
