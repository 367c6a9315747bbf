//! ggml tensor types: block layouts byte-compatible with ggml, and dequantization.
//!
//! A quantized row of `n` values is `n / block_size()` blocks of `type_size()` bytes each.

pub mod blocks;
pub mod dequant;

pub use dequant::dequantize_row;

/// The ggml tensor types edge-sft understands. Discriminants are the on-disk GGUF type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    BF16 = 30,
}

impl GgmlType {
    /// Map a GGUF type id to a supported type; `None` for unknown or unsupported ids.
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Human name as ggml prints it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block (1 for plain float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => blocks::BLOCK_Q4_0_BYTES,
            GgmlType::Q4_1 => blocks::BLOCK_Q4_1_BYTES,
            GgmlType::Q8_0 => blocks::BLOCK_Q8_0_BYTES,
        }
    }

    /// Bytes of a row of `n` values, or `None` if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}
