//! NEON fp16-panel GEMM pieces (`Isa::NeonFp16`): the weight panel is stored as IEEE half
//! (halving the panel's cache footprint and load traffic), widened back to f32 in registers
//! (`fcvtl`/`fcvtl2`) and multiplied with f32 activations by `fmla`, accumulating in f32.
//!
//! Why widen + FMLA rather than FMLAL/FMLAL2 (FEAT_FHM): FMLAL multiplies two *f16* operands,
//! so the activations (and, in the backward pass, gradients, often below f16's 6e-5 normal
//! range) would have to be rounded to f16 too. Keeping them f32 leaves only the weights
//! rounded (2⁻¹¹ relative, and quantized weights already carry an f16 block scale), at the
//! same FMA throughput per instruction (both do 4 f32 lanes).
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers must have
//! checked the CPU (`dispatch::check` for `Isa::NeonFp16`).

use std::arch::aarch64::*;
use std::arch::asm;

// The f16 conversions are written as `asm!` (stable since 1.59) because their intrinsics
// (`vcvt_f32_f16`, `float16x8_t`, ...) are stable only since Rust 1.94, above the crate's
// MSRV. Both instructions are base ARMv8 Advanced SIMD.

/// The 8 halves in `h` widened to f32: (lanes 0..4, lanes 4..8).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversions (fcvtl/fcvtl2), no memory or flags touched.
    asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        h = in(vreg) h,
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        options(pure, nomem, nostack, preserves_flags)
    );
    (lo, hi)
}

/// Lanes of `a` then `b` rounded to f16 (nearest even, the default FPCR mode), as 8 halves.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn narrow(a: float32x4_t, b: float32x4_t) -> uint16x8_t {
    let h: uint16x8_t;
    // SAFETY: register-only conversions (fcvtn/fcvtn2), no memory or flags touched.
    asm!(
        "fcvtn {h:v}.4h, {a:v}.4s",
        "fcvtn2 {h:v}.8h, {b:v}.4s",
        a = in(vreg) a,
        b = in(vreg) b,
        h = out(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    h
}

/// Micro-tile: 8 rows × 8 columns = 16 f32 accumulators; one 16-byte f16 load per k step.
pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 8;

/// out[p*ldb + j] = f16(panel[p*ldb + j]) (round to nearest even) for p < kc, j < ldb.
///
/// # Safety
/// `panel` holds kc·ldb f32 and `out` room for kc·ldb u16; ldb is a multiple of 8; the CPU
/// has NEON fp16.
#[target_feature(enable = "neon,fp16")]
pub(crate) unsafe fn pack_f16(panel: *const f32, kc: usize, ldb: usize, out: *mut u16) {
    debug_assert!(ldb.is_multiple_of(8));
    for o in (0..kc * ldb).step_by(8) {
        let h = narrow(vld1q_f32(panel.add(o)), vld1q_f32(panel.add(o + 4)));
        vst1q_u16(out.add(o), h);
    }
}

/// C[i, j] (+)= Σ_{p < kc} A(i, p)·f32(B(p, j)) for i < mr ≤ MR, j < NR, with
/// A(i, p) = a[i*rsa + p*csa] (f32), B(p, j) = b[p*ldb + j] (f16 bits), C(i, j) = c[i*ldc + j].
///
/// # Safety
/// Every A, B, C element named is readable (C writable); the CPU has NEON fp16.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,fp16")]
pub(crate) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const u16,
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
        _ => unreachable!("neon fp16 kernel: mr = {mr} outside 1..=8"),
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,fp16")]
unsafe fn tile<const M: usize>(
    kc: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const u16,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc0 = [vdupq_n_f32(0.0); M];
    let mut acc1 = [vdupq_n_f32(0.0); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let (b0, b1) = widen(vld1q_u16(bp));
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
