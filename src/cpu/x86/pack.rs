//! Panel packing helpers shared by the AVX2 and AVX-512 paths (AVX-512 hosts have AVX2).

use std::arch::x86_64::*;

/// Transpose an 8 × kc block into kc × 8: dst[p*ldd + r] = src[r*lds + p] for r < 8, p < kc.
/// Full 8×8 tiles go through registers (24 shuffles per 64 values); a p-tail is scalar.
///
/// # Safety
/// AVX2 must be available; src must hold 8 rows of kc readable values at stride lds, and dst
/// kc rows of 8 writable values at stride ldd.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose8(src: *const f32, lds: usize, kc: usize, dst: *mut f32, ldd: usize) {
    let mut p = 0;
    while p + 8 <= kc {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds + p)));
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
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (q, v) in out.into_iter().enumerate() {
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
