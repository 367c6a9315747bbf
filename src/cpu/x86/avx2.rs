//! AVX2 + FMA + F16C kernels (8 f32 lanes).
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers must have
//! checked the CPU (`dispatch::check`). Slices are only read within their lengths; raw-pointer
//! kernels document their contract.

use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// GEMM micro-tile: 6 rows × 16 columns = 12 ymm accumulators (+2 for B, 1 broadcast).
pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One IEEE half (little-endian bits) to f32, exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The IEEE half at p (little-endian) converted and broadcast to 8 lanes. Broadcasting the
/// 16-bit pattern first (a full-register write) avoids the false dependency that inserting
/// into a live register would create.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bcast_f16(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([*p, *p.add(1)])))
}

/// The two halves at p (Q4_1's d, m), each converted and broadcast to 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bcast_f16_pair(p: *const u8) -> (__m256, __m256) {
    let v = _mm256_cvtph_ps(_mm_set1_epi32(i32::from_le_bytes([
        *p,
        *p.add(1),
        *p.add(2),
        *p.add(3),
    ])));
    (_mm256_moveldup_ps(v), _mm256_movehdup_ps(v))
}

/// e^x for 8 lanes (Cephes expf polynomial, ≈1–2 ulp). x > 88.72 gives +inf, x < −88 gives
/// 0 (true value < 7e-39), NaN stays NaN.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn exp(x: __m256) -> __m256 {
    let hi = _mm256_set1_ps(88.722_83);
    let lo = _mm256_set1_ps(-88.0);
    // max/min return their second operand when either is NaN: keep x second so NaN survives.
    let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    let n = _mm256_cvtps_epi32(_mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)));
    let nf = _mm256_cvtepi32_ps(n);
    let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(0.693_359_4), xc);
    let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.398_199_9e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.333_452e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.166_579_6e-2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.166_666_65));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5));
    y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^n as 2^(n>>1) · 2^(n − n>>1): each factor stays a normal float for n in [−127, 128].
    let n1 = _mm256_srai_epi32::<1>(n);
    let n2 = _mm256_sub_epi32(n, n1);
    let bias = _mm256_set1_epi32(127);
    let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
    let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
    let res = _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
    let res = _mm256_blendv_ps(res, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
    _mm256_blendv_ps(
        res,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = i + 8 * u;
            *acc_u = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(o)),
                _mm256_loadu_ps(pb.add(o)),
                *acc_u,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let py = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(
            py,
            _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(py)),
        );
        i += 8;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scale(alpha: f32, x: &mut [f32]) {
    let n = x.len();
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let p = x.as_mut_ptr().add(i);
        _mm256_storeu_ps(p, _mm256_mul_ps(va, _mm256_loadu_ps(p)));
        i += 8;
    }
    for v in &mut x[i..] {
        *v *= alpha;
    }
}

/// out = x · s · w (elementwise, s a scalar): the second half of RMSNorm.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mul3(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
    let n = x.len().min(w.len()).min(out.len());
    let vs = _mm256_set1_ps(s);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vs);
        _mm256_storeu_ps(
            out.as_mut_ptr().add(i),
            _mm256_mul_ps(v, _mm256_loadu_ps(w.as_ptr().add(i))),
        );
        i += 8;
    }
    for j in i..n {
        out[j] = x[j] * s * w[j];
    }
}

/// Copy up to 8 values into a vector, filling the rest with `fill`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_partial(x: &[f32], fill: f32) -> __m256 {
    let mut buf = [fill; 8];
    buf[..x.len()].copy_from_slice(x);
    _mm256_loadu_ps(buf.as_ptr())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn silu_mul8(g: __m256, u: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        let r = silu_mul8(
            _mm256_loadu_ps(gate.as_ptr().add(i)),
            _mm256_loadu_ps(up.as_ptr().add(i)),
        );
        _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
        i += 8;
    }
    if i < n {
        let r = silu_mul8(load_partial(&gate[i..n], 0.0), load_partial(&up[i..n], 0.0));
        let mut buf = [0.0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), r);
        out[i..n].copy_from_slice(&buf[..n - i]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        m = _mm256_max_ps(m, _mm256_loadu_ps(x.as_ptr().add(i)));
        i += 8;
    }
    let mut s = hmax(m);
    for &v in &x[i..] {
        s = s.max(v);
    }
    s
}

/// Σ exp(x − m), in a fixed order (one vector accumulator, tail padded with −∞ → 0).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn sum_exp(x: &[f32], m: f32) -> f32 {
    let n = x.len();
    let vm = _mm256_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        acc = _mm256_add_ps(
            acc,
            exp(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vm)),
        );
        i += 8;
    }
    if i < n {
        let v = load_partial(&x[i..], f32::NEG_INFINITY);
        acc = _mm256_add_ps(acc, exp(_mm256_sub_ps(v, vm)));
    }
    hsum(acc)
}

/// x = exp(x − m); returns Σ of the new x (same order as [`sum_exp`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let vm = _mm256_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let p = x.as_mut_ptr().add(i);
        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), vm));
        _mm256_storeu_ps(p, e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    if i < n {
        let e = exp(_mm256_sub_ps(load_partial(&x[i..], f32::NEG_INFINITY), vm));
        let mut buf = [0.0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), e);
        x[i..].copy_from_slice(&buf[..n - i]);
        acc = _mm256_add_ps(acc, e);
    }
    hsum(acc)
}

/// 16 packed nibbles → (low nibbles as 16 u8, high nibbles as 16 u8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
    let v = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    (
        _mm_and_si128(v, mask),
        _mm_and_si128(_mm_srli_epi16::<4>(v), mask),
    )
}

/// Lanes 0..8 and 8..16 of 16 u8 as two f32 vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8x16_to_f32(v: __m128i) -> (__m256, __m256) {
    (
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))),
    )
}

/// Dequantize whole blocks: `dst.len()` values of `ty` from `src`. Bit-identical to
/// `crate::quant::dequantize_row` (same single rounding per operation, no FMA contraction).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    assert!(
        ty.row_bytes(n) == Some(src.len()),
        "avx2::dequantize: length"
    );
    let s = src.as_ptr();
    let d = dst.as_mut_ptr();
    match ty {
        GgmlType::F32 => {
            // Little-endian host: the bytes are the floats.
            std::ptr::copy_nonoverlapping(s, d as *mut u8, n * 4);
        }
        GgmlType::F16 => {
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(
                    d.add(i),
                    _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * i) as *const __m128i)),
                );
                i += 8;
            }
            for j in i..n {
                *d.add(j) = f16_at(s.add(2 * j));
            }
        }
        GgmlType::BF16 => {
            let mut i = 0;
            while i + 8 <= n {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(s.add(2 * i) as *const __m128i));
                _mm256_storeu_ps(d.add(i), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h)));
                i += 8;
            }
            for j in i..n {
                let bits = u16::from_le_bytes([*s.add(2 * j), *s.add(2 * j + 1)]) as u32;
                *d.add(j) = f32::from_bits(bits << 16);
            }
        }
        GgmlType::Q8_0 => {
            for b in 0..n / 32 {
                let blk = s.add(b * 34);
                let vd = bcast_f16(blk);
                for q in 0..4 {
                    let v = _mm_loadl_epi64(blk.add(2 + 8 * q) as *const __m128i);
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
                    _mm256_storeu_ps(d.add(b * 32 + 8 * q), _mm256_mul_ps(f, vd));
                }
            }
        }
        GgmlType::Q4_0 => {
            let eight = _mm256_set1_ps(8.0);
            for b in 0..n / 32 {
                let blk = s.add(b * 18);
                let vd = bcast_f16(blk);
                let (lo, hi) = nibbles(blk.add(2));
                let o = d.add(b * 32);
                for (h, v) in [lo, hi].into_iter().enumerate() {
                    let (f0, f1) = u8x16_to_f32(v);
                    // (q − 8) is exact in f32, then one rounding: as the scalar code.
                    _mm256_storeu_ps(o.add(16 * h), _mm256_mul_ps(_mm256_sub_ps(f0, eight), vd));
                    _mm256_storeu_ps(
                        o.add(16 * h + 8),
                        _mm256_mul_ps(_mm256_sub_ps(f1, eight), vd),
                    );
                }
            }
        }
        GgmlType::Q4_1 => {
            for b in 0..n / 32 {
                let blk = s.add(b * 20);
                let (vd, vm) = bcast_f16_pair(blk);
                let (lo, hi) = nibbles(blk.add(4));
                let o = d.add(b * 32);
                for (h, v) in [lo, hi].into_iter().enumerate() {
                    let (f0, f1) = u8x16_to_f32(v);
                    // q·d + m with two roundings (no FMA), exactly like the scalar code.
                    _mm256_storeu_ps(o.add(16 * h), _mm256_add_ps(_mm256_mul_ps(f0, vd), vm));
                    _mm256_storeu_ps(o.add(16 * h + 8), _mm256_add_ps(_mm256_mul_ps(f1, vd), vm));
                }
            }
        }
        // SAFETY: this function's own target features include the callee's; the callee
        // checks the block/length contract itself.
        GgmlType::Q4_K => super::kquant::q4k_avx2(src, dst),
        // SAFETY: as for Q4_K just above.
        GgmlType::Q6_K => super::kquant::q6k_avx2(src, dst),
        // No SIMD decoder yet: the scalar reference (exact by definition).
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K | GgmlType::Q8_K => {
            crate::quant::dequantize_row(ty, src, dst)
        }
    }
}

/// GEMM microkernel, same contract as `scalar::kernel` with MR = 6, NR = 16.
///
/// # Safety
/// AVX2+FMA must be available; every A(i < mr, p < kc), B(p < kc, j < 16) element must be
/// readable and every C(i < mr, j < 16) writable through the given pointers and strides.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
    match mr {
        6 => tile::<6>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        5 => tile::<5>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        4 => tile::<4>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        3 => tile::<3>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        2 => tile::<2>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        1 => tile::<1>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        _ => unreachable!("avx2 kernel: mr = {mr} outside 1..=6"),
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
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc0 = [_mm256_setzero_ps(); M];
    let mut acc1 = [_mm256_setzero_ps(); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
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
