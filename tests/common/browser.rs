//! Headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! tests/install-deps.sh), driven over the W3C WebDriver protocol with plain HTTP.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    agent: ureq::Agent,
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
}

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

impl Browser {
    /// Starts chromedriver and a headless Chromium session with its profile in `profile`.
    pub fn start(profile: &Path) -> Browser {
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "this test needs Debian's chromium and chromium-driver: run tests/install-deps.sh",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())]}}}});
        let s = wd(&agent, "POST", &format!("{base}/session"), caps);
        let id = s["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {s}"))
            .to_string();
        Browser {
            agent,
            driver,
            session: format!("{base}/session/{id}"),
        }
    }

    pub fn open(&self, url: &str) {
        wd(
            &self.agent,
            "POST",
            &format!("{}/url", self.session),
            json!({ "url": url }),
        );
    }

    /// The element id of the first match of `css`.
    pub fn find(&self, css: &str) -> String {
        let e = wd(
            &self.agent,
            "POST",
            &format!("{}/element", self.session),
            json!({"using": "css selector", "value": css}),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    }

    pub fn type_into(&self, element: &str, text: &str) {
        let url = format!("{}/element/{element}/value", self.session);
        wd(&self.agent, "POST", &url, json!({ "text": text }));
    }

    pub fn click(&self, element: &str) {
        let url = format!("{}/element/{element}/click", self.session);
        wd(&self.agent, "POST", &url, json!({}));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        let url = format!("{}/execute/sync", self.session);
        wd(
            &self.agent,
            "POST",
            &url,
            json!({ "script": script, "args": [] }),
        )
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = wd(
            &self.agent,
            "GET",
            &format!("{}/screenshot", self.session),
            json!({}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        wd(&self.agent, "DELETE", &self.session, json!({}));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
