//! AVX512-BF16 GEMM pieces: operands rounded to bf16 (round to nearest even, as
//! `vcvtne2ps2bf16` does), products accumulated in f32 by `vdpbf16ps`.
//!
//! `vdpbf16ps acc, a, b` adds, per f32 lane l, a[2l]·b[2l] + a[2l+1]·b[2l+1]: it consumes
//! two k steps at once. So both operands are stored as k *pairs*:
//! - A: row i of a packed tile is `[A(i,0), A(i,1), A(i,2), ...]` in bf16 (k padded to even
//!   with a zero), and one 32-bit broadcast gives every lane the pair (A(i,2q), A(i,2q+1));
//! - B: pair row q of a packed panel is `[B(2q,0), B(2q+1,0), B(2q,1), B(2q+1,1), ...]`, so a
//!   512-bit load holds 16 columns × 2 k steps, lane-aligned with 16 f32 accumulators.
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers must have
//! checked the CPU (`dispatch::check` for `Isa::Avx512Bf16`).

use std::arch::x86_64::*;

/// Micro-tile: 8 rows × 32 columns = 16 zmm accumulators (2 B loads + 8 broadcasts per 16
/// `vdpbf16ps`, each 32 multiply-adds).
pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 32;

/// f32 → bf16 bits, round to nearest even (NaN stays a quiet NaN), matching the hardware
/// conversion the SIMD packers use.
#[inline]
pub(crate) fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// out[q*2*ldb + 2j + t] = bf16(panel[(2q + t)*ldb + j]) for q < kc.div_ceil(2), j < ldb,
/// t < 2 (the missing odd row of an odd kc is zero).
///
/// # Safety
/// `panel` holds kc rows of ldb f32, `out` has room for kc.div_ceil(2)·2·ldb u16, ldb is a
/// multiple of 16, and the CPU has AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn pack_b_pairs(panel: *const f32, kc: usize, ldb: usize, out: *mut u16) {
    debug_assert!(ldb.is_multiple_of(16));
    // Lane l of the result takes lane l/2 (even l: row 2q) or 16 + l/2 (odd l: row 2q+1)
    // of [bf16(row 2q) ×16 | bf16(row 2q+1) ×16].
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let zero = _mm512_setzero_ps();
    for q in 0..kc.div_ceil(2) {
        let r0 = panel.add(2 * q * ldb);
        let has_r1 = 2 * q + 1 < kc;
        let o = out.add(q * 2 * ldb);
        for j in (0..ldb).step_by(16) {
            let v0 = _mm512_loadu_ps(r0.add(j));
            let v1 = if has_r1 {
                _mm512_loadu_ps(r0.add(ldb + j))
            } else {
                zero
            };
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(v1, v0));
            _mm512_storeu_si512(
                o.add(2 * j) as *mut __m512i,
                _mm512_permutexvar_epi16(idx, both),
            );
        }
    }
}

/// out[i*lda + p] = bf16(A(i, p)) for i < rows, p < kc, with A(i, p) = a[i*rsa + p*csa];
/// out[i*lda + kc] = 0 when kc is odd (lda ≥ kc rounded up to even).
///
/// # Safety
/// Every A(i, p) named is readable; `out` has room for rows·lda u16; the CPU has
/// AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn pack_a(
    a: *const f32,
    rsa: usize,
    csa: usize,
    rows: usize,
    kc: usize,
    out: *mut u16,
    lda: usize,
) {
    // A stored transposed (rsa = 1: attention's Pᵀ, dSᵀ): 8 rows × 8 k steps through a
    // register transpose, the rest (and the odd-k zero) by the loop below.
    let (mut i_done, mut p_done) = (0, 0);
    if rsa == 1 && csa != 1 && rows >= 8 && kc >= 8 {
        (i_done, p_done) = (rows / 8 * 8, kc / 8 * 8);
        for i0 in (0..i_done).step_by(8) {
            for p0 in (0..p_done).step_by(8) {
                // v[q] lane r = A(i0 + r, p0 + q); after the transpose t[r] lane q is the same.
                let v: [__m256; 8] =
                    std::array::from_fn(|q| _mm256_loadu_ps(a.add(i0 + (p0 + q) * csa)));
                for (r, t) in super::pack::transpose8x8(v).into_iter().enumerate() {
                    let h: __m128i = std::mem::transmute(_mm256_cvtneps_pbh(t));
                    _mm_storeu_si128(out.add((i0 + r) * lda + p0) as *mut __m128i, h);
                }
            }
        }
    }
    for i in 0..rows {
        if i < i_done {
            let o = out.add(i * lda);
            for p in p_done..kc {
                *o.add(p) = to_bf16(*a.add(i * rsa + p * csa));
            }
            if kc % 2 == 1 {
                *o.add(kc) = 0;
            }
            continue;
        }
        let o = out.add(i * lda);
        let mut p = 0;
        if csa == 1 {
            let ai = a.add(i * rsa);
            while p + 16 <= kc {
                let h: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(ai.add(p))));
                _mm256_storeu_si256(o.add(p) as *mut __m256i, h);
                p += 16;
            }
        }
        while p < kc {
            *o.add(p) = to_bf16(*a.add(i * rsa + p * csa));
            p += 1;
        }
        if kc % 2 == 1 {
            *o.add(kc) = 0;
        }
    }
}

/// C[i, j] (+)= Σ_{q < kp} Σ_{t < 2} A(i, 2q+t)·B(2q+t, j) for i < mr ≤ MR, j < NR, from a
/// packed A tile (`a`, row stride `lda` u16) and a packed B panel (`b` at the tile's first
/// column pair, pair-row stride `ldb2` u16); C(i, j) = c[i*ldc + j]. `overwrite` stores the
/// sum instead of adding it.
///
/// # Safety
/// a holds mr rows of 2·kp u16 at stride lda; b holds kp pair rows of 2·NR u16 at stride ldb2;
/// C(i, j) for i < mr, j < NR is writable; the CPU has AVX512-BF16.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn kernel(
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb2: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    overwrite: bool,
) {
    match mr {
        8 => tile::<8>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        7 => tile::<7>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        6 => tile::<6>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        5 => tile::<5>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        4 => tile::<4>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        3 => tile::<3>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        2 => tile::<2>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        1 => tile::<1>(kp, a, lda, b, ldb2, c, ldc, overwrite),
        _ => unreachable!("bf16 kernel: mr = {mr} outside 1..=8"),
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const M: usize>(
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb2: usize,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc0 = [_mm512_setzero_ps(); M];
    let mut acc1 = [_mm512_setzero_ps(); M];
    let mut bp = b;
    for q in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const __m512i));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const __m512i));
        for i in 0..M {
            let pair = (a.add(i * lda + 2 * q) as *const i32).read_unaligned();
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);
        }
        // wrapping: after the last step the pointer may point past the panel (unused).
        bp = bp.wrapping_add(ldb2);
    }
    for i in 0..M {
        let cp = c.add(i * ldc);
        if overwrite {
            _mm512_storeu_ps(cp, acc0[i]);
            _mm512_storeu_ps(cp.add(16), acc1[i]);
        } else {
            _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), acc0[i]));
            _mm512_storeu_ps(
                cp.add(16),
                _mm512_add_ps(_mm512_loadu_ps(cp.add(16)), acc1[i]),
            );
        }
    }
}
