//! GPT-2's pre-tokenizer without a regex engine: text is cut into the pieces that the pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` finds (the first
//! alternative that matches at a position wins, as in the backtracking engines the `tokenizers`
//! crate and tiktoken use), in one pass over the characters.
//!
//! Letters (`\p{L}`), numbers (`\p{N}`) and white space (`\s`) are the Unicode classes of the
//! `regex-syntax` crate's tables, looked up in a table for the Basic Multilingual Plane and by
//! binary search above it.

use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

struct ClassTables {
    bmp: Box<[CharClass]>,
    /// Sorted, disjoint ranges above U+FFFF that are not `Other`.
    astral: Vec<(u32, u32, CharClass)>,
}

fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a valid Unicode class");
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => unreachable!("{pattern} parsed as {other:?}"),
    }
}

fn tables() -> &'static ClassTables {
    static TABLES: OnceLock<ClassTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut bmp = vec![CharClass::Other; 0x10000].into_boxed_slice();
        let mut astral = Vec::new();
        for (pattern, class) in [
            (r"\p{L}", CharClass::Letter),
            (r"\p{N}", CharClass::Number),
            (r"\s", CharClass::Space),
        ] {
            for (start, end) in unicode_ranges(pattern) {
                for c in start..=end.min(0xFFFF) {
                    bmp[c as usize] = class;
                }
                if end > 0xFFFF {
                    astral.push((start.max(0x10000), end, class));
                }
            }
        }
        astral.sort_unstable_by_key(|r| r.0);
        ClassTables { bmp, astral }
    })
}

#[inline]
pub(crate) fn class_of(c: char) -> CharClass {
    let c = c as u32;
    if c < 0x80 {
        return match c as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => CharClass::Letter,
            b'0'..=b'9' => CharClass::Number,
            b' ' | b'\t'..=b'\r' => CharClass::Space,
            _ => CharClass::Other,
        };
    }
    let t = tables();
    if c <= 0xFFFF {
        return t.bmp[c as usize];
    }
    match t.astral.binary_search_by(|r| {
        if r.1 < c {
            std::cmp::Ordering::Less
        } else if r.0 > c {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => t.astral[i].2,
        Err(_) => CharClass::Other,
    }
}

/// The character at byte `i` of `s` (a boundary) and its length in bytes.
#[inline]
fn char_at(s: &str, i: usize) -> (char, usize) {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        return (b as char, 1);
    }
    let c = s[i..].chars().next().expect("i is a character boundary");
    (c, c.len_utf8())
}

/// Where the run of `class` characters starting at byte `i` ends.
#[inline]
fn run_end(s: &str, mut i: usize, class: CharClass) -> usize {
    while i < s.len() {
        let (c, n) = char_at(s, i);
        if class_of(c) != class {
            break;
        }
        i += n;
    }
    i
}

/// The length of the contraction (`s t re ve m ll d`) after an apostrophe, if one follows.
#[inline]
fn contraction_len(after: &[u8]) -> Option<usize> {
    match after {
        [b's' | b't' | b'm' | b'd', ..] => Some(1),
        [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        _ => None,
    }
}

/// Where the piece that starts at byte `i` (< `s.len()`) ends.
fn piece_end(s: &str, i: usize) -> usize {
    let (c, n) = char_at(s, i);
    if c == '\'' {
        if let Some(k) = contraction_len(&s.as_bytes()[i + 1..]) {
            return i + 1 + k;
        }
    }
    let class = class_of(c);
    if c == ' ' && i + 1 < s.len() {
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space joins the run after it.
        let (next, _) = char_at(s, i + 1);
        let next_class = class_of(next);
        if next_class != CharClass::Space {
            return run_end(s, i + 1, next_class);
        }
    }
    if class != CharClass::Space {
        return run_end(s, i + n, class);
    }
    let end = run_end(s, i + n, CharClass::Space);
    if end == s.len() {
        return end;
    }
    // `\s+(?!\S)`: before a non-space the last white-space character is left to the next piece
    // (where a space may begin ` ?\p{L}+`); a single one is `\s+`.
    let mut last = end - 1;
    while !s.is_char_boundary(last) {
        last -= 1;
    }
    if last > i {
        last
    } else {
        end
    }
}

/// Calls `f` with each of GPT-2's pre-tokenizer pieces of `text`, in order; together they are `text`.
#[inline]
pub(crate) fn for_each_piece<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let mut i = 0;
    while i < text.len() {
        let end = piece_end(text, i);
        f(&text[i..end]);
        i = end;
    }
}

/// [`for_each_piece`] after every number character has been made a piece of its own, as the
/// `tokenizers` crate's `Digits(individual_digits)` does: by `char::is_numeric` (whose Unicode
/// tables can be newer than those of `\p{N}` above).
pub(crate) fn for_each_piece_after_digits<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        let (c, n) = char_at(text, i);
        if c.is_numeric() {
            for_each_piece(&text[start..i], &mut f);
            f(&text[i..i + n]);
            start = i + n;
        }
        i += n;
    }
    for_each_piece(&text[start..], f);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        for_each_piece(text, |p| v.push(p));
        v
    }

    #[test]
    fn splits_as_the_gpt2_pattern() {
        assert_eq!(
            pieces("Hello world! I'm   here\n\n  42x don't''s"),
            [
                "Hello", " world", "!", " I", "'m", "  ", " here", "\n\n ", " 42", "x", " don",
                "'t", "''", "s"
            ]
        );
        assert_eq!(pieces("a  "), ["a", "  "]);
        assert_eq!(
            pieces(" \u{3000}日本語 ١٢"),
            [" ", "\u{3000}", "日本語", " ١٢"]
        );
        assert_eq!(pieces(""), Vec::<&str>::new());
    }

    #[test]
    fn digits_split_off_first_as_smollm_splits() {
        let mut v = Vec::new();
        for_each_piece_after_digits("In 1599, x42 ١٢!", |p| v.push(p));
        assert_eq!(
            v,
            ["In", " ", "1", "5", "9", "9", ",", " x", "4", "2", " ", "١", "٢", "!"]
        );
    }

    #[test]
    fn classes_follow_unicode() {
        assert_eq!(class_of('é'), CharClass::Letter);
        assert_eq!(class_of('Ⅻ'), CharClass::Number);
        assert_eq!(class_of('\u{a0}'), CharClass::Space);
        assert_eq!(class_of('😀'), CharClass::Other);
        assert_eq!(class_of('𝔄'), CharClass::Letter);
        assert_eq!(class_of('\u{1F}'), CharClass::Other);
    }
}
