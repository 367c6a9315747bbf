//! Frozen weights as they are stored: a 2-D matrix in its ggml type, backed by the mapped file
//! (or an owned buffer), never dequantized as a whole.

use crate::quant::{dequantize_row, GgmlType};
use memmap2::Mmap;
use std::sync::Arc;

/// Where the bytes of a frozen tensor live.
#[derive(Clone)]
pub enum Backing {
    Mapped(Arc<Mmap>),
    Owned(Arc<Vec<u8>>),
}

impl Backing {
    fn all(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => &m[..],
            Backing::Owned(v) => &v[..],
        }
    }
}

/// A frozen weight matrix W of shape [rows = out_features, cols = in_features], row-major,
/// each row stored as `cols / block_size` ggml blocks.
#[derive(Clone)]
pub struct QMatrix {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    backing: Backing,
    offset: usize,
    row_bytes: usize,
}

impl QMatrix {
    /// Build from a byte range that the caller has already bounds-checked to hold exactly
    /// `rows * row_bytes(cols)` bytes. Returns `None` if the range does not fit.
    pub fn new(
        name: impl Into<String>,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        backing: Backing,
        offset: usize,
    ) -> Option<Self> {
        let row_bytes = dtype.row_bytes(cols)?;
        let len = row_bytes.checked_mul(rows)?;
        let end = offset.checked_add(len)?;
        if end > backing.all().len() {
            return None;
        }
        Some(QMatrix {
            name: name.into(),
            dtype,
            rows,
            cols,
            backing,
            offset,
            row_bytes,
        })
    }

    /// An owned f32 matrix (tests, merged weights). `data` is [rows, cols].
    pub fn from_f32(name: impl Into<String>, rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "from_f32: data length");
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        QMatrix::new(
            name,
            GgmlType::F32,
            rows,
            cols,
            Backing::Owned(Arc::new(bytes)),
            0,
        )
        .expect("owned f32 matrix always fits")
    }

    /// All bytes of the matrix.
    pub fn bytes(&self) -> &[u8] {
        &self.backing.all()[self.offset..self.offset + self.row_bytes * self.rows]
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The stored bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let start = self.offset + r * self.row_bytes;
        &self.backing.all()[start..start + self.row_bytes]
    }

    /// Dequantize row `r` into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(r), out);
    }
}

impl QMatrix {
    /// A view of rows `start..end` sharing the same bytes (used to walk the vocabulary in chunks).
    pub fn slice_rows(&self, start: usize, end: usize) -> QMatrix {
        assert!(start <= end && end <= self.rows, "slice_rows out of range");
        QMatrix {
            name: self.name.clone(),
            dtype: self.dtype,
            rows: end - start,
            cols: self.cols,
            backing: self.backing.clone(),
            offset: self.offset + start * self.row_bytes,
            row_bytes: self.row_bytes,
        }
    }
}
