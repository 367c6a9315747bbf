//! Int8 matrix-vector products for decoding, AVX-512 VNNI: x quantized to 8 bits per 32-value
//! block (as llama.cpp quantizes activations for its q4_1/q8_0 dots), Q4_1 and Q8_0 weight
//! blocks dotted with `vpdpbusd` (64 unsigned×signed byte products per instruction), the block
//! scales applied once per pair of blocks. See `crate::cpu::quant_x` for the layout of `QuantX`.

use crate::cpu::quant_x::QuantX;
use crate::quant::GgmlType;
use std::arch::x86_64::*;

/// W rows per call.
pub(crate) const ROWS: usize = 4;

/// True if this CPU has what the kernels here use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// Quantize x (k values, k a multiple of 64) into q: per block, hi = round(x/d) with
/// d = max|x|/127 and lo = round(128·(x/d − hi)), so x ≈ (d/128)·(128·hi + lo).
///
/// # Safety
/// `available()` must be true; q's buffers must be sized for k (`QuantX::resize`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn quantize(x: &[f32], q: &mut QuantX) {
    let k = x.len();
    assert!(k.is_multiple_of(64) && q.q8.len() == 2 * k && q.q4.len() == 2 * k);
    assert!(q.scl.len() == k / 16 && q.corr.len() == k / 4);
    let xp = x.as_ptr();
    let c128 = _mm512_set1_ps(128.0);
    for b in 0..k / 32 {
        // SAFETY: b < k/32, so 32 values from 32b are inside x.
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_ps(xp.add(32 * b)),
                _mm512_loadu_ps(xp.add(32 * b + 16)),
            )
        };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let (d, id) = if amax > 0.0 {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        let s = _mm512_set1_ps(id);
        let codes = |v: __m512| {
            let t = _mm512_mul_ps(v, s);
            let hi = _mm512_cvtps_epi32(t);
            let lo = _mm512_cvtps_epi32(_mm512_mul_ps(
                _mm512_sub_ps(t, _mm512_cvtepi32_ps(hi)),
                c128,
            ));
            (_mm512_cvtsepi32_epi8(hi), _mm512_cvtsepi32_epi8(lo))
        };
        let ((h0, l0), (h1, l1)) = (codes(v0), codes(v1));
        let (p, h) = (b / 2, b % 2);
        // SAFETY: all offsets are below 2k (q8, q4), as asserted above.
        unsafe {
            let st = |dst: *mut i8, v: __m128i| _mm_storeu_si128(dst as *mut __m128i, v);
            let q8 = q.q8.as_mut_ptr().add(128 * p + 32 * h);
            st(q8, h0);
            st(q8.add(16), h1);
            st(q8.add(64), l0);
            st(q8.add(80), l1);
            let q4 = q.q4.as_mut_ptr().add(128 * p + 16 * h);
            st(q4, h0);
            st(q4.add(32), h1);
            st(q4.add(64), l0);
            st(q4.add(96), l1);
        }
        q.scl[4 * p + 2 * h] = d / 128.0;
        q.scl[4 * p + 2 * h + 1] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    }
    // Q8_0's weights go in as w + 128 (unsigned), which adds 128·Σ(128·hi + lo) over each
    // lane's 4 codes: start each lane at −Σ(128·hi + lo), which the kernel's ·128 scales.
    let (c128u, ones) = (_mm512_set1_epi8(-128i8), _mm512_set1_epi8(1));
    for p in 0..k / 64 {
        // SAFETY: p < k/64: 128 codes from 128p in q8, 16 lanes from 16p in corr.
        unsafe {
            let hi = _mm512_loadu_si512(q.q8.as_ptr().add(128 * p) as *const _);
            let lo = _mm512_loadu_si512(q.q8.as_ptr().add(128 * p + 64) as *const _);
            let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128u, hi);
            let s = _mm512_dpbusd_epi32(s, ones, lo);
            let neg = _mm512_sub_epi32(_mm512_setzero_si512(), s);
            _mm512_storeu_si512(q.corr.as_mut_ptr().add(16 * p) as *mut _, neg);
        }
    }
}

/// Bytes of one 32-value block.
const fn block_bytes(t: u8) -> usize {
    if t == Q8_0 {
        34
    } else {
        20
    }
}
const Q8_0: u8 = GgmlType::Q8_0 as u8;
const Q4_1: u8 = GgmlType::Q4_1 as u8;

/// Per lane: 128·(c + Σ w·hi) + Σ w·lo over its 4 byte pairs (w unsigned, hi/lo signed).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot2(c: __m512i, w: __m512i, hi: __m512i, lo: __m512i) -> __m512i {
    let t = _mm512_slli_epi32::<7>(_mm512_dpbusd_epi32(c, w, hi));
    _mm512_dpbusd_epi32(t, w, lo)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<const T: u8, const R: usize>(rows: &[&[u8]], q: &QuantX, out: &mut [f32; ROWS]) {
    let np = q.q8.len() / 128;
    let bb = block_bytes(T);
    let rp: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm_setzero_ps(); R];
    // Lanes 0–7 (Q8_0) or 0–3, 8–11 (Q4_1) hold block 2p's products, the others block 2p+1's:
    // spread [D(2p), ·, D(2p+1), ·] over them.
    let idx = if T == Q8_0 {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
    } else {
        _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2)
    };
    let low4 = _mm256_set1_epi8(0x0F);
    let flip = _mm512_set1_epi8(-128i8);
    // The next group of ROWS rows follows these in memory: prefetch it as we go.
    let ahead = ROWS * 2 * np * bb;
    let xs = if T == Q8_0 { &q.q8 } else { &q.q4 };
    for p in 0..np {
        // SAFETY (whole block): p < np, so the 64 codes, 16 lanes and 4 scales of pair p are
        // inside q, and the 2 blocks of pair p are inside each row (2·np blocks of bb bytes).
        let xh = _mm512_loadu_si512(xs.as_ptr().add(128 * p) as *const _);
        let xl = _mm512_loadu_si512(xs.as_ptr().add(128 * p + 64) as *const _);
        let xscl = _mm_loadu_ps(q.scl.as_ptr().add(4 * p));
        let corr = if T == Q8_0 {
            _mm512_loadu_si512(q.corr.as_ptr().add(16 * p) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        for r in 0..R {
            let blk = rp[r].add(2 * p * bb);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(ahead) as *const i8);
            let (dp, dm) = if T == Q8_0 {
                let lo = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let hi = _mm256_loadu_si256(blk.add(36) as *const __m256i);
                let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let dp = dot2(corr, _mm512_xor_si512(w, flip), xh, xl);
                let d0 = (blk as *const i16).read_unaligned();
                let d1 = (blk.add(34) as *const i16).read_unaligned();
                (dp, _mm_cvtph_ps(_mm_setr_epi16(d0, 0, d1, 0, 0, 0, 0, 0)))
            } else {
                let lo = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let hi = _mm_loadu_si128(blk.add(24) as *const __m128i);
                let t = _mm256_set_m128i(hi, lo);
                let w = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_and_si256(t, low4)),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(t), low4),
                );
                let dp = dot2(corr, w, xh, xl);
                let s0 = (blk as *const i32).read_unaligned();
                let s1 = (blk.add(20) as *const i32).read_unaligned();
                (dp, _mm_cvtph_ps(_mm_setr_epi32(s0, s1, 0, 0)))
            };
            // [d·dx, m·Σx] of both blocks.
            let dm = _mm_mul_ps(dm, xscl);
            let s = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(dm));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), s, acc[r]);
            if T == Q4_1 {
                accm[r] = _mm_add_ps(accm[r], dm);
            }
        }
    }
    for r in 0..R {
        let mut m = [0.0f32; 4];
        _mm_storeu_ps(m.as_mut_ptr(), accm[r]);
        out[r] = _mm512_reduce_add_ps(acc[r]) + m[1] + m[3];
    }
}

/// out[r] = W_r · x for r < rows.len() (1 or ROWS), x as quantized into q.
///
/// # Safety
/// `available()` must be true. Each row must hold exactly q.len() values of `ty` (Q8_0 or
/// Q4_1), a multiple of 64.
pub(crate) unsafe fn dot_rows(ty: GgmlType, rows: &[&[u8]], q: &QuantX, out: &mut [f32; ROWS]) {
    let k = q.q8.len() / 2;
    assert!(k.is_multiple_of(64) && (rows.len() == 1 || rows.len() == ROWS));
    assert!(rows.iter().all(|r| ty.row_bytes(k) == Some(r.len())));
    // SAFETY: checked above; the caller vouches for the CPU features.
    unsafe {
        match (ty, rows.len()) {
            (GgmlType::Q8_0, 1) => run::<Q8_0, 1>(rows, q, out),
            (GgmlType::Q8_0, _) => run::<Q8_0, ROWS>(rows, q, out),
            (GgmlType::Q4_1, 1) => run::<Q4_1, 1>(rows, q, out),
            (GgmlType::Q4_1, _) => run::<Q4_1, ROWS>(rows, q, out),
            (other, _) => panic!("no int8 kernel for {}", other.name()),
        }
    }
}
