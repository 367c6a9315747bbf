//! AArch64 NEON (Advanced SIMD) kernels, 4 f32 lanes.
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature(enable = "neon")]`:
//! callers must have checked the CPU (`dispatch::check`). Slices are only read within their
//! lengths; the raw-pointer GEMM kernel documents its contract.

use crate::quant::GgmlType;
use std::arch::aarch64::*;

/// GEMM micro-tile: 8 rows × 8 columns = 16 q-register accumulators (of 32).
pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 8;

fn f16_at(p: &[u8]) -> f32 {
    half::f16::from_le_bytes([p[0], p[1]]).to_f32()
}

/// e^x for 4 lanes: the same Cephes polynomial and range handling as `x86::avx2::exp`
/// (x > 88.72 → +inf, x < −88 → 0, NaN stays NaN).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn exp(x: float32x4_t) -> float32x4_t {
    let hi = vdupq_n_f32(88.722_83);
    let lo = vdupq_n_f32(-88.0);
    // vmaxq/vminq propagate NaN.
    let xc = vminq_f32(hi, vmaxq_f32(lo, x));
    let n = vcvtnq_s32_f32(vmulq_n_f32(xc, std::f32::consts::LOG2_E));
    let nf = vcvtq_f32_s32(n);
    let r = vfmsq_f32(xc, nf, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, nf, vdupq_n_f32(-2.121_944_4e-4));
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    y = vfmaq_f32(vdupq_n_f32(1.398_199_9e-3), y, r);
    y = vfmaq_f32(vdupq_n_f32(8.333_452e-3), y, r);
    y = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), y, r);
    y = vfmaq_f32(vdupq_n_f32(0.166_666_65), y, r);
    y = vfmaq_f32(vdupq_n_f32(0.5), y, r);
    y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
    // 2^n as 2^(n>>1) · 2^(n − n>>1): both factors stay normal for n in [−127, 128].
    let n1 = vshrq_n_s32::<1>(n);
    let n2 = vsubq_s32(n, n1);
    let bias = vdupq_n_s32(127);
    let p1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
    let p2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
    let res = vmulq_f32(vmulq_f32(y, p1), p2);
    let res = vbslq_f32(vcltq_f32(x, lo), vdupq_n_f32(0.0), res);
    vbslq_f32(vcgtq_f32(x, hi), vdupq_n_f32(f32::INFINITY), res)
}

/// Up to 4 values into a vector, the rest `fill`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_partial(x: &[f32], fill: f32) -> float32x4_t {
    let mut buf = [fill; 4];
    buf[..x.len()].copy_from_slice(x);
    vld1q_f32(buf.as_ptr())
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = i + 4 * u;
            *acc_u = vfmaq_f32(*acc_u, vld1q_f32(pa.add(o)), vld1q_f32(pb.add(o)));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        i += 4;
    }
    let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut s = vaddvq_f32(v);
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    while i + 4 <= n {
        let py = y.as_mut_ptr().add(i);
        vst1q_f32(
            py,
            vfmaq_n_f32(vld1q_f32(py), vld1q_f32(x.as_ptr().add(i)), alpha),
        );
        i += 4;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn scale(alpha: f32, x: &mut [f32]) {
    let n = x.len();
    let mut i = 0;
    while i + 4 <= n {
        let p = x.as_mut_ptr().add(i);
        vst1q_f32(p, vmulq_n_f32(vld1q_f32(p), alpha));
        i += 4;
    }
    for v in &mut x[i..] {
        *v *= alpha;
    }
}

/// out = x · s · w (elementwise, s a scalar): the second half of RMSNorm.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn mul3(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
    let n = x.len().min(w.len()).min(out.len());
    let mut i = 0;
    while i + 4 <= n {
        let v = vmulq_n_f32(vld1q_f32(x.as_ptr().add(i)), s);
        vst1q_f32(
            out.as_mut_ptr().add(i),
            vmulq_f32(v, vld1q_f32(w.as_ptr().add(i))),
        );
        i += 4;
    }
    for j in i..n {
        out[j] = x[j] * s * w[j];
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn silu_mul4(g: float32x4_t, u: float32x4_t) -> float32x4_t {
    let e = exp(vnegq_f32(g));
    vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), e)), u)
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let mut i = 0;
    while i + 4 <= n {
        let r = silu_mul4(
            vld1q_f32(gate.as_ptr().add(i)),
            vld1q_f32(up.as_ptr().add(i)),
        );
        vst1q_f32(out.as_mut_ptr().add(i), r);
        i += 4;
    }
    if i < n {
        let r = silu_mul4(load_partial(&gate[i..n], 0.0), load_partial(&up[i..n], 0.0));
        let mut buf = [0.0f32; 4];
        vst1q_f32(buf.as_mut_ptr(), r);
        out[i..n].copy_from_slice(&buf[..n - i]);
    }
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let mut m = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 4 <= n {
        m = vmaxq_f32(m, vld1q_f32(x.as_ptr().add(i)));
        i += 4;
    }
    let mut s = vmaxvq_f32(m);
    for &v in &x[i..] {
        s = s.max(v);
    }
    s
}

/// Σ exp(x − m), in a fixed order (one vector accumulator, tail padded with −∞ → 0).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn sum_exp(x: &[f32], m: f32) -> f32 {
    let n = x.len();
    let vm = vdupq_n_f32(m);
    let mut acc = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        acc = vaddq_f32(acc, exp(vsubq_f32(vld1q_f32(x.as_ptr().add(i)), vm)));
        i += 4;
    }
    if i < n {
        acc = vaddq_f32(
            acc,
            exp(vsubq_f32(load_partial(&x[i..], f32::NEG_INFINITY), vm)),
        );
    }
    vaddvq_f32(acc)
}

/// x = exp(x − m); returns Σ of the new x (same order as [`sum_exp`]).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let vm = vdupq_n_f32(m);
    let mut acc = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        let p = x.as_mut_ptr().add(i);
        let e = exp(vsubq_f32(vld1q_f32(p), vm));
        vst1q_f32(p, e);
        acc = vaddq_f32(acc, e);
        i += 4;
    }
    if i < n {
        let e = exp(vsubq_f32(load_partial(&x[i..], f32::NEG_INFINITY), vm));
        let mut buf = [0.0f32; 4];
        vst1q_f32(buf.as_mut_ptr(), e);
        x[i..].copy_from_slice(&buf[..n - i]);
        acc = vaddq_f32(acc, e);
    }
    vaddvq_f32(acc)
}

/// 8 unsigned bytes → two f32x4 (elements 0..4, 4..8).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn u8x8_to_f32(v: uint8x8_t) -> (float32x4_t, float32x4_t) {
    let w = vmovl_u8(v);
    (
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))),
        vcvtq_f32_u32(vmovl_u16(vget_high_u16(w))),
    )
}

/// Store 16 unsigned codes (as bytes) as f32 at o: (q − 8)·d for Q4_0, q·d + m for Q4_1 —
/// the same operations and roundings as the scalar code (no fused multiply-add).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store16<const Q4_1: bool>(o: *mut f32, codes: uint8x16_t, d: f32, m: f32) {
    let halves = [vget_low_u8(codes), vget_high_u8(codes)];
    for (h, v) in halves.into_iter().enumerate() {
        let (a, b) = u8x8_to_f32(v);
        let (a, b) = if Q4_1 {
            (
                vaddq_f32(vmulq_n_f32(a, d), vdupq_n_f32(m)),
                vaddq_f32(vmulq_n_f32(b, d), vdupq_n_f32(m)),
            )
        } else {
            let eight = vdupq_n_f32(8.0);
            (
                vmulq_n_f32(vsubq_f32(a, eight), d),
                vmulq_n_f32(vsubq_f32(b, eight), d),
            )
        };
        vst1q_f32(o.add(8 * h), a);
        vst1q_f32(o.add(8 * h + 4), b);
    }
}

/// Dequantize whole blocks: `dst.len()` values of `ty` from `src`. Bit-identical to
/// `crate::quant::dequantize_row` (same single roundings, no fused multiply-add).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    assert!(
        ty.row_bytes(n) == Some(src.len()),
        "neon::dequantize: length"
    );
    let d = dst.as_mut_ptr();
    match ty {
        // No stable f16 vector type yet: the portable conversion (exact either way); and no
        // NEON decoder for Q8_K (ggml's activation format for K-quant dot products, not a
        // weight format that llama.cpp writes).
        GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_K => {
            crate::quant::dequantize_row(ty, src, dst)
        }
        // SAFETY: this function's own target feature is the callees'; each callee checks the
        // block/length contract itself (whole 32-value blocks, or whole 256-value
        // super-blocks for the K-quants) before any pointer arithmetic.
        GgmlType::Q5_0 => super::q5_neon::q5_0(src, dst),
        // SAFETY: as for Q5_0 just above.
        GgmlType::Q5_1 => super::q5_neon::q5_1(src, dst),
        // SAFETY: as for Q5_0 above.
        GgmlType::Q4_K => super::kquant_neon::q4k(src, dst),
        // SAFETY: as for Q5_0 above.
        GgmlType::Q5_K => super::kquant_neon::q5k(src, dst),
        // SAFETY: as for Q5_0 above.
        GgmlType::Q6_K => super::kquant_neon::q6k(src, dst),
        GgmlType::BF16 => {
            // Byte loads: the mapped data need not be 2-byte aligned.
            let s = src.as_ptr();
            let mut i = 0;
            while i + 4 <= n {
                let bits = vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(s.add(2 * i))));
                vst1q_f32(d.add(i), vreinterpretq_f32_u32(bits));
                i += 4;
            }
            for j in i..n {
                let b = u16::from_le_bytes([src[2 * j], src[2 * j + 1]]) as u32;
                dst[j] = f32::from_bits(b << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (b, blk) in src.chunks_exact(34).enumerate() {
                let vd = f16_at(blk);
                let q = blk.as_ptr().add(2) as *const i8;
                for h in 0..4 {
                    let w = vmovl_s8(vld1_s8(q.add(8 * h)));
                    let lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)));
                    let hi = vcvtq_f32_s32(vmovl_s16(vget_high_s16(w)));
                    vst1q_f32(d.add(32 * b + 8 * h), vmulq_n_f32(lo, vd));
                    vst1q_f32(d.add(32 * b + 8 * h + 4), vmulq_n_f32(hi, vd));
                }
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let q41 = ty == GgmlType::Q4_1;
            let (bytes, off) = if q41 { (20, 4) } else { (18, 2) };
            for (b, blk) in src.chunks_exact(bytes).enumerate() {
                let vd = f16_at(blk);
                let v = vld1q_u8(blk.as_ptr().add(off));
                let lo = vandq_u8(v, vdupq_n_u8(0x0F));
                let hi = vshrq_n_u8::<4>(v);
                let o = d.add(32 * b);
                if q41 {
                    let m = f16_at(&blk[2..]);
                    store16::<true>(o, lo, vd, m);
                    store16::<true>(o.add(16), hi, vd, m);
                } else {
                    store16::<false>(o, lo, vd, 0.0);
                    store16::<false>(o.add(16), hi, vd, 0.0);
                }
            }
        }
    }
}

/// GEMM microkernel, same contract as `scalar::kernel` with MR = 8, NR = 8.
///
/// # Safety
/// NEON must be available; every A(i < mr, p < kc), B(p < kc, j < 8) element must be
/// readable and every C(i < mr, j < 8) writable through the given pointers and strides.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    overwrite: bool,
) {
    match mr {
        8 => tile::<8>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        7 => tile::<7>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        6 => tile::<6>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        5 => tile::<5>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        4 => tile::<4>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        3 => tile::<3>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        2 => tile::<2>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        1 => tile::<1>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        _ => unreachable!("neon kernel: mr = {mr} outside 1..=8"),
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn tile<const M: usize>(
    kc: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc0 = [vdupq_n_f32(0.0); M];
    let mut acc1 = [vdupq_n_f32(0.0); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let b0 = vld1q_f32(bp);
        let b1 = vld1q_f32(bp.add(4));
        for i in 0..M {
            let av = *ap.add(i * rsa);
            acc0[i] = vfmaq_n_f32(acc0[i], b0, av);
            acc1[i] = vfmaq_n_f32(acc1[i], b1, av);
        }
        // wrapping: after the last step the pointers may point past the buffers (unused).
        ap = ap.wrapping_add(csa);
        bp = bp.wrapping_add(ldb);
    }
    for i in 0..M {
        let cp = c.add(i * ldc);
        if overwrite {
            vst1q_f32(cp, acc0[i]);
            vst1q_f32(cp.add(4), acc1[i]);
        } else {
            vst1q_f32(cp, vaddq_f32(vld1q_f32(cp), acc0[i]));
            vst1q_f32(cp.add(4), vaddq_f32(vld1q_f32(cp.add(4)), acc1[i]));
        }
    }
}

/// Transpose an 8 × kc block into kc × 8: dst[p*ldd + r] = src[r*lds + p] for r < 8, p < kc,
/// as 4×4 register transposes; a p-tail is scalar.
///
/// # Safety
/// NEON must be available; src must hold 8 rows of kc readable values at stride lds, and dst
/// kc rows of 8 writable values at stride ldd.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn transpose8(src: *const f32, lds: usize, kc: usize, dst: *mut f32, ldd: usize) {
    let mut p = 0;
    while p + 4 <= kc {
        for g in [0, 4] {
            let r: [float32x4_t; 4] = [
                vld1q_f32(src.add(g * lds + p)),
                vld1q_f32(src.add((g + 1) * lds + p)),
                vld1q_f32(src.add((g + 2) * lds + p)),
                vld1q_f32(src.add((g + 3) * lds + p)),
            ];
            let t01 = vtrnq_f32(r[0], r[1]);
            let t23 = vtrnq_f32(r[2], r[3]);
            let cols = [
                vcombine_f32(vget_low_f32(t01.0), vget_low_f32(t23.0)),
                vcombine_f32(vget_low_f32(t01.1), vget_low_f32(t23.1)),
                vcombine_f32(vget_high_f32(t01.0), vget_high_f32(t23.0)),
                vcombine_f32(vget_high_f32(t01.1), vget_high_f32(t23.1)),
            ];
            for (q, c) in cols.into_iter().enumerate() {
                vst1q_f32(dst.add((p + q) * ldd + g), c);
            }
        }
        p += 4;
    }
    for pp in p..kc {
        for i in 0..8 {
            *dst.add(pp * ldd + i) = *src.add(i * lds + pp);
        }
    }
}
