//! Starting `chatforge serve` for tests.

use super::{chatforge_command, fixtures};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The tiny GPT-2 fixture with a plain-text chat template: a chat model for protocol tests.
pub fn tiny_chat_model(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-chat");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(fixtures().join("gpt2-tiny-eval"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template}).to_string(),
    )
    .unwrap();
    out
}

pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `chatforge serve` on a free port and waits until it listens.
pub fn start(model: &Path, extra: &[&str]) -> Server {
    let mut child = chatforge_command()
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--model-name",
            "tiny",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.split("on http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, base }
}

impl Server {
    /// Sends SIGTERM and waits for the process to exit; its exit code (None: killed by a signal).
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().code()
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}
