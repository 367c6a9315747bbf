//! JSONL records → (ids, loss mask).
//!
//! `parse_record` turns one line into a conversation, `build_example` turns a conversation into
//! an `Example` (both usable on in-memory records), and `load_jsonl` does both for a file, with
//! errors naming file and 1-based line.

pub mod example;
pub mod lines;
pub mod records;

pub use example::{build_example, truncate, Built};
pub use records::{check_conversation, parse_record};

use crate::error::{Error, Result};
use crate::tokenize::{ChatTemplate, TextTokenizer};
use lines::Line;
use std::path::Path;

/// Which tokens carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossOn {
    /// Response tokens only: the conditional objective log Pr(y|x).
    #[default]
    Response,
    /// Every token after the first: the joint objective log Pr([x, y]).
    All,
}

/// How a record becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateMode {
    /// The model's own chat template.
    #[default]
    Model,
    /// Prompt and response concatenated, EOS appended (see `build_example`).
    Raw,
}

#[derive(Debug, Clone)]
pub struct DataOptions {
    pub loss_on: LossOn,
    pub template: TemplateMode,
    /// Longest example in tokens.
    pub max_seq: usize,
    /// Skip (and count) malformed records instead of failing on the first.
    pub skip_bad: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            loss_on: LossOn::Response,
            template: TemplateMode::Model,
            max_seq: 2048,
            skip_bad: false,
        }
    }
}

/// One training/eval sequence. `mask[t]` is true when token `t` is a scored target, predicted
/// from `ids[..t]`; `mask[0]` is always false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
    /// 1-based line in the source file (0 for in-memory records).
    pub line: usize,
}

impl Example {
    pub fn scored(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Malformed records skipped under `skip_bad`.
    pub skipped_bad: usize,
    /// Records whose scored part does not fit in `max_seq`, or whose line is over
    /// `lines::record_byte_limit(max_seq)` bytes.
    pub skipped_too_long: usize,
    /// Of those, the lines over the byte limit (skipped unread).
    pub skipped_over_bytes: usize,
    /// The first few reasons for skipped bad records, as "file:line: reason".
    pub bad_reasons: Vec<String>,
}

/// How many skip reasons a `Dataset` keeps.
const KEEP_REASONS: usize = 5;

/// Read a JSONL file (blank lines ignored) into examples.
pub fn load_jsonl(
    path: &Path,
    tok: &TextTokenizer,
    chat: &ChatTemplate,
    opts: &DataOptions,
) -> Result<Dataset> {
    use rayon::prelude::*;
    // A line over the limit is skipped while it is read, never held, parsed or rendered.
    let max_bytes = lines::record_byte_limit(opts.max_seq);
    let lines = lines::read_lines(path, max_bytes)?;
    // Records are independent: build them in parallel, then take the results in file order so
    // the error reported is the first bad line's.
    let results: Vec<(usize, std::result::Result<Built, String>)> = lines
        .par_iter()
        .map(|(lineno, line)| {
            let built = match line {
                Line::Text(text) => parse_record(text)
                    .and_then(|msgs| build_example(&msgs, tok, chat, opts, *lineno)),
                // Counted with the records too long for max_seq (it was never tokenized).
                Line::TooLong(_) => Ok(Built::TooLong {
                    tokens: 0,
                    scored_span: 0,
                }),
                Line::NotUtf8 => Err("the line is not valid UTF-8".to_string()),
            };
            (*lineno, built)
        })
        .collect();
    let mut ds = Dataset {
        skipped_over_bytes: (lines.iter())
            .filter(|(_, l)| matches!(l, Line::TooLong(_)))
            .count(),
        ..Dataset::default()
    };
    for (lineno, built) in results {
        match built {
            Ok(Built::Example(ex)) => ds.examples.push(ex),
            Ok(Built::TooLong { .. }) => ds.skipped_too_long += 1,
            Err(reason) if opts.skip_bad => {
                ds.skipped_bad += 1;
                if ds.bad_reasons.len() < KEEP_REASONS {
                    ds.bad_reasons
                        .push(format!("{}:{lineno}: {reason}", path.display()));
                }
            }
            Err(reason) => return Err(Error::data(path, lineno, reason)),
        }
    }
    if ds.examples.is_empty() {
        let first = match ds.bad_reasons.first() {
            Some(r) => format!("; first: {r}"),
            None => String::new(),
        };
        return Err(Error::Usage(format!(
            "{}: no usable records ({} malformed, {} too long for max_seq {}){first}",
            path.display(),
            ds.skipped_bad,
            ds.skipped_too_long,
            opts.max_seq
        )));
    }
    Ok(ds)
}
