//! Fused dequantize-and-dot for y = x·Wᵀ with one row of x at a time (generation), NEON.
//! Each 32-value block of up to 4 W rows is decoded into registers and dotted with x; the
//! block scales are applied once per block dot: d·(q·x) for Q8_0, d·(q·x − 8·Σx) for Q4_0,
//! d·(q·x) + m·Σx for Q4_1.

use crate::quant::GgmlType;
use std::arch::aarch64::*;

/// W rows and x rows per call.
pub(crate) const ROWS: usize = 4;
pub(crate) const XS: usize = 1;

// Weight types as const-generic parameters (their GGUF ids).
const F32: u8 = GgmlType::F32 as u8;
const F16: u8 = GgmlType::F16 as u8;
const BF16: u8 = GgmlType::BF16 as u8;
const Q8_0: u8 = GgmlType::Q8_0 as u8;
const Q4_0: u8 = GgmlType::Q4_0 as u8;
const Q4_1: u8 = GgmlType::Q4_1 as u8;

/// Bytes of one 32-value block of type T.
const fn block_bytes(t: u8) -> usize {
    match t {
        F32 => 128,
        F16 | BF16 => 64,
        Q8_0 => 34,
        Q4_0 => 18,
        _ => 20, // Q4_1
    }
}

fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass a pointer to the 2 scale bytes inside a whole block.
    let b = unsafe { [*p, *p.add(1)] };
    half::f16::from_le_bytes(b).to_f32()
}

/// 16 unsigned bytes → four f32x4 in order.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn u8x16_to_f32(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_u8(vget_high_u8(v));
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
        vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
        vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))),
    ]
}

/// 16 signed bytes → four f32x4 in order.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn s8x16_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_s8(vget_high_s8(v));
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))),
    ]
}

/// Σ_j w[j]·x[j] over 32 values (8 vectors each), as 4 lanes: two chains, then one add.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot8(w: &[float32x4_t; 8], x: &[float32x4_t; 8]) -> float32x4_t {
    let mut a = vmulq_f32(w[0], x[0]);
    let mut b = vmulq_f32(w[1], x[1]);
    for j in (2..8).step_by(2) {
        a = vfmaq_f32(a, w[j], x[j]);
        b = vfmaq_f32(b, w[j + 1], x[j + 1]);
    }
    vaddq_f32(a, b)
}

/// The 32 raw codes (quantized types) or values (float types) of block b of a row.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes<const T: u8>(row: *const u8, b: usize) -> [float32x4_t; 8] {
    let blk = row.add(block_bytes(T) * b);
    let mut out = [vdupq_n_f32(0.0); 8];
    match T {
        F32 => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = vreinterpretq_f32_u8(vld1q_u8(blk.add(16 * j)));
            }
        }
        F16 => {
            // No stable f16 vector type: convert through a small buffer (exact).
            let mut buf = [0.0f32; 32];
            for (j, v) in buf.iter_mut().enumerate() {
                *v = f16_at(blk.add(2 * j));
            }
            for (j, o) in out.iter_mut().enumerate() {
                *o = vld1q_f32(buf.as_ptr().add(4 * j));
            }
        }
        BF16 => {
            for (j, o) in out.iter_mut().enumerate() {
                let h = vreinterpret_u16_u8(vld1_u8(blk.add(8 * j)));
                *o = vreinterpretq_f32_u32(vshll_n_u16::<16>(h));
            }
        }
        Q8_0 => {
            let q = blk.add(2) as *const i8;
            let a = s8x16_to_f32(vld1q_s8(q));
            let c = s8x16_to_f32(vld1q_s8(q.add(16)));
            out[..4].copy_from_slice(&a);
            out[4..].copy_from_slice(&c);
        }
        _ => {
            // Q4_0 / Q4_1: low nibbles are elements 0..16, high nibbles 16..32.
            let off = if T == Q4_0 { 2 } else { 4 };
            let v = vld1q_u8(blk.add(off));
            let lo = u8x16_to_f32(vandq_u8(v, vdupq_n_u8(0x0F)));
            let hi = u8x16_to_f32(vshrq_n_u8::<4>(v));
            out[..4].copy_from_slice(&lo);
            out[4..].copy_from_slice(&hi);
        }
    }
    out
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn run<const T: u8, const R: usize>(
    rows: &[&[u8]],
    nblocks: usize,
    x: &[f32],
    out: &mut [f32; 8],
) {
    let rp: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let xp = x.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); R];
    for b in 0..nblocks {
        let mut xv = [vdupq_n_f32(0.0); 8];
        for (j, v) in xv.iter_mut().enumerate() {
            *v = vld1q_f32(xp.add(32 * b + 4 * j));
        }
        // Σx over the block, for the Q4 formats' offset terms.
        let sx = if T == Q4_0 || T == Q4_1 {
            let s0 = vaddq_f32(vaddq_f32(xv[0], xv[1]), vaddq_f32(xv[2], xv[3]));
            let s1 = vaddq_f32(vaddq_f32(xv[4], xv[5]), vaddq_f32(xv[6], xv[7]));
            vaddq_f32(s0, s1)
        } else {
            vdupq_n_f32(0.0)
        };
        for r in 0..R {
            let t = dot8(&codes::<T>(rp[r], b), &xv);
            let blk = rp[r].add(block_bytes(T) * b);
            acc[r] = match T {
                Q8_0 => vfmaq_n_f32(acc[r], t, f16_at(blk)),
                Q4_0 => vfmaq_n_f32(acc[r], vfmsq_n_f32(t, sx, 8.0), f16_at(blk)),
                Q4_1 => {
                    let a = vfmaq_n_f32(acc[r], t, f16_at(blk));
                    vfmaq_n_f32(a, sx, f16_at(blk.add(2)))
                }
                _ => vaddq_f32(acc[r], t),
            };
        }
    }
    for r in 0..R {
        out[r] = vaddvq_f32(acc[r]);
    }
}

/// out[r] = Σ_p W_r(p)·x[p] for r < rows.len() (1 or ROWS); n must be 1 (= XS).
///
/// # Safety
/// NEON must be available. Each row must hold exactly `k` values of `ty` with k a multiple
/// of 32, and x at least k values.
pub(crate) unsafe fn dot_rows(
    ty: GgmlType,
    rows: &[&[u8]],
    k: usize,
    x: &[f32],
    _ldx: usize,
    n: usize,
    out: &mut [f32; 8],
) {
    assert!(k.is_multiple_of(32) && (rows.len() == 1 || rows.len() == ROWS) && n == 1);
    assert!(rows.iter().all(|r| ty.row_bytes(k) == Some(r.len())));
    assert!(x.len() >= k);
    let nb = k / 32;
    macro_rules! go {
        ($t:expr) => {
            if rows.len() == 1 {
                run::<{ $t }, 1>(rows, nb, x, out)
            } else {
                run::<{ $t }, ROWS>(rows, nb, x, out)
            }
        };
    }
    match ty {
        GgmlType::F32 => go!(F32),
        GgmlType::F16 => go!(F16),
        GgmlType::BF16 => go!(BF16),
        GgmlType::Q8_0 => go!(Q8_0),
        GgmlType::Q4_0 => go!(Q4_0),
        GgmlType::Q4_1 => go!(Q4_1),
        // Callers check `has_block32_simd` first (see its doc).
        other => panic!("no 32-value block decoder for {}", other.name()),
    }
}
