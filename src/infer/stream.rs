//! Turning a growing list of token ids into text pieces that are safe to print: a token may end in
//! the middle of a multi-byte UTF-8 character, so text is only released once it decodes cleanly.
//!
//! Offsets as in text-generation-inference: `read` is where the released text ends (always at a
//! character boundary), `prefix` a settled point a little before it, so each decode stays short.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let piece = now.get(before.len()..).unwrap_or_default().to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Generated text with stop strings: [`TextOutput::push`] returns only what is safe to show — whole
/// characters, and never the start of what may turn out to be a stop string.
pub struct TextOutput<'a> {
    stream: TextStream<'a>,
    /// The text so far (cut at a stop string once one appears).
    pub text: String,
    shown: usize,
    stops: Vec<String>,
}

impl<'a> TextOutput<'a> {
    pub fn new(tok: &'a Tokenizer, stops: Vec<String>) -> Self {
        TextOutput {
            stream: TextStream::new(tok),
            text: String::new(),
            shown: 0,
            stops,
        }
    }

    /// Adds a token: the piece of text that may be shown now, and whether a stop string appeared.
    pub fn push(&mut self, id: u32) -> Result<(String, bool)> {
        let piece = self.stream.push(id)?;
        self.text.push_str(&piece);
        Ok(self.release(false))
    }

    /// The end of the generation: everything not shown yet, and whether a stop string cut it.
    pub fn finish(&mut self) -> Result<(String, bool)> {
        let rest = self.stream.finish()?;
        self.text.push_str(&rest);
        Ok(self.release(true))
    }

    fn release(&mut self, all: bool) -> (String, bool) {
        if let Some(cut) = find_stop(&self.text, &self.stops) {
            self.text.truncate(cut);
            let piece = self.text.get(self.shown..).unwrap_or_default().to_string();
            self.shown = self.text.len();
            return (piece, true);
        }
        let safe = if all {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &self.stops)
        };
        let piece = self
            .text
            .get(self.shown..safe)
            .unwrap_or_default()
            .to_string();
        self.shown = self.shown.max(safe);
        (piece, false)
    }
}

/// Byte offset of the first stop string in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Length of the longest end of `text` that is the beginning of a stop string (held back until
/// the next tokens show whether the stop string completes).
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stops = vec!["\nUser:".to_string(), "###".to_string()];
        assert_eq!(find_stop("hello\nUser: hi", &stops), Some(5));
        assert_eq!(find_stop("a ### b", &stops), Some(2));
        assert_eq!(find_stop("nothing here", &stops), None);
        assert_eq!(held_back("answer\nUs", &stops), 3);
        assert_eq!(held_back("answer #", &stops), 1);
        assert_eq!(held_back("answer", &stops), 0);
    }
}
