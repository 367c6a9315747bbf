//! AVX2 f16-panel GEMM pieces (`Isa::Avx2F16`): the weight panel is stored as IEEE half
//! (half the panel bytes, so the same cache holds twice the k depth), widened back to f32 in
//! registers with `vcvtph2ps` (F16C) and multiplied with f32 activations by `vfmadd`,
//! accumulating in f32: the x86 twin of `arm::fp16`.
//!
//! Only the weights are rounded (relative error ≤ 2⁻¹¹): activations and, in the backward
//! pass, gradients (often below f16's 6e-5 normal range) stay f32.
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers must have
//! checked the CPU (`dispatch::check` for `Isa::Avx2F16`, which implies AVX2 + FMA + F16C).

use std::arch::x86_64::*;

/// Micro-tile: 6 rows × 16 columns = 12 ymm accumulators (+2 for B, 1 broadcast), the
/// `avx2` tile; each k step loads 32 bytes of f16 instead of 64 of f32.
pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;

/// out[p*ldb + j] = f16(panel[p*ldb + j]) (round to nearest even) for p < kc, j < ldb.
///
/// # Safety
/// `panel` holds kc·ldb f32 and `out` room for kc·ldb u16; ldb is a multiple of 8; the CPU
/// has AVX2 + FMA + F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_f16(panel: *const f32, kc: usize, ldb: usize, out: *mut u16) {
    debug_assert!(ldb.is_multiple_of(8));
    for o in (0..kc * ldb).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(panel.add(o)));
        _mm_storeu_si128(out.add(o).cast(), h);
    }
}

/// C[i, j] (+)= Σ_{p < kc} A(i, p)·f32(B(p, j)) for i < mr ≤ MR, j < NR, with
/// A(i, p) = a[i*rsa + p*csa] (f32), B(p, j) = b[p*ldb + j] (f16 bits), C(i, j) = c[i*ldc + j].
///
/// # Safety
/// Every A, B, C element named is readable (C writable); the CPU has AVX2 + FMA + F16C.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
        6 => tile::<6>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        5 => tile::<5>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        4 => tile::<4>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        3 => tile::<3>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        2 => tile::<2>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        1 => tile::<1>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        _ => unreachable!("avx2 f16 kernel: mr = {mr} outside 1..=6"),
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mut acc0 = [_mm256_setzero_ps(); M];
    let mut acc1 = [_mm256_setzero_ps(); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // 16 halves → two ymm of f32 (exact: every f16 is an f32).
        let b0 = _mm256_cvtph_ps(_mm_loadu_si128(bp.cast()));
        let b1 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(8).cast()));
        for i in 0..M {
            let av = _mm256_broadcast_ss(&*ap.add(i * rsa));
            acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
        }
        // wrapping: after the last step the pointers may point past the buffers (unused).
        ap = ap.wrapping_add(csa);
        bp = bp.wrapping_add(ldb);
    }
    for i in 0..M {
        let cp = c.add(i * ldc);
        if overwrite {
            _mm256_storeu_ps(cp, acc0[i]);
            _mm256_storeu_ps(cp.add(8), acc1[i]);
        } else {
            _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), acc0[i]));
            _mm256_storeu_ps(
                cp.add(8),
                _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), acc1[i]),
            );
        }
    }
}
