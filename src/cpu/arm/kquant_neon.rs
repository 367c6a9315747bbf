//! NEON decoders of the K-quant super-blocks Q4_K, Q5_K and Q6_K into f32 rows (the AArch64
//! counterpart of `x86/kquant.rs`; `neon::dequantize` dispatches here, and through it the
//! frozen-weight panels of `panel.rs` and the GEMV rows of `gemv.rs`).
//!
//! Bit-identical to the scalar `quant::kquants` code: the per-sub-block factors (d·sc and
//! dmin·m for Q4_K/Q5_K, d·sc for Q6_K) are the same scalar f32 products, the codes are small
//! integers converted exactly, and each value is then one `vmulq_f32` (and for Q4_K/Q5_K one
//! `vsubq_f32`) in the scalar code's order, `d0 * q - mn0` / `sc * (q − 32)`, never fused (no
//! `vfmaq`/`vfmsq`). In fact every product here is exact in f32 (d and dmin have at most 11
//! significant bits, sc and m at most 6 (Q6_K: 7), the codes at most 5: at most 23 bits), so
//! only the final subtract of Q4_K/Q5_K rounds (Q6_K: nothing); keeping the scalar code's
//! operand order still matters for the sign of zero results and for which NaN propagates.
//!
//! What the caller asks for: a row of these types is a whole number of 256-value super-blocks
//! (`GgmlType::row_bytes` refuses any other length, and `check_row_len` asserts it again),
//! and block b of `src` becomes `dst[256·b .. 256·b + 256]` in value order. Callers that need
//! a part of a super-block (the W panels of dy·W, whose column tiles can cut through one) decode
//! the whole super-block into a buffer and copy their part (`panel::dequant_segment`).
//!
//! Bounds: `check_row_len` ties both slice lengths to the block count before any pointer
//! arithmetic; blocks come from `chunks_exact`, and every load reads 16 bytes at an offset
//! that the block layout keeps inside the 144-, 176- or 210-byte block (offsets noted at each
//! load); every store writes 4 floats inside the block's 256-value output chunk.

use super::gemv_neon::{s8x16_to_f32, u8x16_to_f32};
use crate::quant::kquants::{
    check_row_len, q45k_factors, q6k_factors, BLOCK_Q4_K_BYTES, BLOCK_Q5_K_BYTES, BLOCK_Q6_K_BYTES,
    QK_K,
};
use std::arch::aarch64::*;

/// Stores (d·q − m) for 16 unsigned codes at `o`: the scalar `d0 * q as f32 - mn0`, a
/// multiply then a subtract, each rounded once.
///
/// # Safety
/// NEON; `o` must be writable for 16 floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_dq_minus_m(o: *mut f32, codes: uint8x16_t, d: f32, m: f32) {
    let (vd, vm) = (vdupq_n_f32(d), vdupq_n_f32(m));
    for (j, q) in u8x16_to_f32(codes).into_iter().enumerate() {
        // SAFETY: 4j + 4 ≤ 16 floats, writable by this function's contract.
        vst1q_f32(o.add(4 * j), vsubq_f32(vmulq_f32(vd, q), vm));
    }
}

/// Q4_K row → f32: `dst.len()` = 256 × the blocks in `src`.
///
/// Each 64 values 64i .. 64i + 64 (i < 4) come from the 32 code bytes qs[32i .. 32i + 32]:
/// low nibbles are sub-block 2i (values 64i + l), high nibbles sub-block 2i + 1 (64i + 32 + l).
///
/// # Safety
/// NEON must be available (every AArch64 CPU has it); the length contract is checked here.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q4k(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q4_K_BYTES);
    let m4 = vdupq_n_u8(0x0F);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q4_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let f = q45k_factors(blk);
        let (q, o) = (blk.as_ptr().add(16), y.as_mut_ptr());
        for i in 0..4 {
            let ((d0, m0), (d1, m1)) = (f[2 * i], f[2 * i + 1]);
            for h in [0, 16] {
                // SAFETY: qs bytes 32i + h .. +16 ≤ 128 after the 16 header bytes: inside
                // the 144-byte block.
                let v = vld1q_u8(q.add(32 * i + h));
                let at = 64 * i + h;
                // SAFETY: values at .. at + 16 and at + 32 .. at + 48 are < 256: inside y.
                store_dq_minus_m(o.add(at), vandq_u8(v, m4), d0, m0);
                store_dq_minus_m(o.add(at + 32), vshrq_n_u8::<4>(v), d1, m1);
            }
        }
    }
}

/// Q5_K row → f32: as [`q4k`] with a 5th bit per code from the 32 bytes qh (block bytes
/// 16..48; the codes qs follow at 48): value 64i + l takes bit 2i of qh[l] and value
/// 64i + 32 + l bit 2i + 1 (l < 32, i < 4), as `BlockQ5K::dequantize`.
///
/// # Safety
/// NEON must be available; the length contract is checked here.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q5k(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q5_K_BYTES);
    let (m4, bit4) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x10));
    for (blk, y) in src
        .chunks_exact(BLOCK_Q5_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let f = q45k_factors(blk);
        let (p, o) = (blk.as_ptr(), y.as_mut_ptr());
        // SAFETY: qh bytes 16 .. 32 and 32 .. 48: inside the 176-byte block.
        let qh = [vld1q_u8(p.add(16)), vld1q_u8(p.add(32))];
        for i in 0..4 {
            let ((d0, m0), (d1, m1)) = (f[2 * i], f[2 * i + 1]);
            let (b0, b1) = (vdupq_n_u8(1 << (2 * i)), vdupq_n_u8(2 << (2 * i)));
            for (hh, h) in [0, 16].into_iter().enumerate() {
                // SAFETY: qs bytes 48 + 32i + h .. +16 ≤ 176: inside the block.
                let v = vld1q_u8(p.add(48 + 32 * i + h));
                // 0x10 where the selected qh bit is set (vtst: all ones where x & bit ≠ 0).
                let h0 = vandq_u8(vtstq_u8(qh[hh], b0), bit4);
                let h1 = vandq_u8(vtstq_u8(qh[hh], b1), bit4);
                let at = 64 * i + h;
                // SAFETY: values at .. at + 16 and at + 32 .. at + 48 are < 256: inside y.
                store_dq_minus_m(o.add(at), vorrq_u8(vandq_u8(v, m4), h0), d0, m0);
                store_dq_minus_m(o.add(at + 32), vorrq_u8(vshrq_n_u8::<4>(v), h1), d1, m1);
            }
        }
    }
}

/// The 6-bit codes minus 32 of 4 × 16 Q6_K values sharing 16 qh bytes: `a` = ql[l..l+16],
/// `b` = ql[l+32..l+48], `h` = qh[l..l+16]; code k takes a/b's low (k < 2) or high nibble and
/// bit pair k of h, as in `BlockQ6K::dequantize`. The codes are < 64, so q − 32 fits i8 exactly.
///
/// # Safety
/// NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q6k_codes(a: uint8x16_t, b: uint8x16_t, h: uint8x16_t) -> [int8x16_t; 4] {
    let (m4, m2) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x03));
    let hi2 = |x: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(x, m2));
    let codes = [
        vorrq_u8(vandq_u8(a, m4), hi2(h)),
        vorrq_u8(vandq_u8(b, m4), hi2(vshrq_n_u8::<2>(h))),
        vorrq_u8(vshrq_n_u8::<4>(a), hi2(vshrq_n_u8::<4>(h))),
        vorrq_u8(vshrq_n_u8::<4>(b), vshlq_n_u8::<4>(vshrq_n_u8::<6>(h))),
    ];
    codes.map(|c| vsubq_s8(vreinterpretq_s8_u8(c), vdupq_n_s8(32)))
}

/// Q6_K row → f32: `dst.len()` = 256 × the blocks in `src`.
///
/// # Safety
/// NEON must be available; the length contract is checked here.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q6k(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q6_K_BYTES);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q6_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let sc = q6k_factors(blk);
        let (p, o) = (blk.as_ptr(), y.as_mut_ptr());
        for h in 0..2 {
            for l in [0, 16] {
                // SAFETY: ql bytes 64h + l (+32) .. +16 ≤ 128, qh bytes 128 + 32h + l .. +16
                // ≤ 192: inside the 210-byte block.
                let a = vld1q_u8(p.add(64 * h + l));
                let b = vld1q_u8(p.add(64 * h + l + 32));
                let hb = vld1q_u8(p.add(128 + 32 * h + l));
                for (k, codes) in q6k_codes(a, b, hb).into_iter().enumerate() {
                    // 16 values v .. v + 16 with one scale (v is a multiple of 16).
                    let v = 128 * h + 32 * k + l;
                    let vs = vdupq_n_f32(sc[v / 16]);
                    for (j, q) in s8x16_to_f32(codes).into_iter().enumerate() {
                        // One rounding: (d·sc)·(q − 32), as the scalar code.
                        // SAFETY: v + 4j + 4 ≤ 256: inside y.
                        vst1q_f32(o.add(v + 4 * j), vmulq_f32(vs, q));
                    }
                }
            }
        }
    }
}
