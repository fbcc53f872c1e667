//! Corpus inputs: plain text, JSONL (one document per line, a string field) and Parquet (a string
//! column, as Hugging Face datasets store them), given as files or folders.

use crate::error::{Error, Result};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Text,
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub bytes: u64,
}

/// A piece of text to tokenize. `doc_start` marks the first piece of a document, which gets the
/// end-of-text separator in front of it.
pub struct Piece {
    pub text: String,
    pub doc_start: bool,
}

/// Plain-text files are cut into pieces of about this size (at line ends) so that they tokenize in
/// parallel.
const TEXT_PIECE_BYTES: usize = 64 * 1024;

fn kind_of(path: &Path) -> Option<SourceKind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("jsonl") | Some("ndjson") => Some(SourceKind::Jsonl),
        Some("parquet") => Some(SourceKind::Parquet),
        Some("txt") | Some("text") | Some("md") => Some(SourceKind::Text),
        _ => None,
    }
}

/// Expands folders (recursively, sorted, known extensions only) and classifies files. A file named
/// explicitly with an unknown extension is read as plain text.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(Error::bad_file(
                    p,
                    "folder holds no .txt, .jsonl or .parquet files",
                ));
            }
            for f in found {
                let kind = kind_of(&f).expect("walk keeps known kinds");
                let bytes = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
                out.push(InputFile {
                    path: f,
                    kind,
                    bytes,
                });
            }
        } else {
            out.push(InputFile {
                path: p.clone(),
                kind: kind_of(p).unwrap_or(SourceKind::Text),
                bytes: meta.len(),
            });
        }
    }
    for f in &out {
        if f.bytes == 0 {
            return Err(Error::bad_file(&f.path, "file is empty"));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if kind_of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Hands one document to `f` in pieces of about `TEXT_PIECE_BYTES`, cut after a newline where one
/// comes soon enough, else before white space, else at a character boundary: a 100 MB line is
/// tokenized a piece at a time instead of in one call that needs gigabytes.
fn split_document(text: &str, f: &mut impl FnMut(Piece) -> Result<()>) -> Result<()> {
    let mut rest = text;
    let mut first = true;
    while !rest.is_empty() || first {
        let cut = piece_end(rest);
        f(Piece {
            text: rest[..cut].to_string(),
            doc_start: first,
        })?;
        first = false;
        rest = &rest[cut..];
    }
    Ok(())
}

/// Where the next piece of `rest` ends (see [`split_document`]).
fn piece_end(rest: &str) -> usize {
    if rest.len() <= TEXT_PIECE_BYTES {
        return rest.len();
    }
    let window_end = rest.floor_char_boundary(TEXT_PIECE_BYTES * 4);
    // At least TEXT_PIECE_BYTES - 3: past the first character, so no piece is empty.
    let start = rest.floor_char_boundary(TEXT_PIECE_BYTES);
    let window = &rest[start..window_end];
    if let Some(i) = window.find('\n') {
        return start + i + 1;
    }
    // Before the white space.
    if let Some(i) = window.rfind(char::is_whitespace) {
        return start + i;
    }
    start
}

/// Calls `f` with each piece of text in `file`, in order. `field` is the JSONL field / Parquet column.
pub fn for_each_piece(
    file: &InputFile,
    field: &str,
    mut f: impl FnMut(Piece) -> Result<()>,
) -> Result<()> {
    match file.kind {
        SourceKind::Text => {
            let text = crate::fsutil::read_to_string(&file.path)?;
            if text.trim().is_empty() {
                return Err(Error::bad_file(&file.path, "file holds only white space"));
            }
            split_document(&text, &mut f)
        }
        SourceKind::Jsonl => {
            let fh = std::fs::File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
            let mut any = false;
            for (i, line) in std::io::BufReader::new(fh).lines().enumerate() {
                let line =
                    line.map_err(|e| Error::bad_file(&file.path, format!("line {}: {e}", i + 1)))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                    Error::bad_file(&file.path, format!("line {}: malformed JSON: {e}", i + 1))
                })?;
                let text = v.get(field).and_then(|t| t.as_str()).ok_or_else(|| {
                    Error::bad_file(
                        &file.path,
                        format!(
                            "line {}: no string field '{field}' (choose the field with --field)",
                            i + 1
                        ),
                    )
                })?;
                any = true;
                split_document(text, &mut f)?;
            }
            if !any {
                return Err(Error::bad_file(
                    &file.path,
                    "no documents in this JSONL file",
                ));
            }
            Ok(())
        }
        SourceKind::Parquet => {
            super::parquet::for_each_text(&file.path, field, |text| split_document(&text, &mut f))
        }
    }
}
