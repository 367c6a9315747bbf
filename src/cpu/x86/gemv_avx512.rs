//! Fused dequantize-and-dot for y = x·Wᵀ with one or two rows of x (generation), AVX-512.
//! Each 32-value block of up to 4 W rows is decoded straight into registers and multiplied
//! into 2 accumulators per (W row, x row); nothing is written back to memory but the sums.

use super::avx512::{bcast_f16, bcast_f16_pair, nibbles_f32 as nibbles};
use super::gemv_avx2::{BF16, F16, F32, Q4_0, Q4_1, Q8_0};
use super::pack512::decode;
use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// W rows and x rows per call.
pub(crate) const ROWS: usize = 4;
pub(crate) const XS: usize = 2;

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

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn run<const T: u8, const R: usize, const N: usize>(
    rows: &[&[u8]],
    nblocks: usize,
    x: &[f32],
    ldx: usize,
    out: &mut [f32; 8],
) {
    let rp: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let xp: [*const f32; N] = std::array::from_fn(|i| x.as_ptr().add(i * ldx));
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    // The next group of ROWS rows follows these in memory: prefetch it block by block, so the
    // stream is in cache when we get there (the hardware prefetcher alone falls behind).
    let ahead = ROWS * nblocks * block_bytes(T);
    let eight = _mm512_set1_ps(8.0);
    for b in 0..nblocks {
        for &p in &rp {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + b * block_bytes(T)) as *const i8);
        }
        let xv: [(__m512, __m512); N] = std::array::from_fn(|i| {
            (
                _mm512_loadu_ps(xp[i].add(32 * b)),
                _mm512_loadu_ps(xp[i].add(32 * b + 16)),
            )
        });
        // Σx per x row, for the Q4 formats' offset terms.
        let sx: [__m512; N] = std::array::from_fn(|i| _mm512_add_ps(xv[i].0, xv[i].1));
        for r in 0..R {
            // The block's raw codes (or values, for float types) and scales; the scales are
            // applied once to each code·x dot: d·(q·x), d·(q·x − 8·Σx), d·(q·x) + m·Σx.
            let (ql, qh, d, m) = raw::<T>(rp[r], b);
            for i in 0..N {
                let t = _mm512_fmadd_ps(qh, xv[i].1, _mm512_mul_ps(ql, xv[i].0));
                acc[r][i] = match T {
                    Q8_0 => _mm512_fmadd_ps(d, t, acc[r][i]),
                    Q4_0 => _mm512_fmadd_ps(d, _mm512_fnmadd_ps(eight, sx[i], t), acc[r][i]),
                    Q4_1 => _mm512_fmadd_ps(m, sx[i], _mm512_fmadd_ps(d, t, acc[r][i])),
                    _ => _mm512_add_ps(acc[r][i], t),
                };
            }
        }
    }
    for r in 0..R {
        for i in 0..N {
            out[i * ROWS + r] = _mm512_reduce_add_ps(acc[r][i]);
        }
    }
}

/// Block b of a row of type T as (codes 0..16, codes 16..32, d, m) for the quantized types,
/// or (values, values, unused, unused) for the float types.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn raw<const T: u8>(row: *const u8, b: usize) -> (__m512, __m512, __m512, __m512) {
    let z = _mm512_setzero_ps();
    match T {
        Q8_0 => {
            let blk = row.add(34 * b);
            let cvt = |o: usize| {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    blk.add(o) as *const __m128i
                )))
            };
            (cvt(2), cvt(18), bcast_f16(blk), z)
        }
        Q4_0 => {
            let blk = row.add(18 * b);
            let (lo, hi) = nibbles(blk.add(2));
            (lo, hi, bcast_f16(blk), z)
        }
        Q4_1 => {
            let blk = row.add(20 * b);
            let (lo, hi) = nibbles(blk.add(4));
            let (d, m) = bcast_f16_pair(blk);
            (lo, hi, d, m)
        }
        _ => {
            let (lo, hi) = decode::<T, true>(row, b);
            (lo, hi, z, z)
        }
    }
}

/// out[i*ROWS + r] = Σ_p W_r(p)·x[i*ldx + p] for r < rows.len() (1 or ROWS), i < n (1..=XS).
///
/// # Safety
/// AVX-512F/BW/VL, AVX2, FMA and F16C must be available. Each row must hold exactly `k`
/// values of `ty` with k a multiple of 32, and x must hold n rows of k values at stride ldx.
pub(crate) unsafe fn dot_rows(
    ty: GgmlType,
    rows: &[&[u8]],
    k: usize,
    x: &[f32],
    ldx: usize,
    n: usize,
    out: &mut [f32; 8],
) {
    assert!(
        k.is_multiple_of(32) && (rows.len() == 1 || rows.len() == ROWS) && (1..=XS).contains(&n)
    );
    assert!(rows.iter().all(|r| ty.row_bytes(k) == Some(r.len())));
    assert!(x.len() >= (n - 1) * ldx + k);
    let nb = k / 32;
    macro_rules! go {
        ($t:expr) => {
            match (rows.len(), n) {
                (1, 1) => run::<{ $t as u8 }, 1, 1>(rows, nb, x, ldx, out),
                (1, _) => run::<{ $t as u8 }, 1, 2>(rows, nb, x, ldx, out),
                (_, 1) => run::<{ $t as u8 }, ROWS, 1>(rows, nb, x, ldx, out),
                _ => run::<{ $t as u8 }, ROWS, 2>(rows, nb, x, ldx, out),
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
