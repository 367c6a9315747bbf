//! AVX-512 packers that decode a frozen weight's 32-value blocks straight into GEMM panels,
//! with no f32 row buffer in between:
//! - [`pack_w_f32`]: f32 panel of W itself (B(p, j) = W[p, j], for dx = dy·W);
//! - [`pack_w_bf16`], [`pack_wt_bf16`]: the bf16 k-pair panels of the `Avx512Bf16` driver
//!   (layout in `bf16.rs`) for W and for Wᵀ (y = x·Wᵀ), rounded once, straight from the blocks.
//!
//! Before these existed a panel was decoded to f32, then (bf16 path) read again and rounded:
//! two passes over every weight on every product, which the profile showed at ~14% of a bf16
//! training step.
//!
//! Decoding is bit-identical to `quant::dequantize_row` (one rounding per operation, no FMA
//! contraction), and rounding to bf16 is `vcvtne2ps2bf16` (nearest even), so each panel value
//! equals `bf16::to_bf16(dequantize_row(..)[..])` exactly.
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers checked the
//! CPU, and the safe wrappers in `panel.rs` checked every row and block index.

use super::avx512::{bcast_f16, bcast_f16_pair, nibbles_f32};
use super::gemv_avx2::{BF16, F16, F32, Q4_0, Q4_1, Q8_0};
use super::pack::transpose8x8;
use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// Values 0..16 and 16..32 of block `b` (32 values) of a row of type T starting at `row`.
/// With FMA, Q4_1's d·q + m is one fused rounding (the GEMV's dot products); without, two
/// roundings, bit-identical to the scalar decoder (the panels).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn decode<const T: u8, const FMA: bool>(
    row: *const u8,
    b: usize,
) -> (__m512, __m512) {
    match T {
        F32 => {
            let p = row.add(128 * b) as *const f32;
            (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
        }
        F16 => {
            let p = row.add(64 * b);
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
            )
        }
        BF16 => {
            let p = row.add(64 * b);
            let widen = |q: *const u8| {
                let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(q as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
            };
            (widen(p), widen(p.add(32)))
        }
        Q8_0 => {
            let blk = row.add(34 * b);
            let d = bcast_f16(blk);
            let half = |q: *const u8| {
                let v = _mm_loadu_si128(q as *const __m128i);
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)), d)
            };
            (half(blk.add(2)), half(blk.add(18)))
        }
        Q4_0 => {
            let blk = row.add(18 * b);
            let d = bcast_f16(blk);
            let eight = _mm512_set1_ps(8.0);
            let (lo, hi) = nibbles_f32(blk.add(2));
            (
                _mm512_mul_ps(_mm512_sub_ps(lo, eight), d),
                _mm512_mul_ps(_mm512_sub_ps(hi, eight), d),
            )
        }
        _ => {
            // Q4_1: d·q + m.
            let blk = row.add(20 * b);
            let (d, m) = bcast_f16_pair(blk);
            let (lo, hi) = nibbles_f32(blk.add(4));
            if FMA {
                (_mm512_fmadd_ps(lo, d, m), _mm512_fmadd_ps(hi, d, m))
            } else {
                (
                    _mm512_add_ps(_mm512_mul_ps(lo, d), m),
                    _mm512_add_ps(_mm512_mul_ps(hi, d), m),
                )
            }
        }
    }
}

/// Lane l of the result takes u16 lane l/2 (even l) or 16 + l/2 (odd l) of its input: turns
/// `[bf16(row 2q) ×16 | bf16(row 2q+1) ×16]` into 16 interleaved k-pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pair_index() -> __m512i {
    _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    )
}

/// Where a panel's rows come from: row r of W starts at `base + r*stride` bytes.
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub base: *const u8,
    pub stride: usize,
}

impl Rows {
    #[inline]
    fn row(self, r: usize) -> *const u8 {
        self.base.wrapping_add(r * self.stride)
    }
}

macro_rules! by_type {
    ($ty:expr, $f:ident, $($arg:expr),*) => {
        match $ty {
            GgmlType::F32 => $f::<F32>($($arg),*),
            GgmlType::F16 => $f::<F16>($($arg),*),
            GgmlType::BF16 => $f::<BF16>($($arg),*),
            GgmlType::Q8_0 => $f::<Q8_0>($($arg),*),
            GgmlType::Q4_0 => $f::<Q4_0>($($arg),*),
            GgmlType::Q4_1 => $f::<Q4_1>($($arg),*),
            // `panel::block_rows` refuses these types, so no packer is called with them.
            other => panic!("no 32-value block decoder for {}", other.name()),
        }
    };
}

/// panel[p*ldb + j] = W[p, 32·b0 + j] for p < kc, j < 32·nblk (rows from `w`); zero for
/// 32·nblk ≤ j < ldb.
///
/// # Safety
/// AVX-512 F/BW/VL, FMA and F16C are available; rows 0..kc of `w` hold blocks b0..b0+nblk;
/// `panel` has kc rows of ldb ≥ 32·nblk writable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn pack_w_f32(
    ty: GgmlType,
    w: Rows,
    kc: usize,
    b0: usize,
    nblk: usize,
    panel: *mut f32,
    ldb: usize,
) {
    by_type!(ty, w_f32, w, kc, b0, nblk, panel, ldb)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn w_f32<const T: u8>(
    w: Rows,
    kc: usize,
    b0: usize,
    nblk: usize,
    panel: *mut f32,
    ldb: usize,
) {
    for p in 0..kc {
        let (src, dst) = (w.row(p), panel.add(p * ldb));
        for b in 0..nblk {
            let (lo, hi) = decode::<T, false>(src, b0 + b);
            _mm512_storeu_ps(dst.add(32 * b), lo);
            _mm512_storeu_ps(dst.add(32 * b + 16), hi);
        }
        for j in 32 * nblk..ldb {
            *dst.add(j) = 0.0;
        }
    }
}

/// out[q*2*ldb + 2j + t] = bf16(W[2q + t, 32·b0 + j]) for q < kc.div_ceil(2), t < 2,
/// j < 32·nblk (the missing odd row of an odd kc is zero); zero for 32·nblk ≤ j < ldb.
///
/// # Safety
/// AVX-512 F/BW/VL/BF16, FMA and F16C are available; rows 0..kc of `w` hold blocks
/// b0..b0+nblk; `out` has kc.div_ceil(2) pair rows of 2·ldb writable u16, ldb ≥ 32·nblk.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn pack_w_bf16(
    ty: GgmlType,
    w: Rows,
    kc: usize,
    b0: usize,
    nblk: usize,
    out: *mut u16,
    ldb: usize,
) {
    by_type!(ty, w_bf16, w, kc, b0, nblk, out, ldb)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn w_bf16<const T: u8>(
    w: Rows,
    kc: usize,
    b0: usize,
    nblk: usize,
    out: *mut u16,
    ldb: usize,
) {
    let idx = pair_index();
    let zero = _mm512_setzero_ps();
    for q in 0..kc.div_ceil(2) {
        let (r0, has_r1) = (w.row(2 * q), 2 * q + 1 < kc);
        let o = out.add(q * 2 * ldb);
        for b in 0..nblk {
            let (e_lo, e_hi) = decode::<T, false>(r0, b0 + b);
            let (o_lo, o_hi) = if has_r1 {
                decode::<T, false>(w.row(2 * q + 1), b0 + b)
            } else {
                (zero, zero)
            };
            for (h, (e, od)) in [(e_lo, o_lo), (e_hi, o_hi)].into_iter().enumerate() {
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(od, e));
                _mm512_storeu_si512(
                    o.add(2 * (32 * b + 16 * h)) as *mut __m512i,
                    _mm512_permutexvar_epi16(idx, both),
                );
            }
        }
        for j in 2 * 32 * nblk..2 * ldb {
            *o.add(j) = 0;
        }
    }
}

/// out[q*2*ldb + 2j + t] = bf16(W[j, 32·b0 + 2q + t]) for q < 16·nblk, t < 2, j < nb (a
/// multiple of 8): the panel of Wᵀ, whose k-pairs are adjacent values of one W row. Zero for
/// nb ≤ j < ldb.
///
/// # Safety
/// AVX-512 F/BW/VL/BF16, AVX2, FMA and F16C are available; rows 0..nb of `w` hold blocks
/// b0..b0+nblk; `out` has 16·nblk pair rows of 2·ldb writable u16, ldb ≥ nb.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn pack_wt_bf16(
    ty: GgmlType,
    w: Rows,
    nb: usize,
    b0: usize,
    nblk: usize,
    out: *mut u16,
    ldb: usize,
) {
    by_type!(ty, wt_bf16, w, nb, b0, nblk, out, ldb)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn wt_bf16<const T: u8>(
    w: Rows,
    nb: usize,
    b0: usize,
    nblk: usize,
    out: *mut u16,
    ldb: usize,
) {
    debug_assert!(nb.is_multiple_of(8));
    for jg in (0..nb).step_by(8) {
        for b in 0..nblk {
            // Row r's block as 16 u32 k-pairs: lanes 0..8 hold pairs 0..8 (values 0..16),
            // lanes 8..16 pairs 8..16 — one 32-bit lane per (row, pair), ready to transpose.
            let mut lo = [_mm256_setzero_ps(); 8];
            let mut hi = [_mm256_setzero_ps(); 8];
            for r in 0..8 {
                let (a, c) = decode::<T, false>(w.row(jg + r), b0 + b);
                let v = _mm512_castsi512_ps(std::mem::transmute::<__m512bh, __m512i>(
                    _mm512_cvtne2ps_pbh(c, a),
                ));
                lo[r] = _mm512_castps512_ps256(v);
                hi[r] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            }
            // After the transpose, vector q holds pair q of rows jg..jg+8: 8 columns' pairs.
            for (h, half) in [lo, hi].into_iter().enumerate() {
                for (q, v) in transpose8x8(half).into_iter().enumerate() {
                    let pr = 16 * b + 8 * h + q;
                    _mm256_storeu_ps(out.add(pr * 2 * ldb + 2 * jg) as *mut f32, v);
                }
            }
        }
    }
    for pr in 0..16 * nblk {
        for j in 2 * nb..2 * ldb {
            *out.add(pr * 2 * ldb + j) = 0;
        }
    }
}
