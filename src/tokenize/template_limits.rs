//! Size bounds for rendering a model-supplied chat template. Fuel bounds how many instructions
//! a render runs, not how many bytes one instruction makes: `'x' * n`, `indent(width=n)` and
//! `tojson(indent=n)` make strings whose size comes straight from a number in the template, and
//! a loop that prints a large string multiplies it by the iteration count. A chat prompt is a
//! few kilobytes, so the output and every width a template asks for are capped far above that.

use minijinja::value::{Kwargs, StringInput, Value as JValue};
use minijinja::{Error as JError, ErrorKind};
use std::io;

/// Most bytes a render may output (a long conversation with tools is tens of kilobytes).
pub const MAX_RENDER_BYTES: usize = 8 << 20;
/// Deepest value `tojson` walks (real tool schemas nest a handful of levels).
pub const MAX_JSON_DEPTH: usize = 128;
/// Most items (counted through nested lists and maps) a template may print as one value.
/// minijinja formats a list into the output as a whole, however long: `{{ messages * 100000000 }}`
/// is one instruction of fuel and ran for 8.8 s before the output cap could refuse it (fuzz
/// finding, a libFuzzer timeout). Real templates print strings, not lists; a million items is
/// above anything the 8 MB output could hold anyway, and walking them takes milliseconds.
pub const MAX_PRINTED_ITEMS: usize = 1_000_000;
/// Widest indent `indent` and `tojson` accept (transformers' templates use 2 or 4).
pub const MAX_INDENT: usize = 64;

/// An `io::Write` sink that refuses to grow past `MAX_RENDER_BYTES`, so a template that prints
/// without bound stops with an error instead of filling memory.
#[derive(Default)]
pub struct BoundedOutput {
    pub bytes: Vec<u8>,
    pub overflowed: bool,
}

impl io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > MAX_RENDER_BYTES {
            self.overflowed = true;
            return Err(io::Error::other(format!(
                "the template's output passed {} MB",
                MAX_RENDER_BYTES >> 20
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether printing `value` would visit at most `budget` items: lists, maps and iterables are
/// walked lazily, nested ones included, with a heap stack (no recursion: a namespace that holds
/// itself is as deep as the budget), and the walk stops as soon as the budget is spent, so a
/// huge lazy repeat or a cycle costs at most `budget` steps.
fn printable_within(value: &JValue, mut budget: usize) -> bool {
    use minijinja::value::ValueKind as K;
    let mut pending = vec![value.clone()];
    while let Some(v) = pending.pop() {
        if !matches!(v.kind(), K::Seq | K::Map | K::Iterable) {
            continue;
        }
        let Ok(items) = v.try_iter() else {
            continue;
        };
        let is_map = v.kind() == K::Map;
        for item in items {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            pending.push(if is_map {
                v.get_item(&item).unwrap_or_default()
            } else {
                item
            });
        }
    }
    true
}

/// minijinja's default formatter for `{{ value }}`, after checking that a list or map value is
/// not larger than `MAX_PRINTED_ITEMS`.
pub fn bounded_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &JValue,
) -> Result<(), JError> {
    check_printable(value)?;
    minijinja::escape_formatter(out, state, value)
}

/// The error for a value too large (or cyclic: a namespace that holds itself) to format.
fn too_large() -> JError {
    JError::new(
        ErrorKind::InvalidOperation,
        format!(
            "refusing to format a value of more than {MAX_PRINTED_ITEMS} items \
             (does a namespace hold itself?)"
        ),
    )
}

fn check_printable(value: &JValue) -> Result<(), JError> {
    if printable_within(value, MAX_PRINTED_ITEMS) {
        Ok(())
    } else {
        Err(too_large())
    }
}

/// `string`, after the size check: minijinja formats the whole value into one string, which
/// for a namespace that holds itself recurses until the stack overflows (fuzz finding:
/// `{% set ns.s = ns %}{{ ns | string }}`).
pub fn string(state: &minijinja::State, value: &JValue) -> Result<JValue, JError> {
    check_printable(value)?;
    minijinja::filters::string(state, value)
}

/// `join`, after the size check of the sequence (its items are formatted as with `string`).
pub fn join(
    state: &minijinja::State,
    value: &JValue,
    joiner: Option<StringInput<'_>>,
) -> Result<JValue, JError> {
    check_printable(value)?;
    minijinja::filters::join(state, value, joiner)
}

/// `pprint`, after the size check.
pub fn pprint(value: &JValue) -> Result<String, JError> {
    check_printable(value)?;
    Ok(minijinja::filters::pprint(value))
}

/// An indent width from a template, refused past `MAX_INDENT`.
pub fn checked_indent(width: usize, filter: &str) -> Result<usize, JError> {
    if width > MAX_INDENT {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            format!("{filter}: indent {width} is wider than the {MAX_INDENT} allowed"),
        ));
    }
    Ok(width)
}

/// Jinja's `indent(width=4, first=False, blank=False)`: minijinja's own filter, after the width
/// (positional or keyword) is checked; minijinja's builds a string of `width` spaces first,
/// whatever the width.
pub fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<JValue, JError> {
    let asked = match width {
        Some(w) => Some(w),
        None => kwargs.get::<Option<usize>>("width")?,
    };
    if let Some(w) = asked {
        checked_indent(w, "indent")?;
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn bounded_output_refuses_past_the_cap() {
        let mut out = BoundedOutput::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_RENDER_BYTES >> 20) {
            out.write_all(&chunk).unwrap();
        }
        assert!(out.write_all(b"y").is_err());
        assert!(out.overflowed);
        assert_eq!(out.bytes.len(), MAX_RENDER_BYTES);
    }

    #[test]
    fn indent_matches_jinja_and_refuses_a_huge_width() {
        let env = minijinja::Environment::new();
        let mut env2 = minijinja::Environment::new();
        env2.add_filter("indent", indent);
        for src in [
            "{{ 'a\nb\n\nc' | indent }}",
            "{{ 'a\nb\n\nc\n' | indent(2, true) }}",
            "{{ 'a\n\nb' | indent(width=3, blank=true) }}",
            "{{ 'a\n\nb' | indent(3, first=true, blank=true) }}",
        ] {
            let ours = env2.render_str(src, ()).unwrap();
            let theirs = env.render_str(src, ()).unwrap();
            assert_eq!(ours, theirs, "{src}");
        }
        let err = env2
            .render_str("{{ 'a\nb' | indent(1000000000) }}", ())
            .unwrap_err();
        assert!(err.to_string().contains("wider than"), "{err}");
    }
}
