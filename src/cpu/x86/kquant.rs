//! AVX2 and AVX-512 decoders of the two K-quants of Q4_K_M files, Q4_K and Q6_K, into f32 rows
//! (the frozen-weight panels and GEMV rows of `panel.rs` / `gemv.rs` go through them).
//!
//! Bit-identical to the scalar `quant::kquants` code: the per-sub-block factors (d·sc and
//! dmin·m for Q4_K, d·sc for Q6_K) are the same scalar f32 products, the codes are small
//! integers converted exactly, and each value is then one SIMD multiply (and for Q4_K one
//! subtract) with the same single rounding: never fused.
//!
//! Bounds: every load reads 16 bytes at an offset that the block layout keeps inside the
//! 144- or 210-byte block slice (offsets noted at each load); blocks come from
//! `chunks_exact`, so a short row cannot be over-read.

use crate::quant::kquants::{
    check_row_len, q45k_factors, q6k_factors, BLOCK_Q4_K_BYTES, BLOCK_Q6_K_BYTES, QK_K,
};
use std::arch::x86_64::*;

/// Low and high nibbles of 16 bytes at `p` (Q4_K codes).
///
/// # Safety
/// SSE2 (implied by AVX2); `p` must be readable for 16 bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    (
        _mm_and_si128(v, m),
        _mm_and_si128(_mm_srli_epi16::<4>(v), m),
    )
}

/// The 6-bit codes of 4 × 16 Q6_K values sharing 16 qh bytes: `a` = ql[l..l+16],
/// `b` = ql[l+32..l+48], `h` = qh[l..l+16]; code k takes a/b's low (k < 2) or high nibble and
/// bit pair k of h, as in `BlockQ6K::dequantize`. Byte lanes only (16-bit shifts, then masks
/// that drop what crossed in from the neighbouring byte).
///
/// # Safety
/// SSE2 (implied by AVX2).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_codes(a: __m128i, b: __m128i, h: __m128i) -> [__m128i; 4] {
    let m4 = _mm_set1_epi8(0x0F);
    let m2 = _mm_set1_epi8(0x03);
    let hi2 = |x: __m128i| _mm_slli_epi16::<4>(_mm_and_si128(x, m2));
    [
        _mm_or_si128(_mm_and_si128(a, m4), hi2(h)),
        _mm_or_si128(_mm_and_si128(b, m4), hi2(_mm_srli_epi16::<2>(h))),
        _mm_or_si128(
            _mm_and_si128(_mm_srli_epi16::<4>(a), m4),
            hi2(_mm_srli_epi16::<4>(h)),
        ),
        _mm_or_si128(
            _mm_and_si128(_mm_srli_epi16::<4>(b), m4),
            hi2(_mm_srli_epi16::<6>(h)),
        ),
    ]
}

/// 16 unsigned byte codes as two 8-lane f32 vectors.
///
/// # Safety
/// AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn u8x16_to_f32x8(v: __m128i) -> (__m256, __m256) {
    (
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))),
    )
}

/// Q4_K row → f32: `dst.len()` = 256 × the blocks in `src`.
///
/// # Safety
/// AVX2 must be available (the length contract is checked here).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k_avx2(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q4_K_BYTES);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q4_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let f = q45k_factors(blk);
        let (q, o) = (blk.as_ptr().add(16), y.as_mut_ptr());
        for i in 0..4 {
            let (d0, m0) = (_mm256_set1_ps(f[2 * i].0), _mm256_set1_ps(f[2 * i].1));
            let (d1, m1) = (
                _mm256_set1_ps(f[2 * i + 1].0),
                _mm256_set1_ps(f[2 * i + 1].1),
            );
            for h in 0..2 {
                // qs bytes 32i + 16h .. +16 ≤ 128: inside the block (qs starts at 16).
                let (lo, hi) = nibbles(q.add(32 * i + 16 * h));
                let v = 64 * i + 16 * h;
                for (codes, vd, vm, at) in [(lo, d0, m0, v), (hi, d1, m1, v + 32)] {
                    let (a, b) = u8x16_to_f32x8(codes);
                    // (d·sc)·q − dmin·m: multiply, then subtract, as the scalar code.
                    _mm256_storeu_ps(o.add(at), _mm256_sub_ps(_mm256_mul_ps(vd, a), vm));
                    _mm256_storeu_ps(o.add(at + 8), _mm256_sub_ps(_mm256_mul_ps(vd, b), vm));
                }
            }
        }
    }
}

/// Q6_K row → f32: `dst.len()` = 256 × the blocks in `src`.
///
/// # Safety
/// AVX2 must be available (the length contract is checked here).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k_avx2(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q6_K_BYTES);
    let off = _mm256_set1_ps(32.0);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q6_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let sc = q6k_factors(blk);
        let (p, o) = (blk.as_ptr(), y.as_mut_ptr());
        for h in 0..2 {
            for l in [0, 16] {
                // ql bytes 64h + l (+32) .. +16 ≤ 128, qh bytes 128 + 32h + l .. +16 ≤ 192.
                let a = _mm_loadu_si128(p.add(64 * h + l) as *const __m128i);
                let b = _mm_loadu_si128(p.add(64 * h + l + 32) as *const __m128i);
                let hb = _mm_loadu_si128(p.add(128 + 32 * h + l) as *const __m128i);
                for (k, codes) in q6k_codes(a, b, hb).into_iter().enumerate() {
                    let v = 128 * h + 32 * k + l;
                    let vs = _mm256_set1_ps(sc[v / 16]);
                    let (c0, c1) = u8x16_to_f32x8(codes);
                    // q − 32 is exact in f32; then one rounding: (d·sc)·(q − 32).
                    _mm256_storeu_ps(o.add(v), _mm256_mul_ps(vs, _mm256_sub_ps(c0, off)));
                    _mm256_storeu_ps(o.add(v + 8), _mm256_mul_ps(vs, _mm256_sub_ps(c1, off)));
                }
            }
        }
    }
}

/// 16 unsigned byte codes as one 16-lane f32 vector.
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn u8x16_to_f32x16(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

/// [`q4k_avx2`] with 16-lane vectors.
///
/// # Safety
/// AVX-512 F/BW/VL (and AVX2) must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q4k_avx512(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q4_K_BYTES);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q4_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let f = q45k_factors(blk);
        let (q, o) = (blk.as_ptr().add(16), y.as_mut_ptr());
        for i in 0..4 {
            let (d0, m0) = (_mm512_set1_ps(f[2 * i].0), _mm512_set1_ps(f[2 * i].1));
            let (d1, m1) = (
                _mm512_set1_ps(f[2 * i + 1].0),
                _mm512_set1_ps(f[2 * i + 1].1),
            );
            for h in 0..2 {
                // qs bytes 32i + 16h .. +16 ≤ 128: inside the block.
                let (lo, hi) = nibbles(q.add(32 * i + 16 * h));
                let v = 64 * i + 16 * h;
                let (a, b) = (u8x16_to_f32x16(lo), u8x16_to_f32x16(hi));
                _mm512_storeu_ps(o.add(v), _mm512_sub_ps(_mm512_mul_ps(d0, a), m0));
                _mm512_storeu_ps(o.add(v + 32), _mm512_sub_ps(_mm512_mul_ps(d1, b), m1));
            }
        }
    }
}

/// [`q6k_avx2`] with 16-lane vectors.
///
/// # Safety
/// AVX-512 F/BW/VL (and AVX2) must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q6k_avx512(src: &[u8], dst: &mut [f32]) {
    check_row_len(src, dst, BLOCK_Q6_K_BYTES);
    let off = _mm512_set1_ps(32.0);
    for (blk, y) in src
        .chunks_exact(BLOCK_Q6_K_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let sc = q6k_factors(blk);
        let (p, o) = (blk.as_ptr(), y.as_mut_ptr());
        for h in 0..2 {
            for l in [0, 16] {
                // As in q6k_avx2: every 16-byte load stays inside the 210-byte block.
                let a = _mm_loadu_si128(p.add(64 * h + l) as *const __m128i);
                let b = _mm_loadu_si128(p.add(64 * h + l + 32) as *const __m128i);
                let hb = _mm_loadu_si128(p.add(128 + 32 * h + l) as *const __m128i);
                for (k, codes) in q6k_codes(a, b, hb).into_iter().enumerate() {
                    let v = 128 * h + 32 * k + l;
                    let c = _mm512_sub_ps(u8x16_to_f32x16(codes), off);
                    _mm512_storeu_ps(o.add(v), _mm512_mul_ps(_mm512_set1_ps(sc[v / 16]), c));
                }
            }
        }
    }
}
