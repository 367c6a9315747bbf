//! Scalar dequantization of one row. STUB — to be implemented.
use super::GgmlType;

/// Dequantize `src` (a whole number of blocks of `ty`) into `dst` (`dst.len()` values).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let _ = (ty, src, dst);
    unimplemented!("dequantize_row")
}
