//! Reading a JSONL data file line by line, with a byte limit per line that holds even while
//! the line is read: a 100 MB line is skipped as it streams past, never held (before this,
//! `tune` on a file with one 100 MB record grew past 7 GB parsing, rendering and tokenizing it).

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// The longest line kept for a `max_seq`-token example: 64 bytes a token (real text is 2–6),
/// and never under 1 MiB, so long-context records fit and a runaway line does not.
pub fn record_byte_limit(max_seq: usize) -> usize {
    (64 * max_seq).max(1 << 20)
}

/// One non-blank line of a data file.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than the limit (its length in bytes, newline excluded); skipped unread.
    TooLong(usize),
    /// Not valid UTF-8.
    NotUtf8,
}

/// The non-blank lines of `path`, numbered from 1, each at most `max_bytes` long or replaced
/// by `Line::TooLong`.
pub fn read_lines(path: &Path, max_bytes: usize) -> Result<Vec<(usize, Line)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_lines_from(BufReader::with_capacity(1 << 16, file), max_bytes)
        .map_err(|e| Error::io(path, e))
}

fn read_lines_from(mut r: impl BufRead, max_bytes: usize) -> std::io::Result<Vec<(usize, Line)>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut len = 0usize; // bytes of the current line seen, kept or not
    let mut lineno = 1;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            if len > 0 {
                out.push((lineno, finish(&mut buf, len, max_bytes)));
            }
            return Ok(out);
        }
        let (piece, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        len += piece.len();
        if len <= max_bytes {
            buf.extend_from_slice(piece);
        } else {
            buf = Vec::new();
        }
        let used = piece.len() + usize::from(ends_line);
        r.consume(used);
        if ends_line {
            let line = finish(&mut buf, len, max_bytes);
            if !matches!(&line, Line::Text(t) if t.trim().is_empty()) {
                out.push((lineno, line));
            }
            len = 0;
            lineno += 1;
        }
    }
}

fn finish(buf: &mut Vec<u8>, len: usize, max_bytes: usize) -> Line {
    let bytes = std::mem::take(buf);
    if len > max_bytes {
        return Line::TooLong(len);
    }
    match String::from_utf8(bytes) {
        Ok(mut s) => {
            if s.ends_with('\r') {
                s.pop();
            }
            Line::Text(s)
        }
        Err(_) => Line::NotUtf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Through a 7-byte buffer, so lines cross chunk boundaries.
    fn lines_of(r: impl Read, max_bytes: usize) -> std::io::Result<Vec<(usize, Line)>> {
        read_lines_from(BufReader::with_capacity(7, r), max_bytes)
    }

    #[test]
    fn numbers_lines_skips_blanks_and_cuts_nothing_under_the_limit() {
        let text = b"a\n\n  \r\nbc\r\nd";
        let got = lines_of(&text[..], 4).unwrap();
        assert_eq!(
            got,
            vec![
                (1, Line::Text("a".into())),
                (4, Line::Text("bc".into())),
                (5, Line::Text("d".into()))
            ]
        );
    }

    #[test]
    fn a_long_line_is_measured_not_kept_and_bad_utf8_is_named() {
        let mut text = b"ok\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 1000));
        text.extend(b"\n\xff\xfe\nlast\n");
        let got = lines_of(&text[..], 10).unwrap();
        assert_eq!(
            got,
            vec![
                (1, Line::Text("ok".into())),
                (2, Line::TooLong(1000)),
                (3, Line::NotUtf8),
                (4, Line::Text("last".into()))
            ]
        );
        // Exactly at the limit is kept.
        let got = lines_of(&b"0123456789\n"[..], 10).unwrap();
        assert_eq!(got, vec![(1, Line::Text("0123456789".into()))]);
        assert_eq!(record_byte_limit(2048), 1 << 20);
        assert_eq!(record_byte_limit(1 << 16), 64 << 16);
    }
}
