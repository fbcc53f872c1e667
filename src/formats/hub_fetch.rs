//! The Hub's files through the hf-hub crate: the environment it is configured from, a repository's
//! file list, one file into the cache (resumed from its partial download, retried when the
//! connection is cut, given up when it stalls), its progress, and errors that say what to do.

use super::hub_ref::HubRef;
use crate::error::{Error, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The Hub as the environment configures it.
pub(super) struct Hub {
    cache: Cache,
    endpoint: String,
    token: Option<String>,
    pub(super) offline: bool,
    /// No byte for this long ends a download (`HF_HUB_DOWNLOAD_TIMEOUT`, seconds).
    stall: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The token `huggingface-cli login` saved: `HF_TOKEN_PATH`, else `HF_HOME/token`, else
/// `~/.cache/huggingface/token`.
fn saved_token() -> Option<String> {
    let path = match (env("HF_TOKEN_PATH"), env("HF_HOME"), env("HOME")) {
        (Some(p), _, _) => PathBuf::from(p),
        (None, Some(h), _) => PathBuf::from(h).join("token"),
        (None, None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/token"),
        (None, None, None) => return None,
    };
    let t = std::fs::read_to_string(path).ok()?;
    Some(t.trim().to_string()).filter(|t| !t.is_empty())
}

/// A full commit hash (what a snapshot directory is named by).
pub(super) fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Hub {
    pub(super) fn from_env() -> Result<Hub> {
        let cache = match (env("HF_HUB_CACHE"), env("HF_HOME")) {
            (Some(c), _) => Cache::new(c.into()),
            (None, Some(h)) => Cache::new(PathBuf::from(h).join("hub")),
            (None, None) => {
                let home = env("HOME").ok_or_else(|| {
                    Error::Hub("no HOME to put the cache in: set HF_HOME (or HF_HUB_CACHE)".into())
                })?;
                Cache::new(PathBuf::from(home).join(".cache/huggingface/hub"))
            }
        };
        let stall = match env("HF_HUB_DOWNLOAD_TIMEOUT") {
            None => 10.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite())
                .ok_or_else(|| {
                    Error::Hub(format!(
                        "HF_HUB_DOWNLOAD_TIMEOUT='{v}': expected seconds, e.g. 30"
                    ))
                })?,
        };
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Ok(Hub {
            token: env("HF_TOKEN").or_else(saved_token),
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache,
            offline,
            stall: Duration::from_secs_f64(stall.min(1e6)),
        })
    }

    fn repo(r: &HubRef) -> Repo {
        Repo::with_revision(r.repo.clone(), r.repo_type(), r.revision.clone())
    }

    /// The cached copy of one file of `r` at its revision, if the cache has it.
    pub(super) fn cached(&self, r: &HubRef, file: &str) -> Option<PathBuf> {
        // A revision that is a commit may have no ref (a cache the Python tools filled).
        if is_commit(&r.revision) {
            let p = self.snapshot(r, &r.revision).join(file);
            return p.exists().then_some(p);
        }
        self.cache.repo(Self::repo(r)).get(file)
    }

    /// The cache's directory of `r` at `commit`.
    fn snapshot(&self, r: &HubRef, commit: &str) -> PathBuf {
        let folder = Self::repo(r).folder_name();
        self.cache
            .path()
            .join(folder)
            .join("snapshots")
            .join(commit)
    }

    /// One file: the cached copy, else downloaded (offline: the error saying it is not cached).
    pub(super) fn file(&self, r: &HubRef, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(r, file) {
            return Ok(p);
        }
        if self.offline {
            return Err(self.not_cached(r));
        }
        self.fetcher(r)?.get(file)
    }

    pub(super) fn not_cached(&self, r: &HubRef) -> Error {
        Error::Hub(format!(
            "HF_HUB_OFFLINE is set and the cache ({}) does not hold {} whole. {}",
            self.cache
                .path()
                .join(Self::repo(r).folder_name())
                .display(),
            r.display(),
            self.what_to_download(r)
        ))
    }

    /// A 401, 403 or 404 as what it means. The Hub answers 401 for a repository that does not
    /// exist as for a private one (it does not say which exists); `X-Error-Code` tells a gated
    /// repository and a missing file apart.
    fn refusal(&self, r: &HubRef, file: Option<&str>, code: u16, kind: &str) -> String {
        let page = format!(
            "{}/{}{}",
            self.endpoint,
            if r.dataset { "datasets/" } else { "" },
            r.repo
        );
        let name = r.display();
        match (kind, file, &self.token) {
            ("GatedRepo", _, None) => format!(
                "{name}: the repository is gated: accept its terms at {page}, then set HF_TOKEN (or run `huggingface-cli login`)"
            ),
            ("GatedRepo", _, Some(_)) => format!(
                "{name}: the token (HF_TOKEN or the saved one) has no access to this gated repository: accept its terms at {page} with the token's account"
            ),
            ("EntryNotFound", Some(f), _) => format!(
                "{name}: the repository has no file '{f}' at revision '{}'",
                r.revision
            ),
            ("RevisionNotFound", _, _) => format!("{name}: the repository has no revision '{}'", r.revision),
            (_, _, None) => format!(
                "'{name}' is not a local path, and {} has no public repository of that name (HTTP {code}): check the name; if it is private or gated, set HF_TOKEN (or run `huggingface-cli login`)",
                self.endpoint
            ),
            (_, _, Some(_)) => format!(
                "'{name}' is not a local path, and {} refused it with the token given (HTTP {code}): check the name, and that the token's account can read {page}",
                self.endpoint
            ),
        }
    }

    /// What to fetch, from where, and where to put it, when chatforge cannot.
    fn what_to_download(&self, r: &HubRef) -> String {
        let page = match r.dataset {
            true => format!("{}/datasets/{}", self.endpoint, r.repo),
            false => format!("{}/{}", self.endpoint, r.repo),
        };
        let files = match &r.file {
            Some(f) => f.clone(),
            None => "config.json, the tokenizer files and the *.safetensors".into(),
        };
        let kind = if r.dataset {
            " --repo-type dataset"
        } else {
            ""
        };
        format!(
            "Where the Hub can be reached, fill this cache ({}) with `huggingface-cli download {}{kind} --revision {}` (the same HF_HOME), or download {files} from {page} into a directory and pass that path instead",
            self.cache.path().display(),
            r.repo,
            r.revision
        )
    }

    /// A client for downloading files of `r`.
    pub(super) fn fetcher<'h>(&'h self, r: &'h HubRef) -> Result<Fetcher<'h>> {
        let api = ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(5)
            .with_user_agent("chatforge", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| self.error(r, None, e))?;
        Ok(Fetcher {
            hub: self,
            r,
            api,
            commit: None,
        })
    }

    /// An hf-hub error as what happened and what to do about it.
    fn error(&self, r: &HubRef, file: Option<&str>, e: ApiError) -> Error {
        let what = match file {
            Some(f) => format!("{}: {f}", r.display()),
            None => r.display(),
        };
        let msg = match e {
            ApiError::TooManyRetries(inner) => return self.error(r, file, *inner),
            ApiError::RequestError(e) => match *e {
                ureq2::Error::Status(code @ (401 | 403 | 404), resp) => {
                    self.refusal(r, file, code, resp.header("X-Error-Code").unwrap_or(""))
                }
                ureq2::Error::Status(code, _) => format!("{what}: {} answered HTTP {code}; try again later", self.endpoint),
                ureq2::Error::Transport(t) => format!(
                    "{what}: cannot reach {} ({t}). {}",
                    self.endpoint,
                    self.what_to_download(r)
                ),
            },
            ApiError::MissingHeader(h) => format!(
                "{what}: {}'s reply has no {h} header: is HF_ENDPOINT a Hugging Face Hub?",
                self.endpoint
            ),
            ApiError::LockAcquisition(lock) => format!(
                "{what}: another process is downloading it (lock {}); wait for it, or delete the lock if none is",
                lock.display()
            ),
            ApiError::InvalidResume => format!(
                "{what}: the partial download in the cache ({}) is longer than the file; delete its .part file and run again",
                self.cache.path().display()
            ),
            other => format!("{what}: {other}"),
        };
        Error::Hub(msg)
    }
}

/// Downloads files of one repository.
pub(super) struct Fetcher<'h> {
    hub: &'h Hub,
    r: &'h HubRef,
    api: Api,
    /// The commit the listing described: every file is fetched at it.
    commit: Option<String>,
}

impl Fetcher<'_> {
    /// Every file of the repository at its revision.
    /// Every file of the repository at its revision; the files fetched next are the ones of the
    /// commit this lists.
    pub(super) fn list(&mut self) -> Result<Vec<String>> {
        let repo = self.api.repo(Hub::repo(self.r));
        let info = self.watched(None, Arc::default(), move || repo.info())?;
        if !is_commit(&info.sha) {
            return Err(Error::Hub(format!(
                "{}: {}'s listing names no commit ('{}'): is HF_ENDPOINT a Hugging Face Hub?",
                self.r.display(),
                self.hub.endpoint,
                info.sha
            )));
        }
        self.commit = Some(info.sha);
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// Points the revision at the listed commit in the cache (once its files are all there).
    pub(super) fn record_revision(&self) -> Result<()> {
        let Some(c) = &self.commit else {
            return Ok(());
        };
        self.hub
            .cache
            .repo(Hub::repo(self.r))
            .create_ref(c)
            .map_err(|e| Error::io(self.hub.cache.path(), e))
    }

    /// The repository at the listed commit, else at its revision.
    fn pinned(&self) -> Repo {
        match &self.commit {
            Some(c) => Repo::with_revision(self.r.repo.clone(), self.r.repo_type(), c.clone()),
            None => Hub::repo(self.r),
        }
    }

    /// One file, downloaded into the cache (or found there), with a progress bar. A cut
    /// connection is resumed where it stopped; a download that receives nothing for the stall
    /// time fails (its partial file stays in the cache and the next run resumes it).
    pub(super) fn get(&self, file: &str) -> Result<PathBuf> {
        let cached = match &self.commit {
            Some(c) => Some(self.hub.snapshot(self.r, c).join(file)).filter(|p| p.exists()),
            None => self.hub.cached(self.r, file),
        };
        if let Some(p) = cached {
            return Ok(p);
        }
        let seen = Arc::new(AtomicU64::new(0));
        let progress = Bar {
            bar: None,
            shown: format!("{}/{file}", self.r.display()),
            seen: seen.clone(),
        };
        let repo = self.api.repo(self.pinned());
        let name = file.to_string();
        self.watched(Some(file), seen, move || {
            repo.download_with_progress(&name, progress)
        })
    }

    /// Runs one request on its own thread, so that a stalled connection cannot hang the command
    /// (hf-hub sets no read timeout): it fails when `seen` has not moved for the stall time.
    fn watched<T: Send + 'static>(
        &self,
        file: Option<&str>,
        seen: Arc<AtomicU64>,
        job: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(job());
        });
        let shown = match file {
            Some(f) => format!("{}/{f}", self.r.display()),
            None => self.r.display(),
        };
        let (mut last, mut since) = (0, Instant::now());
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(done) => return done.map_err(|e| self.hub.error(self.r, file, e)),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Hub(format!("{shown}: the download thread died")))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = seen.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > self.hub.stall {
                return Err(Error::Hub(format!(
                    "{shown}: {} stopped answering (nothing received for {:.0} s, HF_HUB_DOWNLOAD_TIMEOUT); run again to resume",
                    self.hub.endpoint,
                    self.hub.stall.as_secs_f64()
                )));
            }
        }
    }
}

/// hf-hub's progress callbacks on chatforge's byte bar; every callback counts as a sign of life.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    shown: String,
    seen: Arc<AtomicU64>,
}

impl Progress for Bar {
    fn init(&mut self, size: usize, _filename: &str) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        match &self.bar {
            Some(b) => b.set_position(0),
            None => {
                if !crate::progress::is_terminal() {
                    eprintln!("downloading {} ({} bytes)", self.shown, size);
                }
                self.bar = Some(crate::progress::bytes_bar(size as u64, &self.shown));
            }
        }
    }

    fn update(&mut self, size: usize) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
