//! A faster encoder for byte-level BPE tokenizers of GPT-2's shape (GPT-2's own, the ones
//! `chatforge tokenizer train` makes, those read from GGUF files): the same ids as the `tokenizers`
//! crate, from the same vocabulary and merges.
//!
//! What the `tokenizers` crate does, done directly: added tokens are cut out of the text first
//! (leftmost-longest, those matched before normalization first), the rest is cut into GPT-2's
//! pieces ([`super::gpt2_split`]), and each piece's bytes are merged pairwise, lowest merge rank
//! first and leftmost among equals. The work it skips: no normalized-string bookkeeping, offsets,
//! byte-to-character mapping or string allocation per piece, and a per-thread cache of the pieces
//! already seen (most of a corpus is words met before).
//!
//! A tokenizer of another shape (a normalizer, another pre-tokenizer, added tokens that strip
//! spaces, dropout, ...) is not taken: [`ByteLevelBpe::from_tokenizer`] says why, and the
//! `tokenizers` crate encodes it.

use super::{bpe_source, gpt2_split};
use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Pieces longer than this are merged with a heap (`O(n log n)`) instead of by scanning (`O(n²)`).
const SCAN_MAX_BYTES: usize = 64;
/// Pieces up to this long are cached; the cache is emptied when it holds `CACHE_MAX_WORDS`.
const CACHE_MAX_BYTES: usize = 48;
const CACHE_MAX_WORDS: usize = 1 << 17;

/// A byte whose token is not in the vocabulary (the `tokenizers` crate drops it from the piece).
const MISSING: u32 = u32::MAX;

pub(crate) struct ByteLevelBpe {
    /// The token of each byte, or `MISSING`.
    byte_ids: [u32; 256],
    /// `left << 32 | right` → `rank << 32 | merged id`.
    merges: FxHashMap<u64, u64>,
    /// With `ignore_merges` (as Llama 3's tokenizers have it), a piece that is itself in the
    /// vocabulary is that token, whatever its merges would make of it.
    whole_pieces: Option<FxHashMap<Box<[u8]>, u32>>,
    /// Added tokens matched on the raw text, then those matched after normalization.
    added: [Option<(AhoCorasick, Vec<u32>)>; 2],
    /// Every digit is a piece of its own, before GPT-2's pattern cuts the rest (SmolLM's).
    split_digits: bool,
    /// Tells the per-thread caches of different tokenizers apart.
    cache_owner: u64,
}

struct ThreadCache {
    owner: u64,
    words: FxHashMap<Box<[u8]>, Box<[u32]>>,
    symbols: Vec<u32>,
    ranks: Vec<u64>,
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(ThreadCache {
        owner: u64::MAX,
        words: FxHashMap::default(),
        symbols: Vec::new(),
        ranks: Vec::new(),
    });
}

impl ByteLevelBpe {
    /// The encoder for `tokenizer` (read from the tokenizer.json text `source`, if it was), or why
    /// it has a shape this encoder does not reproduce.
    pub(crate) fn from_tokenizer(
        tokenizer: &tokenizers::Tokenizer,
        source: Option<&str>,
    ) -> Result<Self, String> {
        let (bpe, split_digits) = bpe_source::gpt2_shaped_bpe(tokenizer)?;
        let vocab = tokenizers::Model::get_vocab(bpe);
        let byte_chars = super::byte_to_char_table();
        let mut byte_ids = [MISSING; 256];
        for (b, c) in byte_chars.iter().enumerate() {
            if let Some(&id) = vocab.get(c.encode_utf8(&mut [0; 4]) as &str) {
                byte_ids[b] = id;
            } else if bpe.unk_token.is_some() || bpe.byte_fallback {
                return Err(format!(
                    "byte {b:#04x} is not in the vocabulary and would be an unknown or fallback token"
                ));
            }
        }
        let mut merges = FxHashMap::default();
        let mut joined = String::new();
        bpe_source::for_each_merge(bpe, source, |rank, a, b| {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let id = |t: &str| vocab.get(t).copied();
            let (Some(l), Some(r), Some(new)) = (id(a), id(b), id(&joined)) else {
                return Err(format!(
                    "merge {rank} ({a} {b}) names tokens not in the vocabulary"
                ));
            };
            // Later duplicates win, as in the `tokenizers` crate's map.
            merges.insert(
                u64::from(l) << 32 | u64::from(r),
                (rank as u64) << 32 | u64::from(new),
            );
            Ok(())
        })?;
        let whole_pieces = bpe.ignore_merges.then(|| {
            let unmap = super::byte_level_decoder_table();
            vocab
                .iter()
                .filter_map(|(token, &id)| {
                    let bytes: Option<Vec<u8>> =
                        token.chars().map(|c| unmap.get(&c).copied()).collect();
                    Some((bytes?.into_boxed_slice(), id))
                })
                .collect()
        });
        let mut added: Vec<(u32, tokenizers::AddedToken)> =
            tokenizer.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let trie = |normalized: bool| -> Result<Option<(AhoCorasick, Vec<u32>)>, String> {
            let (words, ids): (Vec<&str>, Vec<u32>) = added
                .iter()
                .filter(|(_, t)| t.normalized == normalized && !t.content.is_empty())
                .map(|(id, t)| (t.content.as_str(), *id))
                .unzip();
            if words.is_empty() {
                return Ok(None);
            }
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| e.to_string())?;
            Ok(Some((ac, ids)))
        };
        static NEXT_OWNER: AtomicU64 = AtomicU64::new(0);
        Ok(ByteLevelBpe {
            byte_ids,
            merges,
            whole_pieces,
            added: [trie(false)?, trie(true)?],
            split_digits,
            cache_owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The ids of `text`, as `tokenizers::Tokenizer::encode(text, false)` gives them.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        CACHE.with(|cache| {
            let cache = &mut *cache.borrow_mut();
            if cache.owner != self.cache_owner {
                cache.owner = self.cache_owner;
                cache.words.clear();
            }
            self.split_added(0, text, &mut |segment| match segment {
                Segment::Added(id) => out.push(id),
                Segment::Text(s) => {
                    let mut piece = |p: &str| self.encode_piece(p.as_bytes(), cache, &mut out);
                    match self.split_digits {
                        true => gpt2_split::for_each_piece_after_digits(s, piece),
                        false => gpt2_split::for_each_piece(s, &mut piece),
                    }
                }
            });
        });
        out
    }

    /// Cuts the added tokens of trie `level` (then of the next level) out of `text`.
    fn split_added<'t>(&self, level: usize, text: &'t str, f: &mut impl FnMut(Segment<'t>)) {
        let Some(Some((trie, ids))) = self.added.get(level) else {
            if level < self.added.len() {
                return self.split_added(level + 1, text, f);
            }
            return f(Segment::Text(text));
        };
        let mut at = 0;
        for m in trie.find_iter(text) {
            if m.start() > at {
                self.split_added(level + 1, &text[at..m.start()], f);
            }
            f(Segment::Added(ids[m.pattern().as_usize()]));
            at = m.end();
        }
        if at < text.len() {
            self.split_added(level + 1, &text[at..], f);
        }
    }

    /// Each byte's token; bytes not in the vocabulary are left out, so their neighbours meet.
    #[inline]
    fn initial_symbols<'p>(&'p self, piece: &'p [u8]) -> impl Iterator<Item = u32> + 'p {
        piece
            .iter()
            .map(|&b| self.byte_ids[b as usize])
            .filter(|&id| id != MISSING)
    }

    #[inline]
    fn merge_of(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges
            .get(&(u64::from(left) << 32 | u64::from(right)))
            .map(|&v| ((v >> 32) as u32, v as u32))
    }

    fn encode_piece(&self, piece: &[u8], cache: &mut ThreadCache, out: &mut Vec<u32>) {
        if let [b] = piece {
            return out.extend(Some(self.byte_ids[*b as usize]).filter(|&id| id != MISSING));
        }
        if let Some(id) = self.whole_pieces.as_ref().and_then(|w| w.get(piece)) {
            return out.push(*id);
        }
        if piece.len() > SCAN_MAX_BYTES {
            return self.merge_long(piece, out);
        }
        if let Some(ids) = cache.words.get(piece) {
            return out.extend_from_slice(ids);
        }
        let start = out.len();
        self.merge_short(piece, &mut cache.symbols, &mut cache.ranks);
        out.extend_from_slice(&cache.symbols);
        if piece.len() <= CACHE_MAX_BYTES {
            if cache.words.len() >= CACHE_MAX_WORDS {
                cache.words.clear();
            }
            cache.words.insert(piece.into(), out[start..].into());
        }
    }

    /// The merged ids of a short piece into `symbols`: each step merges the adjacent pair of
    /// lowest rank (the leftmost among equals), found by a scan.
    fn merge_short(&self, piece: &[u8], symbols: &mut Vec<u32>, ranks: &mut Vec<u64>) {
        symbols.clear();
        symbols.extend(self.initial_symbols(piece));
        if symbols.is_empty() {
            return;
        }
        // ranks[k]: the pair (symbols[k], symbols[k + 1]) as `rank << 32 | merged id`, or MAX.
        let pair = |s: &[u32], k: usize| {
            self.merge_of(s[k], s[k + 1])
                .map_or(u64::MAX, |(rank, id)| u64::from(rank) << 32 | u64::from(id))
        };
        ranks.clear();
        ranks.extend((0..symbols.len() - 1).map(|k| pair(symbols, k)));
        while let Some((k, &best)) = ranks.iter().enumerate().min_by_key(|&(k, r)| (*r, k)) {
            if best == u64::MAX {
                break;
            }
            symbols[k] = best as u32;
            symbols.remove(k + 1);
            ranks.remove(k);
            if k + 1 < symbols.len() {
                ranks[k] = pair(symbols, k);
            }
            if k > 0 {
                ranks[k - 1] = pair(symbols, k - 1);
            }
        }
    }

    /// The same merges for a long piece, with a heap of candidate pairs and a linked list of
    /// symbols, as the `tokenizers` crate does for every word.
    fn merge_long(&self, piece: &[u8], out: &mut Vec<u32>) {
        const DEAD: u32 = u32::MAX;
        let mut ids: Vec<u32> = self.initial_symbols(piece).collect();
        let n = ids.len();
        if n == 0 {
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|k| k.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, ids: &[u32], k: usize, after: usize| {
            if let Some((rank, _)) = self.merge_of(ids[k], ids[after]) {
                heap.push(std::cmp::Reverse((rank, k)));
            }
        };
        for k in 0..n - 1 {
            push(&mut heap, &ids, k, k + 1);
        }
        while let Some(std::cmp::Reverse((rank, k))) = heap.pop() {
            let after = next[k];
            if ids[k] == DEAD || after >= n {
                continue;
            }
            let Some((current, merged)) = self.merge_of(ids[k], ids[after]) else {
                continue;
            };
            if current != rank {
                continue;
            }
            ids[k] = merged;
            ids[after] = DEAD;
            next[k] = next[after];
            if next[k] < n {
                prev[next[k]] = k;
                push(&mut heap, &ids, k, next[k]);
            }
            if prev[k] < n {
                push(&mut heap, &ids, prev[k], k);
            }
        }
        out.extend(ids.into_iter().filter(|&id| id != DEAD));
    }
}

enum Segment<'t> {
    Added(u32),
    Text(&'t str),
}
