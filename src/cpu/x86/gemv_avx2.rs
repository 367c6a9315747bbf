//! Fused dequantize-and-dot for y = x·Wᵀ with one row of x at a time (generation), AVX2.
//! Each 32-value block of up to 4 W rows is decoded straight into registers and multiplied
//! into 2 accumulators per W row; nothing is written back to memory but the sums.

use super::avx2::{bcast_f16, bcast_f16_pair};
use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// W rows and x rows per call.
pub(crate) const ROWS: usize = 4;
pub(crate) const XS: usize = 1;

/// 16 packed nibbles → the 32 codes as f32, in element order (low nibbles first): each
/// byte is widened to a 32-bit lane once, then masked (low nibble) or shifted (high nibble).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> [__m256; 4] {
    let v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
    let v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i));
    let mask = _mm256_set1_epi32(0x0F);
    [
        _mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)),
        _mm256_cvtepi32_ps(_mm256_and_si256(v1, mask)),
        _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v0)),
        _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v1)),
    ]
}

/// The 32 five-bit codes of a Q5_0/Q5_1 block as integers, in element order: the nibbles of
/// the 16 bytes at `qs` (low nibbles first) with bit j of `qh` (little-endian) as value j's
/// fifth bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_codes(qs: *const u8, qh: u32) -> [__m256i; 4] {
    let v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs as *const __m128i));
    let v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8) as *const __m128i));
    let mask = _mm256_set1_epi32(0x0F);
    let bits = _mm256_set1_epi32(qh as i32);
    let sixteen = _mm256_set1_epi32(16);
    let lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    // Lane i of group g holds value 8g + i: its fifth bit is qh bit 8g + i.
    let fifth = |g: i32| {
        let m = _mm256_sllv_epi32(lane, _mm256_set1_epi32(8 * g));
        _mm256_and_si256(_mm256_cmpeq_epi32(_mm256_and_si256(bits, m), m), sixteen)
    };
    [
        _mm256_or_si256(_mm256_and_si256(v0, mask), fifth(0)),
        _mm256_or_si256(_mm256_and_si256(v1, mask), fifth(1)),
        _mm256_or_si256(_mm256_srli_epi32::<4>(v0), fifth(2)),
        _mm256_or_si256(_mm256_srli_epi32::<4>(v1), fifth(3)),
    ]
}

// Weight types as const-generic parameters (their GGUF ids).
pub(crate) const F32: u8 = GgmlType::F32 as u8;
pub(crate) const F16: u8 = GgmlType::F16 as u8;
pub(crate) const BF16: u8 = GgmlType::BF16 as u8;
pub(crate) const Q8_0: u8 = GgmlType::Q8_0 as u8;
pub(crate) const Q4_0: u8 = GgmlType::Q4_0 as u8;
pub(crate) const Q4_1: u8 = GgmlType::Q4_1 as u8;
/// Q5_0 and Q5_1 are decoded by `decode` for the transposed panel packer only (the GEMV has no
/// fused kernel for them; see `vecops::has_block32_simd`).
pub(crate) const Q5_0: u8 = GgmlType::Q5_0 as u8;
pub(crate) const Q5_1: u8 = GgmlType::Q5_1 as u8;

/// Bytes of one 32-value block of type T.
const fn block_bytes(t: u8) -> usize {
    match t {
        F32 => 128,
        F16 | BF16 => 64,
        Q8_0 => 34,
        Q4_0 => 18,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 20, // Q4_1
    }
}

/// Values 32b..32b+32 of a row of type T (a `GgmlType` discriminant).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode<const T: u8>(row: *const u8, b: usize) -> [__m256; 4] {
    match T {
        F32 => {
            let p = row.add(128 * b) as *const f32;
            std::array::from_fn(|q| _mm256_loadu_ps(p.add(8 * q)))
        }
        F16 => {
            let p = row.add(64 * b);
            std::array::from_fn(|q| {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * q) as *const __m128i))
            })
        }
        BF16 => {
            let p = row.add(64 * b);
            std::array::from_fn(|q| {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16 * q) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            })
        }
        Q8_0 => {
            let blk = row.add(34 * b);
            let d = bcast_f16(blk);
            std::array::from_fn(|q| {
                let v = _mm_loadl_epi64(blk.add(2 + 8 * q) as *const __m128i);
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d)
            })
        }
        Q4_0 => {
            let blk = row.add(18 * b);
            let d = bcast_f16(blk);
            let eight = _mm256_set1_ps(8.0);
            let q = nibbles(blk.add(2));
            [
                _mm256_mul_ps(_mm256_sub_ps(q[0], eight), d),
                _mm256_mul_ps(_mm256_sub_ps(q[1], eight), d),
                _mm256_mul_ps(_mm256_sub_ps(q[2], eight), d),
                _mm256_mul_ps(_mm256_sub_ps(q[3], eight), d),
            ]
        }
        Q5_0 => {
            // (q − 16) exactly in integers, then one product: the scalar decoder's rounding.
            let blk = row.add(22 * b);
            let d = bcast_f16(blk);
            let q = q5_codes(blk.add(6), (blk.add(2) as *const u32).read_unaligned());
            let sixteen = _mm256_set1_epi32(16);
            q.map(|v| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, sixteen)), d))
        }
        Q5_1 => {
            // q · d, then + m: two roundings, as the scalar decoder (no FMA).
            let blk = row.add(24 * b);
            let (d, m) = bcast_f16_pair(blk);
            let q = q5_codes(blk.add(8), (blk.add(4) as *const u32).read_unaligned());
            q.map(|v| _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), d), m))
        }
        _ => {
            // Q4_1
            let blk = row.add(20 * b);
            let (d, m) = bcast_f16_pair(blk);
            let q = nibbles(blk.add(4));
            [
                _mm256_fmadd_ps(q[0], d, m),
                _mm256_fmadd_ps(q[1], d, m),
                _mm256_fmadd_ps(q[2], d, m),
                _mm256_fmadd_ps(q[3], d, m),
            ]
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Σ_j q[j]·x[j] over one 32-value block, as 8 lanes (two short chains, then one add).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4(q: &[__m256; 4], x: &[__m256; 4]) -> __m256 {
    let a = _mm256_fmadd_ps(q[2], x[2], _mm256_mul_ps(q[0], x[0]));
    let b = _mm256_fmadd_ps(q[3], x[3], _mm256_mul_ps(q[1], x[1]));
    _mm256_add_ps(a, b)
}

/// The 32 signed codes of a Q8_0 block (bytes at p) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn codes_q8(p: *const u8) -> [__m256; 4] {
    let cvt = |o: usize| {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
            p.add(o) as *const __m128i
        )))
    };
    [cvt(0), cvt(8), cvt(16), cvt(24)]
}

/// acc + W_row(block b)·x_block, with the block's scales applied once to the dot of the raw
/// codes: d·(q·x) for Q8_0, d·(q·x − 8·Σx) for Q4_0, d·(q·x) + m·Σx for Q4_1 (sx = Σx).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot<const T: u8>(
    row: *const u8,
    b: usize,
    x: &[__m256; 4],
    sx: __m256,
    acc: __m256,
) -> __m256 {
    match T {
        F32 | F16 | BF16 => _mm256_add_ps(acc, dot4(&decode::<T>(row, b), x)),
        Q8_0 => {
            let blk = row.add(34 * b);
            _mm256_fmadd_ps(bcast_f16(blk), dot4(&codes_q8(blk.add(2)), x), acc)
        }
        Q4_0 => {
            let blk = row.add(18 * b);
            let t = dot4(&nibbles(blk.add(2)), x);
            let t = _mm256_fnmadd_ps(_mm256_set1_ps(8.0), sx, t);
            _mm256_fmadd_ps(bcast_f16(blk), t, acc)
        }
        _ => {
            // Q4_1
            let blk = row.add(20 * b);
            let (d, m) = bcast_f16_pair(blk);
            let t = dot4(&nibbles(blk.add(4)), x);
            _mm256_fmadd_ps(m, sx, _mm256_fmadd_ps(d, t, acc))
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<const T: u8, const R: usize>(
    rows: &[&[u8]],
    nblocks: usize,
    x: &[f32],
    out: &mut [f32; 8],
) {
    let rp: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); R];
    // The next group of ROWS rows follows these in memory: prefetch it block by block, so the
    // stream is in cache when we get there (the hardware prefetcher alone falls behind).
    let ahead = ROWS * nblocks * block_bytes(T);
    for b in 0..nblocks {
        for &p in &rp {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + b * block_bytes(T)) as *const i8);
        }
        let xb = xp.add(32 * b);
        let xv = [
            _mm256_loadu_ps(xb),
            _mm256_loadu_ps(xb.add(8)),
            _mm256_loadu_ps(xb.add(16)),
            _mm256_loadu_ps(xb.add(24)),
        ];
        let sx = if T == Q4_0 || T == Q4_1 {
            _mm256_add_ps(_mm256_add_ps(xv[0], xv[1]), _mm256_add_ps(xv[2], xv[3]))
        } else {
            _mm256_setzero_ps()
        };
        for r in 0..R {
            acc[r] = block_dot::<T>(rp[r], b, &xv, sx, acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
}

/// out[r] = Σ_p W_r(p)·x[p] for r < rows.len() (1 or ROWS); n must be 1 (= XS).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Each row must hold exactly `k` values of `ty` with
/// k a multiple of 32, and x at least k values.
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
                run::<{ $t as u8 }, 1>(rows, nb, x, out)
            } else {
                run::<{ $t as u8 }, ROWS>(rows, nb, x, out)
            }
        };
    }
    match ty {
        GgmlType::F32 => go!(GgmlType::F32),
        GgmlType::F16 => go!(GgmlType::F16),
        GgmlType::BF16 => go!(GgmlType::BF16),
        GgmlType::Q8_0 => go!(GgmlType::Q8_0),
        GgmlType::Q4_0 => go!(GgmlType::Q4_0),
        GgmlType::Q4_1 => go!(GgmlType::Q4_1),
        // Callers check `has_block32_simd` first (see its doc).
        other => panic!("no 32-value block decoder for {}", other.name()),
    }
}
