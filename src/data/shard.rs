//! Token shards: a 256 x i32 little-endian header, then the token ids.
//!
//! The u16 layout is llm.c's GPT-2 format (magic 20240520, version 1, header[2] = token count), so
//! shards written by llm.c's and nanoGPT-style scripts load here unchanged. Vocabularies past 65,536
//! use llm.c's u32 layout (magic 20240801, version 7).

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;
pub const MAGIC_U16: i32 = 20240520;
pub const VERSION_U16: i32 = 1;
pub const MAGIC_U32: i32 = 20240801;
pub const VERSION_U32: i32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// The narrowest width that holds every id of a vocabulary of `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }
}

/// Writes one shard file atomically (temporary name, then rename).
pub fn write_shard(path: &Path, tokens: &[u32], width: TokenWidth) -> Result<()> {
    let mut header = [0i32; HEADER_INTS];
    let (magic, version) = match width {
        TokenWidth::U16 => (MAGIC_U16, VERSION_U16),
        TokenWidth::U32 => (MAGIC_U32, VERSION_U32),
    };
    header[0] = magic;
    header[1] = version;
    header[2] = i32::try_from(tokens.len()).map_err(|_| {
        Error::Config(format!(
            "a shard holds at most {} tokens; lower --shard-tokens",
            i32::MAX
        ))
    })?;
    let mut buf = Vec::with_capacity(HEADER_BYTES + tokens.len() * width.bytes());
    for h in header {
        buf.extend_from_slice(&h.to_le_bytes());
    }
    match width {
        TokenWidth::U16 => {
            for &t in tokens {
                let t = u16::try_from(t).map_err(|_| {
                    Error::Mismatch(format!(
                        "token id {t} does not fit a u16 shard; the vocabulary needs u32 shards"
                    ))
                })?;
                buf.extend_from_slice(&t.to_le_bytes());
            }
        }
        TokenWidth::U32 => {
            for &t in tokens {
                buf.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
    let tmp = crate::fsutil::temp_sibling(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&buf).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A shard on disk, memory-mapped.
pub struct TokenShard {
    pub path: PathBuf,
    pub width: TokenWidth,
    mmap: memmap2::Mmap,
    len: usize,
}

impl TokenShard {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a file that shards are never rewritten in place (atomic renames).
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        if mmap.len() < HEADER_BYTES {
            return Err(Error::bad_file(
                path,
                format!("too short for a token shard header ({} bytes)", mmap.len()),
            ));
        }
        let int =
            |i: usize| i32::from_le_bytes(mmap[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        let width = match (int(0), int(1)) {
            (MAGIC_U16, VERSION_U16) => TokenWidth::U16,
            (MAGIC_U32, VERSION_U32) => TokenWidth::U32,
            (m, v) => {
                return Err(Error::bad_file(
                    path,
                    format!("not a token shard: magic {m} version {v} (expected {MAGIC_U16}/{VERSION_U16} or {MAGIC_U32}/{VERSION_U32})"),
                ))
            }
        };
        let len = usize::try_from(int(2))
            .map_err(|_| Error::bad_file(path, "negative token count in header"))?;
        let want = HEADER_BYTES + len * width.bytes();
        if mmap.len() != want {
            return Err(Error::bad_file(
                path,
                format!("header says {len} tokens ({want} bytes) but the file has {} bytes; it is truncated or corrupt", mmap.len()),
            ));
        }
        Ok(TokenShard {
            path: path.to_path_buf(),
            width,
            mmap,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> u32 {
        let b = &self.mmap[HEADER_BYTES..];
        match self.width {
            TokenWidth::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            TokenWidth::U32 => u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes")),
        }
    }

    /// Tokens `start..start + n` appended to `out`.
    pub fn read_into(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        out.extend((start..start + n).map(|i| self.get(i)));
    }
}
