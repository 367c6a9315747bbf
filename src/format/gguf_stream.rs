//! A streaming GGUF v3 writer: the header, metadata and tensor table are written first (every
//! tensor's size follows from its type and shape, so all offsets are known up front), then the
//! tensors' data in table order, in pieces of any size. Only what the caller holds is in memory,
//! never the whole model. The file is written atomically like [`super::gguf_write::write_atomic`]:
//! a temp file in the same folder, fsync, rename; dropped before [`GgufStreamWriter::finish`], or
//! after an error, the temp file is removed and `path` is untouched.

use super::gguf::{Value, DEFAULT_ALIGNMENT, MAX_DIMS};
use super::gguf_write::encode_header;
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One entry of the tensor table: name, ggml dims (dims[0] = row length) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
}

impl TensorSpec {
    /// Bytes of the tensor's data, or `None` if the row length is not a whole number of blocks
    /// of the type (or the size overflows).
    pub fn n_bytes(&self) -> Option<u64> {
        let row = self
            .dtype
            .row_bytes(usize::try_from(*self.dims.first()?).ok()?)? as u64;
        self.dims[1..]
            .iter()
            .try_fold(row, |a, &d| a.checked_mul(d))
    }
}

/// Writes one GGUF file tensor by tensor. See the module documentation.
pub struct GgufStreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished (or failed): nothing more may be written.
    w: Option<BufWriter<File>>,
    /// (name, data bytes) of each tensor, in table order.
    table: Vec<(String, u64)>,
    align: u64,
    /// The tensor being written and how many of its bytes are written so far.
    cur: usize,
    written: u64,
}

impl GgufStreamWriter {
    /// Validate the table, create the temp file beside `path` and write everything before the
    /// data section. `general.alignment` in `metadata` sets the alignment (default 32).
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self> {
        let align = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT as u64,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::format(
                        path,
                        format!("invalid general.alignment {v:?}"),
                    ))
                }
            },
        };
        let mut table = Vec::with_capacity(tensors.len());
        for t in tensors {
            let err = |msg: String| Error::tensor(path, &t.name, msg);
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(err(format!(
                    "{} dims (expected 1 to {MAX_DIMS})",
                    t.dims.len()
                )));
            }
            let size = t.n_bytes().ok_or_else(|| {
                err(format!(
                    "dims {:?} cannot be stored as {}: the row length must be a multiple of {}",
                    t.dims,
                    t.dtype.name(),
                    t.dtype.block_size()
                ))
            })?;
            if table.iter().any(|(n, _)| *n == t.name) {
                return Err(err("duplicate tensor name".into()));
            }
            table.push((t.name.clone(), size));
        }
        let rows: Vec<(&str, &[u64], GgmlType, u64)> = tensors
            .iter()
            .zip(&table)
            .map(|(t, (_, size))| (t.name.as_str(), t.dims.as_slice(), t.dtype, *size))
            .collect();
        let head = encode_header(metadata, &rows, align).map_err(|e| Error::io(path, e))?;

        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut s = GgufStreamWriter {
            path: path.to_path_buf(),
            tmp,
            w: Some(BufWriter::with_capacity(1 << 20, f)),
            table,
            align,
            cur: 0,
            written: 0,
        };
        s.put(&head)?;
        s.skip_empty();
        Ok(s)
    }

    /// Name of the tensor the next bytes belong to (`None` when all are written).
    pub fn current(&self) -> Option<&str> {
        self.table.get(self.cur).map(|(n, _)| n.as_str())
    }

    /// Append `bytes` to the data section: they fill the current tensor, then the next ones in
    /// table order (padding is inserted between tensors). More bytes than the table declares is
    /// an error.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(&(_, size)) = self.table.get(self.cur) else {
                let n = bytes.len();
                self.fail();
                return Err(Error::format(
                    &self.path,
                    format!("{n} bytes of tensor data beyond the last tensor of the table"),
                ));
            };
            let n = (size - self.written).min(bytes.len() as u64) as usize;
            self.put(&bytes[..n])?;
            bytes = &bytes[n..];
            self.written += n as u64;
            if self.written == size {
                let rem = size % self.align;
                if rem != 0 {
                    self.put(&vec![0u8; (self.align - rem) as usize])?;
                }
                self.cur += 1;
                self.written = 0;
                self.skip_empty();
            }
        }
        Ok(())
    }

    /// Check every tensor was written in full, then flush, fsync and rename over the real path.
    pub fn finish(mut self) -> Result<()> {
        if let Some((name, size)) = self.table.get(self.cur) {
            let msg = format!(
                "only {} of {size} bytes written when the file was finished",
                self.written
            );
            return Err(Error::tensor(&self.path, name.clone(), msg));
        }
        let w = self.w.take().ok_or_else(|| self.broken())?;
        let result = (|| {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            // Persist the rename itself; not every platform can open a directory.
            let dir = self.tmp.parent().unwrap_or(Path::new("."));
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::io(&self.path, e)
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(w) = self.w.as_mut() else {
            return Err(self.broken());
        };
        if let Err(e) = w.write_all(bytes) {
            self.fail();
            return Err(Error::io(&self.path, e));
        }
        Ok(())
    }

    /// Step over tensors with no data (a zero dim), which take no space.
    fn skip_empty(&mut self) {
        while self.table.get(self.cur).is_some_and(|(_, s)| *s == 0) {
            self.cur += 1;
        }
    }

    fn broken(&self) -> Error {
        Error::Usage(format!(
            "{}: the GGUF writer already failed or finished",
            self.path.display()
        ))
    }

    /// Abandon the file: close and remove the temp file.
    fn fail(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for GgufStreamWriter {
    fn drop(&mut self) {
        self.fail();
    }
}
