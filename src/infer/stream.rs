//! Turning streamed token ids into printable text without ever printing half a character.

use crate::error::Result;
use crate::tokenize::TextTokenizer;

/// Decodes the whole reply after every token and hands out only the new, complete text, so a
/// multi-byte character split across tokens is printed once it is whole.
pub struct TextStream<'t> {
    tok: &'t TextTokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'t> TextStream<'t> {
    pub fn new(tok: &'t TextTokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Add a token; returns the text that became printable (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        Ok(self.take(&text, false))
    }

    /// What is left to print at the end (a trailing partial character as U+FFFD), and the
    /// whole decoded text.
    pub fn finish(&mut self) -> Result<(String, String)> {
        let text = self.tok.decode(&self.ids)?;
        let rest = self.take(&text, true);
        Ok((rest, text))
    }

    fn take(&mut self, text: &str, last: bool) -> String {
        let whole = last || !text.ends_with('\u{FFFD}');
        if whole && text.len() > self.printed && text.is_char_boundary(self.printed) {
            let s = text[self.printed..].to_string();
            self.printed = text.len();
            s
        } else {
            String::new()
        }
    }
}
