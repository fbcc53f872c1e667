//! Writing files and directories so that a crash at any instant leaves either the old or the new
//! version whole: write next to the target under a temporary name, flush, then rename into place.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling path `.NAME.tmp-PID` of `path`, on the same filesystem so that `rename` is atomic.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_sibling(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `path` atomically through `fill`, for files too large to build in memory first: on an
/// error the partial file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fills a fresh temporary directory with `fill`, then renames it to `dir`. An existing `dir` is
/// replaced only after the new one is complete (it is moved aside first, then deleted; if the new
/// one cannot be renamed into place, the old one is put back).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = &resolve(dir)?;
    if let Some(parent) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let had_old = dir.symlink_metadata().is_ok();
    if had_old {
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    if had_old {
        let _ = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
    }
    Ok(())
}

/// `path` made absolute with `.` and `..` resolved and symbolic links followed, also when `path`
/// (or some of its last components) does not exist yet: the existing ancestor is canonicalised and
/// the rest appended.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let mut abs = PathBuf::new();
    for c in cwd.join(path).components() {
        match c {
            // `link/..` is the parent of where the link points, as the OS resolves it: follow
            // the links so far before stepping up.
            Component::ParentDir => {
                if let Ok(canon) = abs.canonicalize() {
                    abs = canon;
                }
                abs.pop();
            }
            Component::CurDir => {}
            c => abs.push(c),
        }
    }
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canon) = existing.canonicalize() {
            let mut out = canon;
            out.extend(rest.iter().rev());
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// The one rule for a command's output (a file or a directory): it may not equal or contain one of
/// the command's inputs, nor the working directory or the filesystem root; and if it exists and
/// holds something it is refused unless `force` (then the command replaces it, and only it, once
/// the new output is complete). `flag` is the option that named it, for the message.
pub fn check_output(dest: &Path, flag: &str, inputs: &[&Path], force: bool) -> Result<()> {
    let target = resolve(dest)?;
    let refuse = |why: String| {
        Err(Error::bad_file(
            dest,
            format!("{why}; choose another {flag} (nothing was changed)"),
        ))
    };
    if target.parent().is_none() {
        return refuse(format!("{flag} is the filesystem root"));
    }
    for input in inputs {
        let input = resolve(input)?;
        if input == target {
            return refuse(format!("{flag} is also an input ({})", input.display()));
        }
        if input.starts_with(&target) {
            return refuse(format!("{flag} contains the input {}", input.display()));
        }
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    if resolve(&cwd)?.starts_with(&target) {
        return refuse(format!(
            "{flag} {} is or contains the working directory",
            target.display()
        ));
    }
    let Ok(meta) = target.symlink_metadata() else {
        return Ok(());
    };
    let empty_dir = meta.is_dir()
        && std::fs::read_dir(&target)
            .map_err(|e| Error::io(&target, e))?
            .next()
            .is_none();
    if !empty_dir && !force {
        return Err(Error::bad_file(
            dest,
            format!(
                "{} already exists; choose a new {flag}, or pass --force to replace it (nothing was changed)",
                if meta.is_dir() { "this directory" } else { "this file" }
            ),
        ));
    }
    Ok(())
}

pub fn read_to_string(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!(
                "not valid UTF-8 text (first bad byte at offset {}); convert it to UTF-8 first",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("malformed JSON: {e}")))
}

/// Refuses an output directory that already holds something, so that nothing is overwritten.
pub fn ensure_new_or_empty(dir: &Path, what: &str) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::bad_file(
            dir,
            format!("{what} exists and is not empty; choose a new --out (nothing was overwritten)"),
        ));
    }
    Ok(())
}
