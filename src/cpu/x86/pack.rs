//! Panel packing helpers shared by the AVX2 and AVX-512 paths (AVX-512 hosts have AVX2).

use super::gemv_avx2::{decode, BF16, F16, F32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// 8×8 transpose in registers: out[q] lane i = r[i] lane q (24 shuffles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose8x8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Transpose an 8 × kc block into kc × 8: dst[p*ldd + r] = src[r*lds + p] for r < 8, p < kc.
/// Full 8×8 tiles go through registers; a p-tail is scalar.
///
/// # Safety
/// AVX2 must be available; src must hold 8 rows of kc readable values at stride lds, and dst
/// kc rows of 8 writable values at stride ldd.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose8(src: *const f32, lds: usize, kc: usize, dst: *mut f32, ldd: usize) {
    let mut p = 0;
    while p + 8 <= kc {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, ri) in r.iter_mut().enumerate() {
            *ri = _mm256_loadu_ps(src.add(i * lds + p));
        }
        for (q, v) in transpose8x8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add((p + q) * ldd), v);
        }
        p += 8;
    }
    for pp in p..kc {
        for i in 0..8 {
            *dst.add(pp * ldd + i) = *src.add(i * lds + pp);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_wt8_t<const T: u8>(
    rows: &[&[u8]; 8],
    b0: usize,
    nblk: usize,
    dst: *mut f32,
    ldd: usize,
) {
    let rp: [*const u8; 8] = [
        rows[0].as_ptr(),
        rows[1].as_ptr(),
        rows[2].as_ptr(),
        rows[3].as_ptr(),
        rows[4].as_ptr(),
        rows[5].as_ptr(),
        rows[6].as_ptr(),
        rows[7].as_ptr(),
    ];
    for b in 0..nblk {
        let mut v = [[_mm256_setzero_ps(); 4]; 8];
        for (vr, &p) in v.iter_mut().zip(&rp) {
            *vr = decode::<T>(p, b0 + b);
        }
        // q picks the q-th vector of every row: an index, not an iteration over v.
        #[allow(clippy::needless_range_loop)]
        for q in 0..4 {
            let t = transpose8x8([
                v[0][q], v[1][q], v[2][q], v[3][q], v[4][q], v[5][q], v[6][q], v[7][q],
            ]);
            let o = dst.add((32 * b + 8 * q) * ldd);
            for (i, ti) in t.into_iter().enumerate() {
                _mm256_storeu_ps(o.add(i * ldd), ti);
            }
        }
    }
}

/// Dequantize values p0..p0+kc of 8 W rows straight into a transposed panel:
/// dst[p*ldd + r] = W_r(p0 + p), decoding each 32-value block into registers (no row buffer).
///
/// # Safety
/// AVX2, FMA and F16C must be available. p0 and kc must be multiples of 32, every row must
/// hold at least p0 + kc values of `ty`, and dst must have kc rows of 8 writable values at
/// stride ldd.
pub(crate) unsafe fn pack_wt8(
    ty: GgmlType,
    rows: &[&[u8]; 8],
    p0: usize,
    kc: usize,
    dst: *mut f32,
    ldd: usize,
) {
    assert!(p0.is_multiple_of(32) && kc.is_multiple_of(32));
    assert!(rows
        .iter()
        .all(|r| ty.row_bytes(p0 + kc).is_some_and(|n| n <= r.len())));
    let (b0, nblk) = (p0 / 32, kc / 32);
    match ty {
        GgmlType::F32 => pack_wt8_t::<F32>(rows, b0, nblk, dst, ldd),
        GgmlType::F16 => pack_wt8_t::<F16>(rows, b0, nblk, dst, ldd),
        GgmlType::BF16 => pack_wt8_t::<BF16>(rows, b0, nblk, dst, ldd),
        GgmlType::Q8_0 => pack_wt8_t::<Q8_0>(rows, b0, nblk, dst, ldd),
        GgmlType::Q4_0 => pack_wt8_t::<Q4_0>(rows, b0, nblk, dst, ldd),
        GgmlType::Q4_1 => pack_wt8_t::<Q4_1>(rows, b0, nblk, dst, ldd),
        GgmlType::Q5_0 => pack_wt8_t::<Q5_0>(rows, b0, nblk, dst, ldd),
        GgmlType::Q5_1 => pack_wt8_t::<Q5_1>(rows, b0, nblk, dst, ldd),
        // Callers check `has_wt8_pack` first (see its doc).
        other => panic!("no 32-value block decoder for {}", other.name()),
    }
}
