//! The bounded cursor the header is read with: every read checks what remains first, and the
//! metadata values it builds are capped in count and nesting, so a lying file gives an
//! `Error`, never a panic or a huge allocation.

use super::value::{value_type, Value};
use crate::error::{Error, Result};
use std::path::Path;

/// Deeper nesting than this is certainly garbage; the limit keeps recursion off the stack limit.
const MAX_ARRAY_DEPTH: usize = 16;
/// Most metadata values (array elements included) one file may hold. Each costs a 32-byte
/// `Value` in memory however few bytes it takes in the file (a u8 takes one), so this caps the
/// metadata's memory at 512 MiB plus its string bytes. Real models hold under a million (the
/// largest vocabularies: ~262k tokens, with as many scores and types, plus the merges).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Cursor over the mapped bytes; every read checks what remains first.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
    path: &'a Path,
    /// Metadata values read so far, against [`MAX_METADATA_VALUES`].
    values: u64,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`; `path` only names the file in errors.
    pub(super) fn new(buf: &'a [u8], path: &'a Path) -> Self {
        Reader {
            buf,
            pos: 0,
            path,
            values: 0,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(Error::format(
                self.path,
                format!(
                    "truncated file: {what} needs {n} bytes at offset {}, but the file has {} bytes",
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    pub(super) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub(super) fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        // GGUF strings are UTF-8; a stray invalid byte should not make the whole model unusable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// One value of type `ty`; `depth` counts enclosing arrays.
    pub(super) fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        use value_type as t;
        Ok(match ty {
            t::U8 => Value::U8(self.array::<1>(key)?[0]),
            t::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            t::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            t::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            t::U32 => Value::U32(self.u32(key)?),
            t::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            t::U64 => Value::U64(self.u64(key)?),
            t::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            t::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            t::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t::BOOL => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("metadata '{key}': invalid bool byte {b}"))),
            },
            t::STRING => Value::String(self.string(key)?),
            t::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.bad(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(key)?;
                let count = self.u64(key)?;
                // Smallest possible encoding of one element: bounds the count before allocating.
                let min_size: u64 = match elem_ty {
                    t::U8 | t::I8 | t::BOOL => 1,
                    t::U16 | t::I16 => 2,
                    t::U32 | t::I32 | t::F32 => 4,
                    t::U64 | t::I64 | t::F64 | t::STRING => 8,
                    t::ARRAY => 12,
                    other => {
                        return Err(self.bad(format!(
                            "metadata '{key}': unknown array element type {other}"
                        )))
                    }
                };
                if !matches!(count.checked_mul(min_size), Some(b) if b <= self.remaining() as u64) {
                    return Err(self.bad(format!(
                        "metadata '{key}': array of {count} elements does not fit in the {} \
                         bytes left (truncated or corrupt file)",
                        self.remaining()
                    )));
                }
                self.values += count;
                if self.values > MAX_METADATA_VALUES {
                    return Err(self.bad(format!(
                        "metadata '{key}': array of {count} elements takes the file past \
                         {MAX_METADATA_VALUES} metadata values (real models hold under a million)"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            other => return Err(self.bad(format!("metadata '{key}': unknown value type {other}"))),
        })
    }

    pub(super) fn bad(&self, msg: String) -> Error {
        Error::format(self.path, msg)
    }
}
