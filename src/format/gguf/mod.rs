//! GGUF v2/v3 reader. The file is memory-mapped and tensors are used in place.
//!
//! Layout (little-endian): magic "GGUF", version u32, tensor_count u64, kv_count u64,
//! kv_count × (key: string, type: u32, value), tensor_count × (name: string, n_dims: u32,
//! dims: n_dims × u64, type: u32, offset: u64), padding to `general.alignment` (default 32),
//! then the data section; tensor offsets are relative to its start. A string is a u64 length
//! followed by that many bytes. Every count, length and offset is checked against the bytes that
//! remain before it is used, so a lying file gives an `Error`, never a panic or a huge allocation.
//!
//! Files: `value` (metadata value types), `reader` (the bounded header cursor), this one (the
//! file: header parse, tensor checks, lookups).

mod reader;
mod value;

pub use reader::MAX_METADATA_VALUES;
pub use value::{value_type, Value};

use crate::error::{Error, Result};
use crate::model::weights::{Backing, QMatrix};
use crate::quant::{dequantize_row, GgmlType};
use memmap2::Mmap;
use reader::Reader;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the tensor data in the file (already bounds-checked).
    pub offset: usize,
    /// Byte length of the tensor data (already bounds-checked).
    pub size: usize,
}

impl TensorInfo {
    /// Number of values (product of dims; fits usize since the bytes fit in the file).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub mmap: Arc<Mmap>,
    /// `general.alignment` (default 32).
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    index: HashMap<String, usize>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::format(
                path,
                format!("truncated file: {len} bytes is shorter than a GGUF header (24 bytes)"),
            ));
        }
        // A file truncated or rewritten while mapped: see `mapped` (a clear error and exit,
        // not a bare SIGBUS; a rename over the file keeps working on the old inode).
        let mmap = super::mapped::map_file(path, &file)?;
        Self::parse(path, mmap)
    }

    /// Parse a GGUF held in memory (fuzzing, tests, files already read); `path` only names it
    /// in errors. The bytes are copied into an anonymous read-only map, so the result is the
    /// same type, with the same checks, as a file opened with [`GgufFile::open`].
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 24 {
            return Err(Error::format(
                path,
                format!(
                    "truncated file: {} bytes is shorter than a GGUF header (24 bytes)",
                    bytes.len()
                ),
            ));
        }
        let mut anon = memmap2::MmapMut::map_anon(bytes.len()).map_err(|e| Error::io(path, e))?;
        anon.copy_from_slice(bytes);
        let mmap = anon.make_read_only().map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(mmap))
    }

    fn parse(path: &Path, mmap: Arc<Mmap>) -> Result<Self> {
        let buf: &[u8] = &mmap;
        let mut r = Reader::new(buf, path);
        let magic = r.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::format(
                path,
                format!("not a GGUF file: wrong magic {magic:02x?} (expected \"GGUF\")"),
            ));
        }
        let version = r.u32("version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(r.bad("big-endian GGUF files are not supported".into()));
        }
        if version != 2 && version != 3 {
            return Err(r.bad(format!(
                "unsupported GGUF version {version} (only versions 2 and 3 are supported)"
            )));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        if !matches!(n_kv.checked_mul(13), Some(b) if b <= r.remaining() as u64) {
            return Err(r.bad(format!(
                "header claims {n_kv} metadata entries, which cannot fit in the file ({} bytes; \
                 truncated or corrupt file)",
                buf.len()
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.bad(format!("duplicate metadata key '{key}'")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(r.bad(format!("invalid general.alignment {v:?}"))),
            },
        };

        // A tensor info takes at least 8 (name length) + 4 + 4 (type) + 8 (offset) bytes.
        if !matches!(n_tensors.checked_mul(24), Some(b) if b <= r.remaining() as u64) {
            return Err(r.bad(format!(
                "header claims {n_tensors} tensors, which cannot fit in the file ({} bytes; \
                 truncated or corrupt file)",
                buf.len()
            )));
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::tensor(
                    path,
                    &name,
                    format!("{n_dims} dimensions (expected 1 to {MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)?);
            }
            let type_id = r.u32(&name)?;
            let rel_offset = r.u64(&name)?;
            raw.push((name, dims, type_id, rel_offset));
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut index = HashMap::with_capacity(raw.len());
        for (name, dims, type_id, rel_offset) in raw {
            let t = Self::check_tensor(
                path,
                buf.len(),
                data_offset,
                alignment,
                name,
                dims,
                type_id,
                rel_offset,
            )?;
            if index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(Error::tensor(path, &t.name, "duplicate tensor name"));
            }
            tensors.push(t);
        }
        Self::check_disjoint(path, &tensors)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap,
            alignment,
            data_offset,
            index,
        })
    }

    /// No two tensors may share data bytes. Writers never alias tensors, and with aliasing a
    /// small file could name the same bytes under many names (e.g. thousands of layers), making
    /// every per-tensor allocation (a dequantized norm, a LoRA pair sized from it) repeat far
    /// beyond what the file holds. With disjoint data, the tensors' sizes sum to at most the
    /// file's size.
    fn check_disjoint(path: &Path, tensors: &[TensorInfo]) -> Result<()> {
        let mut spans: Vec<(usize, usize, &str)> = tensors
            .iter()
            .filter(|t| t.size > 0)
            .map(|t| (t.offset, t.offset + t.size, t.name.as_str()))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, end, a), (start, _, b)) = (w[0], w[1]);
            if start < end {
                return Err(Error::tensor(
                    path,
                    b,
                    format!("data overlaps the data of tensor '{a}' (corrupt or crafted file)"),
                ));
            }
        }
        Ok(())
    }

    /// Validate one tensor info against the file and turn it into absolute, checked offsets.
    #[allow(clippy::too_many_arguments)]
    fn check_tensor(
        path: &Path,
        file_len: usize,
        data_offset: usize,
        alignment: usize,
        name: String,
        dims: Vec<u64>,
        type_id: u32,
        rel_offset: u64,
    ) -> Result<TensorInfo> {
        let err = |msg: String| Error::tensor(path, &name, msg);
        let dtype = GgmlType::from_u32(type_id).ok_or_else(|| {
            err(format!(
                "unknown or unsupported tensor type id {type_id} (supported: {})",
                GgmlType::supported_names()
            ))
        })?;
        let n_el = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let row = usize::try_from(dims[0])
            .ok()
            .and_then(|n| dtype.row_bytes(n));
        let size = match (n_el, row) {
            (None, _) => return Err(err(format!("dims {dims:?} overflow"))),
            (_, None) => {
                // K-quant super-blocks hold 256 values; ggml never writes a K-quant row of
                // another length, so this is a corrupt or hand-made file.
                let why = if dtype.is_k_quant() {
                    " (K-quant super-blocks hold 256 values)"
                } else {
                    ""
                };
                return Err(err(format!(
                    "row length {} is not a whole number of {} blocks of {}{why}",
                    dims[0],
                    dtype.name(),
                    dtype.block_size()
                )));
            }
            (Some(_), Some(row)) => dims[1..]
                .iter()
                .try_fold(row as u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| err(format!("dims {dims:?} overflow")))?,
        };
        if !rel_offset.is_multiple_of(alignment as u64) {
            return Err(err(format!(
                "data offset {rel_offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = (data_offset as u64).checked_add(rel_offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
                name,
                dims,
                dtype,
                offset: start as usize,
                size: size as usize,
            }),
            _ => Err(err(format!(
                "data at offset {rel_offset} (+{data_offset}) with size {size} lies beyond the \
                 end of the file ({file_len} bytes; truncated or corrupt file)"
            ))),
        }
    }

    /// Size of the mapped file in bytes.
    pub fn file_size(&self) -> usize {
        self.mmap.len()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Any integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u64().and_then(|x| u32::try_from(x).ok())
    }

    /// Any integer type that fits in usize.
    pub fn get_usize(&self, key: &str) -> Option<usize> {
        self.get(key)?
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
    }

    /// F32, F64 or an integer.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array of strings; `None` if missing or any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(Value::as_str)
            .collect()
    }

    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor, or an error naming it and the file.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "not found in GGUF file"))
    }

    /// The raw bytes of a tensor of this file (bounds were checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.offset..t.offset + t.size]
    }

    /// A 2-D tensor as a frozen matrix [rows = dims[1], cols = dims[0]], used in place.
    /// A 1-D tensor is a matrix with one row; trailing dims of 1 are ignored.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let t = self.require(name)?;
        if t.dims.len() > 2 && t.dims[2..].iter().any(|&d| d != 1) {
            return Err(Error::tensor(
                &self.path,
                name,
                format!("has dims {:?}; expected a 1-D or 2-D tensor", t.dims),
            ));
        }
        let cols = t.dims[0] as usize;
        let rows = t.dims.get(1).copied().unwrap_or(1) as usize;
        QMatrix::new(
            name,
            t.dtype,
            rows,
            cols,
            Backing::Mapped(self.mmap.clone()),
            t.offset,
        )
        .ok_or_else(|| Error::tensor(&self.path, name, "data does not fit its shape"))
    }

    /// A 1-D tensor (norm weight, bias) dequantized to f32; trailing dims of 1 are ignored.
    pub fn vector_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        if t.dims[1..].iter().any(|&d| d != 1) {
            return Err(Error::tensor(
                &self.path,
                name,
                format!("has dims {:?}; expected a 1-D tensor", t.dims),
            ));
        }
        let mut out = vec![0f32; t.dims[0] as usize];
        dequantize_row(t.dtype, self.tensor_bytes(t), &mut out);
        Ok(out)
    }

    /// Any tensor dequantized to f32 in ggml order (tests, export). Allocates the whole tensor.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        let mut out = vec![0f32; t.n_elements()];
        let row = t.dims[0] as usize;
        // Validated at open: dims[0] is a whole number of blocks.
        let row_bytes = t.dtype.row_bytes(row).unwrap_or(0);
        if row > 0 && row_bytes > 0 {
            for (dst, src) in out
                .chunks_exact_mut(row)
                .zip(self.tensor_bytes(t).chunks_exact(row_bytes))
            {
                dequantize_row(t.dtype, src, dst);
            }
        }
        Ok(out)
    }
}
