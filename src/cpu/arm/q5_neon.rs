//! NEON decoders of the 5-bit 32-value block formats Q5_0 and Q5_1 into f32 rows
//! (`neon::dequantize` dispatches here).
//!
//! Bit-identical to the scalar `quant::q5` code: the 5-bit codes are assembled as integers
//! (low nibble from `qs`, 5th bit from `qh`), converted exactly, and then each value is one
//! multiply — (q − 16)·d for Q5_0 — or a multiply then an add — q·d + m for Q5_1 — each
//! rounded once, never fused (no `vfmaq`). The products are exact in f32 anyway (an 11-bit f16
//! significand times a 5-bit code), so only the Q5_1 add rounds.
//!
//! Block b of `src` becomes `dst[32·b .. 32·b + 32]`. Bounds: `check_len` ties both slice
//! lengths to the block count before any pointer arithmetic; blocks come from `chunks_exact`,
//! the one 16-byte load per block reads its last 16 bytes (`qs`), and every store writes 4
//! floats inside the block's 32-value output chunk.

use super::gemv_neon::{s8x16_to_f32, u8x16_to_f32};
use crate::quant::q5::{BLOCK_Q5_0_BYTES, BLOCK_Q5_1_BYTES};
use half::f16;
use std::arch::aarch64::*;

const QK: usize = 32;

fn check_len(src: &[u8], dst: &[f32], block_bytes: usize) {
    assert!(
        src.len().is_multiple_of(block_bytes) && src.len() / block_bytes * QK == dst.len(),
        "Q5 NEON row decoder: {} bytes for {} values",
        src.len(),
        dst.len()
    );
}

fn f16_le(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The 32 unsigned 5-bit codes of a block, elements 0..16 and 16..32: element j has the low
/// nibble of qs[j] (j < 16) or the high nibble of qs[j − 16], and bit j of the little-endian
/// u32 `qh` as its 5th bit (as `quant::q5::codes`).
///
/// # Safety
/// NEON; `qs` must be readable for 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes(qh: [u8; 4], qs: *const u8) -> (uint8x16_t, uint8x16_t) {
    // Lane j of a group of 16 tests bit j % 8 of qh byte j / 8 (of that group's 2 bytes).
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = vld1q_u8(BITS.as_ptr());
    let bit4 = vdupq_n_u8(0x10);
    let fifth = |b0: u8, b1: u8| {
        let rep = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
        vandq_u8(vtstq_u8(rep, bits), bit4)
    };
    let v = vld1q_u8(qs);
    (
        vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), fifth(qh[0], qh[1])),
        vorrq_u8(vshrq_n_u8::<4>(v), fifth(qh[2], qh[3])),
    )
}

/// Q5_0 row → f32: x = (q − 16)·d, `dst.len()` = 32 × the blocks in `src`.
///
/// # Safety
/// NEON must be available (every AArch64 CPU has it); the length contract is checked here.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q5_0(src: &[u8], dst: &mut [f32]) {
    check_len(src, dst, BLOCK_Q5_0_BYTES);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q5_0_BYTES)
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_le(&blk[0..2]);
        // SAFETY: qs is block bytes 6 .. 22: inside the 22-byte block.
        let (lo, hi) = codes([blk[2], blk[3], blk[4], blk[5]], blk.as_ptr().add(6));
        let o = y.as_mut_ptr();
        for (g, c) in [lo, hi].into_iter().enumerate() {
            // q − 16 in i8 (exact: q < 32), converted exactly, then one rounding: (q − 16)·d.
            let c = vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(16));
            for (j, q) in s8x16_to_f32(c).into_iter().enumerate() {
                // SAFETY: 16g + 4j + 4 ≤ 32: inside y.
                vst1q_f32(o.add(16 * g + 4 * j), vmulq_n_f32(q, d));
            }
        }
    }
}

/// Q5_1 row → f32: x = q·d + m, `dst.len()` = 32 × the blocks in `src`.
///
/// # Safety
/// NEON must be available; the length contract is checked here.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q5_1(src: &[u8], dst: &mut [f32]) {
    check_len(src, dst, BLOCK_Q5_1_BYTES);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q5_1_BYTES)
        .zip(dst.chunks_exact_mut(QK))
    {
        let (d, vm) = (f16_le(&blk[0..2]), vdupq_n_f32(f16_le(&blk[2..4])));
        // SAFETY: qs is block bytes 8 .. 24: inside the 24-byte block.
        let (lo, hi) = codes([blk[4], blk[5], blk[6], blk[7]], blk.as_ptr().add(8));
        let o = y.as_mut_ptr();
        for (g, c) in [lo, hi].into_iter().enumerate() {
            for (j, q) in u8x16_to_f32(c).into_iter().enumerate() {
                // q·d + m: multiply, then add, each rounded once, as the scalar code.
                // SAFETY: 16g + 4j + 4 ≤ 32: inside y.
                vst1q_f32(o.add(16 * g + 4 * j), vaddq_f32(vmulq_n_f32(q, d), vm));
            }
        }
    }
}
