//! Scalar reference dequantization and quantization of one row, bit-for-bit the same as ggml's
//! `dequantize_row_*` and `quantize_row_*_ref` (ggml-quants.c). SIMD kernels elsewhere are
//! tested against these. Dequantization covers every [`GgmlType`]; quantization only the
//! types edge-sft writes (F32, F16, BF16, Q8_0, Q4_0, Q4_1).

use super::blocks::{
    BlockQ4_0, BlockQ4_1, BlockQ8_0, BLOCK_Q4_0_BYTES, BLOCK_Q4_1_BYTES, BLOCK_Q8_0_BYTES, QK,
};
use super::kquants::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use super::q5::{BlockQ5_0, BlockQ5_1};
use super::GgmlType;
use half::{bf16, f16};

/// Dequantize `src` (a whole number of blocks of `ty`) into `dst` (`dst.len()` values).
///
/// Panics if `src` does not hold exactly `dst.len()` values of `ty`: callers pass rows cut from
/// already bounds-checked tensors, so a mismatch is a programming error, not bad input.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let want = ty.row_bytes(n);
    assert!(
        want == Some(src.len()),
        "dequantize_row: {} row of {n} values needs {want:?} bytes, got {}",
        ty.name(),
        src.len()
    );
    match ty {
        GgmlType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (y, b) in dst
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(BLOCK_Q8_0_BYTES))
            {
                let blk = BlockQ8_0::from_bytes(b);
                let d = blk.d.to_f32();
                for (yj, &q) in y.iter_mut().zip(&blk.qs) {
                    *yj = q as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (y, b) in dst
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(BLOCK_Q4_0_BYTES))
            {
                let blk = BlockQ4_0::from_bytes(b);
                let d = blk.d.to_f32();
                let (lo, hi) = y.split_at_mut(QK / 2);
                for j in 0..QK / 2 {
                    let x0 = (blk.qs[j] & 0x0F) as i32 - 8;
                    let x1 = (blk.qs[j] >> 4) as i32 - 8;
                    lo[j] = x0 as f32 * d;
                    hi[j] = x1 as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (y, b) in dst
                .chunks_exact_mut(QK)
                .zip(src.chunks_exact(BLOCK_Q4_1_BYTES))
            {
                let blk = BlockQ4_1::from_bytes(b);
                let d = blk.d.to_f32();
                let m = blk.m.to_f32();
                let (lo, hi) = y.split_at_mut(QK / 2);
                for j in 0..QK / 2 {
                    let x0 = (blk.qs[j] & 0x0F) as f32;
                    let x1 = (blk.qs[j] >> 4) as f32;
                    lo[j] = x0 * d + m;
                    hi[j] = x1 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => blockwise(ty, src, dst, |b, y| BlockQ5_0::from_bytes(b).dequantize(y)),
        GgmlType::Q5_1 => blockwise(ty, src, dst, |b, y| BlockQ5_1::from_bytes(b).dequantize(y)),
        GgmlType::Q4_K => blockwise(ty, src, dst, |b, y| BlockQ4K::from_bytes(b).dequantize(y)),
        GgmlType::Q5_K => blockwise(ty, src, dst, |b, y| BlockQ5K::from_bytes(b).dequantize(y)),
        GgmlType::Q6_K => blockwise(ty, src, dst, |b, y| BlockQ6K::from_bytes(b).dequantize(y)),
        GgmlType::Q8_K => blockwise(ty, src, dst, |b, y| BlockQ8K::from_bytes(b).dequantize(y)),
    }
}

/// Runs `decode(block bytes, block values)` over the whole blocks of a checked row.
fn blockwise(ty: GgmlType, src: &[u8], dst: &mut [f32], decode: impl Fn(&[u8], &mut [f32])) {
    for (y, b) in dst
        .chunks_exact_mut(ty.block_size())
        .zip(src.chunks_exact(ty.type_size()))
    {
        decode(b, y);
    }
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even, NaN forced to quiet.
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
}

/// Quantize `src` into `ty` blocks appended to `dst`, as ggml's `quantize_row_*_ref` does.
///
/// Panics if `src.len()` is not a whole number of blocks of `ty`; check with
/// [`GgmlType::row_bytes`] first when the length comes from user data. Also panics for the
/// types edge-sft reads but never writes (Q5_0, Q5_1 and the K-quants): no caller asks for
/// them (adapters are written as F32/F16/BF16), so such a call is a programming error.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut Vec<u8>) {
    let bytes = ty.row_bytes(src.len());
    assert!(
        bytes.is_some(),
        "quantize_row: {} values are not a whole number of {} blocks",
        src.len(),
        ty.name()
    );
    dst.reserve(bytes.unwrap_or(0));
    match ty {
        GgmlType::F32 => src.iter().for_each(|v| dst.extend(v.to_le_bytes())),
        GgmlType::F16 => src
            .iter()
            .for_each(|&v| dst.extend(f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => src
            .iter()
            .for_each(|&v| dst.extend(f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q8_0 => src
            .chunks_exact(QK)
            .for_each(|x| quantize_block_q8_0(x).write_to(dst)),
        GgmlType::Q4_0 => src
            .chunks_exact(QK)
            .for_each(|x| quantize_block_q4_0(x).write_to(dst)),
        GgmlType::Q4_1 => src
            .chunks_exact(QK)
            .for_each(|x| quantize_block_q4_1(x).write_to(dst)),
        GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::Q8_K => panic!(
            "quantize_row: edge-sft does not write {} (it only reads it)",
            ty.name()
        ),
    }
}

/// `quantize_row_q8_0_ref` for one block of 32 values.
fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x
        .iter()
        .fold(0.0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8; // roundf: half away from zero
    }
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs,
    }
}

/// `quantize_row_q4_0_ref`: the scale is the signed value of largest magnitude over -8, so that
/// value maps exactly to code 0.
fn quantize_block_q4_0(x: &[f32]) -> BlockQ4_0 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        // (int8_t)(x + 8.5f) truncates toward zero; Rust's `as` does the same (saturating).
        let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    BlockQ4_0 {
        d: f16::from_f32(d),
        qs,
    }
}

/// `quantize_row_q4_1_ref`: 16 levels spanning [min, max].
fn quantize_block_q4_1(x: &[f32]) -> BlockQ4_1 {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qs,
    }
}
