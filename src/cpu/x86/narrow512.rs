//! Products with at most 8 output columns and a row-major A — LoRA's `us = x·Aᵀ` and
//! `du = dy·B` at rank 8 — on AVX-512, as dot products along k.
//!
//! Why not the 12×8 broadcast kernel (`narrow.rs`): there every multiply-add of 8 lanes costs
//! one broadcast load of A, so these products are bound by loads. Here A rows and the rows of
//! Bᵀ ([n, k], contiguous in k) are both read 16 values at a time: per 16 k steps, R + n
//! loads feed R·n full-width FMAs (R = 2 rows: 10 loads for 16 FMAs of 16 lanes), and each
//! output is one horizontal sum at the end.
//!
//! Every output element is summed in a fixed order (16 lane partial sums over k, then the
//! lanes in `_mm512_reduce_add_ps`'s order): deterministic, whatever the thread count.

use std::arch::x86_64::*;

/// Rows of C per tile.
const R: usize = 2;

/// c[i*ldc + j] (+)= Σ_p a[i*rsa + p] · bt[j*ldt + p] for i < m, j < n ≤ 8, p < k.
///
/// # Safety
/// AVX-512 F/BW/VL and FMA are available; a holds m rows of k values at stride rsa, bt n rows
/// of k values at stride ldt, c m rows of n writable values at stride ldc; 1 ≤ n ≤ 8.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn dots(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    rsa: usize,
    bt: *const f32,
    ldt: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    macro_rules! go {
        ($n:literal) => {{
            let mut i = 0;
            while i + R <= m {
                tile::<R, $n>(
                    k,
                    a.add(i * rsa),
                    rsa,
                    bt,
                    ldt,
                    c.add(i * ldc),
                    ldc,
                    accumulate,
                );
                i += R;
            }
            if i < m {
                tile::<1, $n>(
                    k,
                    a.add(i * rsa),
                    rsa,
                    bt,
                    ldt,
                    c.add(i * ldc),
                    ldc,
                    accumulate,
                );
            }
        }};
    }
    match n {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        8 => go!(8),
        _ => unreachable!("narrow512::dots: n = {n} outside 1..=8"),
    }
}

// j picks both a Bᵀ row and an accumulator column: an index, not an iteration over acc.
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile<const RR: usize, const N: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    bt: *const f32,
    ldt: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); N]; RR];
    let mut p = 0;
    while p + 16 <= k {
        let av: [__m512; RR] = std::array::from_fn(|r| _mm512_loadu_ps(a.add(r * rsa + p)));
        for j in 0..N {
            let bv = _mm512_loadu_ps(bt.add(j * ldt + p));
            for r in 0..RR {
                acc[r][j] = _mm512_fmadd_ps(av[r], bv, acc[r][j]);
            }
        }
        p += 16;
    }
    if p < k {
        // The last k % 16 values: masked lanes are neither read nor added.
        let mask = ((1u32 << (k - p)) - 1) as __mmask16;
        let av: [__m512; RR] =
            std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, a.add(r * rsa + p)));
        for j in 0..N {
            let bv = _mm512_maskz_loadu_ps(mask, bt.add(j * ldt + p));
            for r in 0..RR {
                acc[r][j] = _mm512_fmadd_ps(av[r], bv, acc[r][j]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let s = _mm512_reduce_add_ps(v);
            let cp = c.add(r * ldc + j);
            *cp = if accumulate { *cp + s } else { s };
        }
    }
}
