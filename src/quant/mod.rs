//! ggml tensor types: block layouts byte-compatible with ggml, and dequantization.
//!
//! A quantized row of `n` values is `n / block_size()` blocks of `type_size()` bytes each.
//! The legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) have 32-value blocks; the K-quants
//! (Q4_K, Q5_K, Q6_K, Q8_K) have 256-value super-blocks, so a K-quant tensor's row length
//! must be a multiple of 256 (ggml itself never writes one that is not).

pub mod blocks;
pub mod dequant;
pub mod kquants;
pub mod q5;

pub use dequant::dequantize_row;

/// The ggml tensor types edge-sft understands. Discriminants are the on-disk GGUF type ids.
/// Variant names are ggml's own spelling (`Q4_K`), hence the lint exception.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

impl GgmlType {
    /// Every supported type, in GGUF id order.
    pub const ALL: [GgmlType; 12] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::BF16,
    ];

    /// Map a GGUF type id to a supported type; `None` for unknown or unsupported ids.
    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|&t| t as u32 == id)
    }

    /// Human name as ggml prints it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// The names of all supported types, comma-separated (for error messages).
    pub fn supported_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// True for the K-quants, whose super-blocks hold 256 values.
    pub fn is_k_quant(self) -> bool {
        matches!(
            self,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K
        )
    }

    /// Values per block (1 for plain float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                blocks::QK
            }
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => kquants::QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => blocks::BLOCK_Q4_0_BYTES,
            GgmlType::Q4_1 => blocks::BLOCK_Q4_1_BYTES,
            GgmlType::Q5_0 => q5::BLOCK_Q5_0_BYTES,
            GgmlType::Q5_1 => q5::BLOCK_Q5_1_BYTES,
            GgmlType::Q8_0 => blocks::BLOCK_Q8_0_BYTES,
            GgmlType::Q4_K => kquants::BLOCK_Q4_K_BYTES,
            GgmlType::Q5_K => kquants::BLOCK_Q5_K_BYTES,
            GgmlType::Q6_K => kquants::BLOCK_Q6_K_BYTES,
            GgmlType::Q8_K => kquants::BLOCK_Q8_K_BYTES,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_sizes_match_ggml() {
        // (type, GGUF id, name, values per block, bytes per block) as in ggml's type_traits.
        let want = [
            (GgmlType::F32, 0, "F32", 1, 4),
            (GgmlType::F16, 1, "F16", 1, 2),
            (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
            (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
            (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
            (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
            (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
            (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
            (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
            (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
            (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
            (GgmlType::BF16, 30, "BF16", 1, 2),
        ];
        assert_eq!(want.len(), GgmlType::ALL.len());
        for (t, id, name, bs, ts) in want {
            assert_eq!(GgmlType::from_u32(id), Some(t), "{name}");
            assert_eq!(t as u32, id);
            assert_eq!(t.name(), name);
            assert_eq!(t.block_size(), bs, "{name}");
            assert_eq!(t.type_size(), ts, "{name}");
            assert_eq!(t.is_k_quant(), bs == 256, "{name}");
        }
        // Ids ggml defines but edge-sft does not read (Q4_2/Q4_3 removed, Q8_1, Q2_K, Q3_K,
        // the IQ types, I8..I64, F64, TQ*), and ids past the end.
        for id in [4, 5, 9, 10, 11, 16, 20, 24, 28, 29, 31, 34, 35, 39, 1000] {
            assert_eq!(GgmlType::from_u32(id), None, "id {id}");
        }
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q5_0.row_bytes(64), Some(44));
        assert_eq!(GgmlType::Q5_1.row_bytes(96), Some(72));
        assert_eq!(GgmlType::Q5_0.row_bytes(48), None);
        assert_eq!(GgmlType::Q4_K.row_bytes(256), Some(144));
        assert_eq!(GgmlType::Q4_K.row_bytes(2048), Some(8 * 144));
        assert_eq!(GgmlType::Q5_K.row_bytes(512), Some(352));
        assert_eq!(GgmlType::Q6_K.row_bytes(768), Some(630));
        assert_eq!(GgmlType::Q8_K.row_bytes(256), Some(292));
        assert_eq!(GgmlType::Q6_K.row_bytes(0), Some(0));
        // 640 (Gemma 3 270M's d_model) is 20 legacy blocks but 2.5 super-blocks.
        assert_eq!(GgmlType::Q5_0.row_bytes(640), Some(20 * 22));
        for t in [
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_K,
        ] {
            assert_eq!(t.row_bytes(640), None, "{t:?}");
            assert_eq!(t.row_bytes(32), None, "{t:?}");
        }
        // 292 bytes per 256 values: the byte count of the longest row overflows.
        assert_eq!(GgmlType::Q8_K.row_bytes(usize::MAX / 256 * 256), None);
    }
}
