//! GEMM microkernel for narrow outputs (n ≤ 8: the LoRA rank-8 products `x·Aᵀ`, `dy·B`,
//! `dyᵀ·us`), AVX2 + FMA.
//!
//! The 6×16 AVX2 tile would be half padding there and stage every tile through a scratch
//! copy; this one is 8 columns wide (one ymm per row) and 12 rows tall: 12 accumulators, one
//! B load per k step shared by all rows, one broadcast of A per row and step.

use std::arch::x86_64::*;

/// Micro-tile: 12 rows × 8 columns = 12 ymm accumulators (+1 for B, 1 broadcast).
pub(crate) const MR: usize = 12;
pub(crate) const NR: usize = 8;

/// GEMM microkernel, same contract as `scalar::kernel` with MR = 12, NR = 8.
///
/// # Safety
/// AVX2+FMA must be available; every A(i < mr, p < kc), B(p < kc, j < 8) element must be
/// readable and every C(i < mr, j < 8) writable through the given pointers and strides.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    // SAFETY (all arms): the caller's contract above, for M = mr rows.
    unsafe {
        match mr {
            12 => tile::<12>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            11 => tile::<11>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            10 => tile::<10>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            9 => tile::<9>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            8 => tile::<8>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            7 => tile::<7>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            6 => tile::<6>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            5 => tile::<5>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            4 => tile::<4>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            3 => tile::<3>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            2 => tile::<2>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            1 => tile::<1>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
            _ => unreachable!("narrow kernel: mr = {mr} outside 1..=12"),
        }
    }
}

/// M rows × 8 columns. Each C element is one accumulator reduced over p ascending, so the
/// result is independent of M and of how the driver cut the rows.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [_mm256_setzero_ps(); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // SAFETY: p < kc, so B(p, 0..8) and A(i < M, p) are readable (caller's contract).
        unsafe {
            let bv = _mm256_loadu_ps(bp);
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i * rsa));
                *acc_i = _mm256_fmadd_ps(av, bv, *acc_i);
            }
        }
        // wrapping: after the last step the pointers may point past the buffers (unused).
        ap = ap.wrapping_add(csa);
        bp = bp.wrapping_add(ldb);
    }
    for (i, acc_i) in acc.iter().enumerate() {
        // SAFETY: i < M = mr, so C(i, 0..8) is writable (caller's contract).
        unsafe {
            let cp = c.add(i * ldc);
            let v = if overwrite {
                *acc_i
            } else {
                _mm256_add_ps(_mm256_loadu_ps(cp), *acc_i)
            };
            _mm256_storeu_ps(cp, v);
        }
    }
}
