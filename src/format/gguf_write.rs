//! A small GGUF v3 writer: metadata of every value type and tensors padded to the alignment.
//! Used by tests, adapter export and `quantize`. Files are written atomically (temp file in the
//! same folder, fsync, rename), so a crash never leaves a half-written model under the real name.

use super::gguf::{Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Collects metadata and tensors, then writes them as one GGUF v3 file. Tensor data may be
/// borrowed (e.g. straight from another mapped model) or owned.
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Set a metadata key (replacing an earlier value); keys keep their first insertion order.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Shorthands for the common value types.
    pub fn set_str(&mut self, key: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.set(key, Value::String(v.into()))
    }

    pub fn set_u32(&mut self, key: impl Into<String>, v: u32) -> &mut Self {
        self.set(key, Value::U32(v))
    }

    pub fn set_f32(&mut self, key: impl Into<String>, v: f32) -> &mut Self {
        self.set(key, Value::F32(v))
    }

    pub fn set_bool(&mut self, key: impl Into<String>, v: bool) -> &mut Self {
        self.set(key, Value::Bool(v))
    }

    pub fn set_str_array<S: AsRef<str>>(&mut self, key: impl Into<String>, v: &[S]) -> &mut Self {
        let items = v
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect();
        self.set(key, Value::Array(items))
    }

    /// Alignment of the data section and of every tensor (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .map_or(DEFAULT_ALIGNMENT, |a| a as usize)
    }

    /// Add a tensor. `dims` are in ggml order (dims[0] = row length); `data` must hold exactly
    /// the bytes of that shape in `dtype`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let data = data.into();
        let err = |msg: String| Error::tensor("<gguf writer>", &name, msg);
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(err(format!(
                "{} dims (expected 1 to {MAX_DIMS})",
                dims.len()
            )));
        }
        let want = dtype.row_bytes(dims[0] as usize).and_then(|r| {
            dims[1..]
                .iter()
                .try_fold(r, |a, &d| a.checked_mul(d as usize))
        });
        if want != Some(data.len()) {
            return Err(err(format!(
                "{} bytes given, but dims {dims:?} in {} need {want:?}",
                data.len(),
                dtype.name()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err("duplicate tensor name".into()));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            dtype,
            data,
        });
        Ok(self)
    }

    /// Add an f32 tensor from values (ggml order).
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> Result<&mut Self> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, bytes)
    }

    /// The whole file as bytes (tests build corrupt files from this).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .map_err(|e| Error::io("<gguf writer>", e))?;
        Ok(out)
    }

    /// Write the file to `w` (not atomic; see [`GgufWriter::write`]).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let align = self.alignment() as u64;
        let table: Vec<(&str, &[u64], GgmlType, u64)> = self
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.dims.as_slice(),
                    t.dtype,
                    t.data.len() as u64,
                )
            })
            .collect();
        w.write_all(&encode_header(&self.metadata, &table, align)?)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let rem = (t.data.len() as u64) % align;
            if rem != 0 {
                w.write_all(&vec![0u8; (align - rem) as usize])?;
            }
        }
        Ok(())
    }

    /// Write atomically to `path`: a temp file beside it, fsync, then rename over `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, |f| self.write_to(f))
    }
}

/// Create `path` atomically: `fill` writes a temp file in the same folder, which is flushed,
/// fsynced and renamed over `path`. On failure the temp file is removed.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so best effort.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The GGUF v3 header, metadata and tensor table, padded to `align`: everything before the data
/// section. `tensors` are (name, ggml dims, type, data bytes); each tensor's data offset is the
/// sum of the earlier sizes, each rounded up to `align`. Shared by [`GgufWriter`] and the
/// streaming writer (format/gguf_stream.rs), so both lay files out identically.
pub(crate) fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[(&str, &[u64], GgmlType, u64)],
    align: u64,
) -> std::io::Result<Vec<u8>> {
    for (k, v) in metadata {
        if !uniform(v) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("metadata '{k}': GGUF arrays must hold one element type"),
            ));
        }
    }
    let mut head = Vec::new();
    head.extend_from_slice(&GGUF_MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut head, v);
    }
    // Data offsets are relative to the data section; each tensor starts aligned.
    let mut offset = 0u64;
    for (name, dims, dtype, size) in tensors {
        put_str(&mut head, name);
        head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&(*dtype as u32).to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + size).div_ceil(align) * align;
    }
    pad(&mut head, align);
    Ok(head)
}

fn pad(buf: &mut Vec<u8>, align: u64) {
    let rem = buf.len() as u64 % align;
    if rem != 0 {
        buf.resize(buf.len() + (align - rem) as usize, 0);
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Whether every array inside `v` holds a single element type (GGUF cannot store others).
fn uniform(v: &Value) -> bool {
    match v {
        Value::Array(items) => {
            items.windows(2).all(|w| w[0].type_id() == w[1].type_id()) && items.iter().all(uniform)
        }
        _ => true,
    }
}

/// The value's payload (its type id is written by the caller). An array's element type is that
/// of its first element; an empty array is written as an empty array of U8.
fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_str(buf, s),
        Value::Array(items) => {
            let elem = items.first().map_or(Value::U8(0).type_id(), Value::type_id);
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(buf, it);
            }
        }
    }
}
