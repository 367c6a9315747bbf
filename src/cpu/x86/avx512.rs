//! AVX-512 (F/BW/VL) kernels, 16 f32 lanes; tails use masked loads and stores.
//!
//! Every function is an `unsafe fn` compiled with `#[target_feature]`: callers must have
//! checked the CPU (`dispatch::check`). Slices are only touched within their lengths (masked
//! lanes are never read or written); raw-pointer kernels document their contract.
//!
//! The AVX-512 intrinsics are stable since Rust 1.89: building this crate needs at least that
//! (Cargo.toml's `rust-version` should say so; until it does, `x86/mod.rs` tells clippy).

use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// GEMM micro-tile: 8 rows × 32 columns = 16 zmm accumulators.
pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 32;

/// Mask of the first `n` (< 16) lanes.
#[inline]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// The IEEE half at p (little-endian) converted and broadcast to 16 lanes (broadcast first:
/// a full-register write, no false dependency on a live register).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn bcast_f16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(i16::from_le_bytes([*p, *p.add(1)])))
}

/// The two halves at p (Q4_1's d, m), each converted and broadcast to 16 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn bcast_f16_pair(p: *const u8) -> (__m512, __m512) {
    let bits = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let v = _mm512_cvtph_ps(_mm256_set1_epi32(bits));
    (_mm512_moveldup_ps(v), _mm512_movehdup_ps(v))
}

/// e^x for 16 lanes: same polynomial and range handling as `avx2::exp`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn exp(x: __m512) -> __m512 {
    let hi = _mm512_set1_ps(88.722_83);
    let lo = _mm512_set1_ps(-88.0);
    let xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
    let n = _mm512_cvtps_epi32(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let nf = _mm512_cvtepi32_ps(n);
    let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(0.693_359_4), xc);
    let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.398_199_9e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.333_452e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.166_579_6e-2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.166_666_65));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5));
    y = _mm512_fmadd_ps(
        y,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    let n1 = _mm512_srai_epi32::<1>(n);
    let n2 = _mm512_sub_epi32(n, n1);
    let bias = _mm512_set1_epi32(127);
    let p1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
    let p2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
    let res = _mm512_mul_ps(_mm512_mul_ps(y, p1), p2);
    let res = _mm512_mask_mov_ps(
        res,
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo),
        _mm512_setzero_ps(),
    );
    _mm512_mask_mov_ps(
        res,
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi),
        _mm512_set1_ps(f32::INFINITY),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = i + 16 * u;
            *acc_u = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(o)),
                _mm512_loadu_ps(pb.add(o)),
                *acc_u,
            );
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i)),
            _mm512_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 16;
    }
    if i < n {
        let k = tail_mask(n - i);
        let va = _mm512_maskz_loadu_ps(k, pa.add(i));
        let vb = _mm512_maskz_loadu_ps(k, pb.add(i));
        acc[1] = _mm512_fmadd_ps(va, vb, acc[1]);
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm512_set1_ps(alpha);
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        let r = _mm512_fmadd_ps(
            va,
            _mm512_maskz_loadu_ps(k, px.add(i)),
            _mm512_maskz_loadu_ps(k, py.add(i)),
        );
        _mm512_mask_storeu_ps(py.add(i), k, r);
        i += 16;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn scale(alpha: f32, x: &mut [f32]) {
    let n = x.len();
    let va = _mm512_set1_ps(alpha);
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        _mm512_mask_storeu_ps(
            p.add(i),
            k,
            _mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, p.add(i))),
        );
        i += 16;
    }
}

/// out = x · s · w (elementwise, s a scalar): the second half of RMSNorm.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn mul3(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
    let n = x.len().min(w.len()).min(out.len());
    let vs = _mm512_set1_ps(s);
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), vs);
        let v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w.as_ptr().add(i)));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, v);
        i += 16;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        let g = _mm512_maskz_loadu_ps(k, gate.as_ptr().add(i));
        let u = _mm512_maskz_loadu_ps(k, up.as_ptr().add(i));
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, r);
        i += 16;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut m = ninf;
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, k, x.as_ptr().add(i)));
        i += 16;
    }
    _mm512_reduce_max_ps(m)
}

/// Σ exp(x − m) in a fixed order (one accumulator; masked-off lanes add 0).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn sum_exp(x: &[f32], m: f32) -> f32 {
    let n = x.len();
    let vm = _mm512_set1_ps(m);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        let e = exp(_mm512_sub_ps(
            _mm512_maskz_loadu_ps(k, x.as_ptr().add(i)),
            vm,
        ));
        acc = _mm512_mask_add_ps(acc, k, acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// x = exp(x − m); returns Σ of the new x (same order as [`sum_exp`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let vm = _mm512_set1_ps(m);
    let p = x.as_mut_ptr();
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let k = if n - i >= 16 {
            0xFFFF
        } else {
            tail_mask(n - i)
        };
        let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), vm));
        _mm512_mask_storeu_ps(p.add(i), k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// 16 packed nibbles → 16 f32 of the low nibbles, 16 f32 of the high nibbles (each byte is
/// widened to a 32-bit lane once, then masked or shifted).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn nibbles_f32(p: *const u8) -> (__m512, __m512) {
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
    let lo = _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
    let hi = _mm512_srli_epi32::<4>(v);
    (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi))
}

/// The 32 five-bit codes of a Q5_0/Q5_1 block as two [16 × i32] halves: the nibbles of the 16
/// bytes at `qs` (low nibbles first) with bit j of `qh` as value j's fifth bit.
///
/// # Safety
/// AVX-512 F/BW/VL must be available and `qs .. qs + 16` readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q5_codes(qs: *const u8, qh: u32) -> (__m512i, __m512i) {
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs as *const __m128i));
    let lo = _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
    let hi = _mm512_srli_epi32::<4>(v);
    let sixteen = _mm512_set1_epi32(16);
    (
        _mm512_mask_or_epi32(lo, (qh & 0xFFFF) as u16, lo, sixteen),
        _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, sixteen),
    )
}

/// Dequantize whole blocks: `dst.len()` values of `ty` from `src`. Bit-identical to
/// `crate::quant::dequantize_row` (same single rounding per operation, no FMA contraction).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    assert!(
        ty.row_bytes(n) == Some(src.len()),
        "avx512::dequantize: length"
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
            while i < n {
                let k = if n - i >= 16 {
                    0xFFFF
                } else {
                    tail_mask(n - i)
                };
                let h = _mm256_maskz_loadu_epi16(k, s.add(2 * i) as *const i16);
                _mm512_mask_storeu_ps(d.add(i), k, _mm512_cvtph_ps(h));
                i += 16;
            }
        }
        GgmlType::BF16 => {
            let mut i = 0;
            while i < n {
                let k = if n - i >= 16 {
                    0xFFFF
                } else {
                    tail_mask(n - i)
                };
                let h =
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, s.add(2 * i) as *const i16));
                _mm512_mask_storeu_ps(d.add(i), k, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)));
                i += 16;
            }
        }
        GgmlType::Q8_0 => {
            for b in 0..n / 32 {
                let blk = s.add(b * 34);
                let vd = bcast_f16(blk);
                for h in 0..2 {
                    let v = _mm_loadu_si128(blk.add(2 + 16 * h) as *const __m128i);
                    let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
                    _mm512_storeu_ps(d.add(b * 32 + 16 * h), _mm512_mul_ps(f, vd));
                }
            }
        }
        GgmlType::Q4_0 => {
            let eight = _mm512_set1_ps(8.0);
            for b in 0..n / 32 {
                let blk = s.add(b * 18);
                let vd = bcast_f16(blk);
                let (lo, hi) = nibbles_f32(blk.add(2));
                let o = d.add(b * 32);
                _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_sub_ps(lo, eight), vd));
                _mm512_storeu_ps(o.add(16), _mm512_mul_ps(_mm512_sub_ps(hi, eight), vd));
            }
        }
        GgmlType::Q4_1 => {
            for b in 0..n / 32 {
                let blk = s.add(b * 20);
                let (vd, vm) = bcast_f16_pair(blk);
                let (lo, hi) = nibbles_f32(blk.add(4));
                let o = d.add(b * 32);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_mul_ps(lo, vd), vm));
                _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_mul_ps(hi, vd), vm));
            }
        }
        // SAFETY: this function's own target features include the callee's; the callee
        // checks the block/length contract itself.
        GgmlType::Q4_K => super::kquant::q4k_avx512(src, dst),
        // SAFETY: as for Q4_K just above.
        GgmlType::Q6_K => super::kquant::q6k_avx512(src, dst),
        // Q5_0 / Q5_1: the fifth bit of value j (j < 16: low nibble of qs[j]; j ≥ 16: high
        // nibble of qs[j − 16]) is bit j of qh, so each half's 16 bits are an AVX-512 lane mask.
        GgmlType::Q5_0 => {
            let sixteen = _mm512_set1_epi32(16);
            for b in 0..n / 32 {
                // Block b is bytes 22b .. 22b + 22, inside `src` by the length check above.
                let blk = s.add(b * 22);
                let vd = bcast_f16(blk);
                let qh = u32::from_le_bytes([*blk.add(2), *blk.add(3), *blk.add(4), *blk.add(5)]);
                let (lo, hi) = q5_codes(blk.add(6), qh);
                // (q − 16) exactly in integers, then one product: the scalar decoder's rounding.
                let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, sixteen));
                let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, sixteen));
                let o = d.add(b * 32);
                _mm512_storeu_ps(o, _mm512_mul_ps(lo, vd));
                _mm512_storeu_ps(o.add(16), _mm512_mul_ps(hi, vd));
            }
        }
        GgmlType::Q5_1 => {
            for b in 0..n / 32 {
                // Block b is bytes 24b .. 24b + 24, inside `src` by the length check above.
                let blk = s.add(b * 24);
                let (vd, vm) = bcast_f16_pair(blk);
                let qh = u32::from_le_bytes([*blk.add(4), *blk.add(5), *blk.add(6), *blk.add(7)]);
                let (lo, hi) = q5_codes(blk.add(8), qh);
                let o = d.add(b * 32);
                // q · d, then + m: two roundings, as the scalar decoder (no FMA).
                let (lo, hi) = (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi));
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_mul_ps(lo, vd), vm));
                _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_mul_ps(hi, vd), vm));
            }
        }
        // No SIMD decoder yet: the scalar reference (exact by definition).
        GgmlType::Q5_K | GgmlType::Q8_K => crate::quant::dequantize_row(ty, src, dst),
    }
}

/// GEMM microkernel, same contract as `scalar::kernel` with MR = 8, NR = 32.
///
/// # Safety
/// AVX-512F must be available; every A(i < mr, p < kc), B(p < kc, j < 32) element must be
/// readable and every C(i < mr, j < 32) writable through the given pointers and strides.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
        8 => tile::<8>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        7 => tile::<7>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        6 => tile::<6>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        5 => tile::<5>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        4 => tile::<4>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        3 => tile::<3>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        2 => tile::<2>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        1 => tile::<1>(kc, a, rsa, csa, b, ldb, c, ldc, overwrite),
        _ => unreachable!("avx512 kernel: mr = {mr} outside 1..=8"),
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
    let mut acc0 = [_mm512_setzero_ps(); M];
    let mut acc1 = [_mm512_setzero_ps(); M];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..M {
            let av = _mm512_set1_ps(*ap.add(i * rsa));
            acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
        }
        // wrapping: after the last step the pointers may point past the buffers (unused).
        ap = ap.wrapping_add(csa);
        bp = bp.wrapping_add(ldb);
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
