//! A local server shaped like the Hugging Face Hub, for the download code to run against
//! (`HF_ENDPOINT=http://127.0.0.1:PORT`): the repository API (`/api/models/ID/revision/REV`), file
//! downloads (`/ID/resolve/REV/PATH`, ranges, etags, `x-repo-commit`), gated repositories, a
//! connection cut once in the middle of a file, and a file that never arrives.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct HubRepo {
    pub files: BTreeMap<String, Vec<u8>>,
    /// Answers 401 without `Authorization: Bearer TOKEN`, 403 with another token.
    pub token: Option<String>,
    /// The first download of this file stops after half of it (the connection is closed).
    pub cut_once: Option<String>,
    /// This file's download sends its headers and then nothing.
    pub stall: Option<String>,
}

/// The server; its log holds one line per request: `PATH RANGE AUTHORIZATION`.
pub struct HubServer {
    pub endpoint: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl HubServer {
    /// Serves `repos` (ids `ORG/NAME`; datasets as `datasets/ORG/NAME`) on a free port.
    pub fn start(repos: BTreeMap<String, HubRepo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (state, l) = (Arc::new(Mutex::new(repos)), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (state, log) = (state.clone(), l.clone());
                std::thread::spawn(move || serve(conn, &state, &log));
            }
        });
        HubServer { endpoint, log }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, repos: &Mutex<BTreeMap<String, HubRepo>>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    log.lock().unwrap().push(format!("{path} {range} {auth}"));
    let reply = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
    };
    let Some((repo_id, rest, api)) = route(&path) else {
        return reply(&mut conn, "404 Not Found", "", b"{\"error\":\"not found\"}");
    };
    let mut repos = repos.lock().unwrap();
    // As the Hub does: 401 for a repository that does not exist (as for a private one).
    let Some(repo) = repos.get_mut(&repo_id) else {
        let code = "X-Error-Code: RepoNotFound\r\n";
        return reply(&mut conn, "401 Unauthorized", code, b"{}");
    };
    if let Some(t) = &repo.token {
        let gated = "X-Error-Code: GatedRepo\r\n";
        match auth.strip_prefix("Bearer ") {
            None => return reply(&mut conn, "401 Unauthorized", gated, b"{}"),
            Some(given) if given != t => return reply(&mut conn, "403 Forbidden", gated, b"{}"),
            Some(_) => {}
        }
    }
    if api {
        let siblings: Vec<_> = repo
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return reply(
            &mut conn,
            "200 OK",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        );
    }
    let Some(data) = repo.files.get(&rest).cloned() else {
        return reply(
            &mut conn,
            "404 Not Found",
            "X-Error-Code: EntryNotFound\r\n",
            b"{}",
        );
    };
    let etag = format!("{:x}", Sha256::digest(&data));
    let meta = format!("ETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n");
    let start = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some(("0", "0")) => {
            let extra = format!("{meta}Content-Range: bytes 0-0/{}\r\n", data.len());
            return reply(
                &mut conn,
                "206 Partial Content",
                &extra,
                &data[..1.min(data.len())],
            );
        }
        Some((a, _)) => a.parse::<usize>().unwrap_or(0).min(data.len()),
        None => 0,
    };
    let body = &data[start..];
    let extra = format!(
        "{meta}Content-Range: bytes {start}-{}/{}\r\n",
        data.len().saturating_sub(1),
        data.len()
    );
    if repo.stall.as_deref() == Some(rest.as_str()) {
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        drop(repos);
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    if repo.cut_once.as_deref() == Some(rest.as_str()) {
        repo.cut_once = None;
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body[..body.len() / 2]);
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return;
    }
    reply(&mut conn, "206 Partial Content", &extra, body);
}

/// (repository id, file path, whether it is the repository API) of a request path.
fn route(path: &str) -> Option<(String, String, bool)> {
    if let Some(api) = path.strip_prefix("/api/") {
        let (kind, rest) = api.split_once('/')?;
        let (id, _rev) = rest.split_once("/revision/")?;
        let id = match kind {
            "models" => id.to_string(),
            "datasets" => format!("datasets/{id}"),
            _ => return None,
        };
        return Some((id, String::new(), true));
    }
    let p = path.strip_prefix('/')?;
    let (id, rest) = p.split_once("/resolve/")?;
    let (_rev, file) = rest.split_once('/')?;
    Some((id.to_string(), file.to_string(), false))
}
