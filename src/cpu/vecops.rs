//! Element-wise and reduction kernels on f32 vectors, dispatched by ISA. All run on the
//! calling thread, in a fixed order (deterministic).

#[cfg(target_arch = "aarch64")]
use super::arm::neon;
use super::dispatch::{active_isa, check, Isa};
use super::scalar;
#[cfg(target_arch = "x86_64")]
use super::x86::{avx2, avx512};
use crate::quant::GgmlType;

/// Σ a[i]·b[i]. Panics if the lengths differ.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(active_isa(), a, b)
}

pub fn dot_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    check(isa);
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    match isa.f32_isa() {
        Isa::Scalar => scalar::dot(a, b),
        // SAFETY: check(isa) verified the CPU has the features these functions enable.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot(a, b) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dot(a, b) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::dot(a, b) },
        #[allow(unreachable_patterns)]
        _ => scalar::dot(a, b),
    }
}

/// y += alpha·x. Panics if the lengths differ.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_with(active_isa(), alpha, x, y)
}

pub fn axpy_with(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    check(isa);
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::axpy(alpha, x, y) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::axpy(alpha, x, y) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::axpy(alpha, x, y) },
        _ => scalar::axpy(alpha, x, y),
    }
}

/// x *= alpha.
pub fn scale(alpha: f32, x: &mut [f32]) {
    scale_with(active_isa(), alpha, x)
}

pub fn scale_with(isa: Isa, alpha: f32, x: &mut [f32]) {
    check(isa);
    match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::scale(alpha, x) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::scale(alpha, x) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::scale(alpha, x) },
        _ => scalar::scale(alpha, x),
    }
}

/// RMSNorm of each row: x, out [n, d]; w [d]; out = x / sqrt(mean(x²) + eps) · w.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut [f32]) {
    rmsnorm_with(active_isa(), x, w, eps, d, out)
}

pub fn rmsnorm_with(isa: Isa, x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut [f32]) {
    check(isa);
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rmsnorm: x length {} not a multiple of d={d}",
        x.len()
    );
    assert_eq!(w.len(), d, "rmsnorm: weight length");
    assert_eq!(out.len(), x.len(), "rmsnorm: out length");
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss = dot_with(isa, xr, xr);
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        match isa.f32_isa() {
            // SAFETY: check(isa) verified the CPU features.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::mul3(xr, inv, w, or) },
            // SAFETY: as for Avx2 just above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::mul3(xr, inv, w, or) },
            // SAFETY: as for Avx2 above.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::mul3(xr, inv, w, or) },
            _ => {
                for ((o, &v), &wi) in or.iter_mut().zip(xr).zip(w) {
                    *o = v * inv * wi;
                }
            }
        }
    }
}

/// out = silu(gate)·up, silu(g) = g·sigmoid(g). All three the same length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_with(active_isa(), gate, up, out)
}

pub fn silu_mul_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    check(isa);
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "silu_mul: length mismatch"
    );
    match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::silu_mul(gate, up, out) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::silu_mul(gate, up, out) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::silu_mul(gate, up, out) },
        _ => scalar::silu_mul(gate, up, out),
    }
}

/// The largest element (−∞ for an empty slice; NaN elements are skipped by the scalar path
/// and may or may not be by SIMD paths — check for NaN separately if it matters).
pub fn max(x: &[f32]) -> f32 {
    max_with(active_isa(), x)
}

pub fn max_with(isa: Isa, x: &[f32]) -> f32 {
    check(isa);
    max_unchecked(isa, x)
}

/// x ← exp(x − shift) elementwise; returns Σ of the new x (f32, fixed order). With `shift` the
/// running maximum this is the inner step of an online softmax / logsumexp over chunks.
/// Entries of −∞ become exactly 0.
pub fn exp_sub_inplace(x: &mut [f32], shift: f32) -> f32 {
    exp_sub_inplace_with(active_isa(), x, shift)
}

pub fn exp_sub_inplace_with(isa: Isa, x: &mut [f32], shift: f32) -> f32 {
    check(isa);
    exp_sub_unchecked(isa, x, shift)
}

fn exp_sub_unchecked(isa: Isa, x: &mut [f32], m: f32) -> f32 {
    match isa.f32_isa() {
        // SAFETY: callers ran check(isa).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::exp_sub_inplace(x, m) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::exp_sub_inplace(x, m) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::exp_sub_inplace(x, m) },
        _ => scalar::exp_sub_inplace(x, m),
    }
}

fn max_unchecked(isa: Isa, x: &[f32]) -> f32 {
    match isa.f32_isa() {
        // SAFETY: callers ran check(isa).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::max(x) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::max(x) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::max(x) },
        _ => scalar::max(x),
    }
}

/// ln Σ exp(x), computed stably around the maximum. −∞ for an empty or all −∞ input.
pub fn logsumexp(x: &[f32]) -> f32 {
    logsumexp_with(active_isa(), x)
}

pub fn logsumexp_with(isa: Isa, x: &[f32]) -> f32 {
    check(isa);
    let m = max_unchecked(isa, x);
    if m == f32::NEG_INFINITY || m.is_nan() {
        return m;
    }
    let s = match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::sum_exp(x, m) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::sum_exp(x, m) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::sum_exp(x, m) },
        _ => scalar::sum_exp(x, m),
    };
    m + s.ln()
}

/// x = softmax(x), stable (shifted by the maximum). Entries of −∞ become 0.
pub fn softmax_inplace(x: &mut [f32]) {
    softmax_inplace_with(active_isa(), x)
}

pub fn softmax_inplace_with(isa: Isa, x: &mut [f32]) {
    check(isa);
    if x.is_empty() {
        return;
    }
    let m = max_unchecked(isa, x);
    let s = exp_sub_unchecked(isa, x, m);
    scale_with(isa, 1.0 / s, x);
}

/// Dequantize `src` (whole blocks of `ty`) into `dst` with the given ISA's code. Same result
/// as `crate::quant::dequantize_row` (bit-exact: every value is one f16→f32 conversion and at
/// most one multiply-add, which SIMD does with the same rounding).
pub fn dequantize_row_with(isa: Isa, ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    check(isa);
    let want = ty.row_bytes(dst.len());
    assert!(
        want == Some(src.len()),
        "dequantize_row_with: {} row of {} values needs {want:?} bytes, got {}",
        ty.name(),
        dst.len(),
        src.len()
    );
    match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features; lengths were checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dequantize(ty, src, dst) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dequantize(ty, src, dst) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::dequantize(ty, src, dst) },
        _ => crate::quant::dequantize_row(ty, src, dst),
    }
}

/// Whether `ty` has the SIMD decoders of 32-value blocks that the fused paths build on
/// (`x86::gemv_avx2::decode`, `x86::pack512::decode`, the NEON GEMV): the float types, Q8_0,
/// Q4_0 and Q4_1. The others (Q5_0, Q5_1 and the 256-value K-quants) go through
/// [`dequant_unchecked`] into f32 rows and panels instead (AVX2/AVX-512 row decoders for Q4_K
/// and Q6_K in `x86/kquant.rs`, NEON row decoders for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K in
/// `arm/q5_neon.rs` and `arm/kquant_neon.rs`, the scalar decoder for the rest); the fused entry
/// points panic on them, so every caller asks this first.
pub(crate) fn has_block32_simd(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
    )
}

/// [`dequantize_row_with`] without the feature and length checks, for the GEMM drivers.
/// The caller must have run `check(isa)` and pass whole blocks (`src` = `dst.len()` values).
pub(crate) fn dequant_unchecked(isa: Isa, ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match isa.f32_isa() {
        // SAFETY: the caller ran check(isa); the length contract is the caller's too, and the
        // SIMD code re-derives its loop bounds from both slice lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dequantize(ty, src, dst) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dequantize(ty, src, dst) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::dequantize(ty, src, dst) },
        _ => crate::quant::dequantize_row(ty, src, dst),
    }
}

/// [`dot_with`] without the feature check (caller ran `check(isa)`).
pub(crate) fn dot_unchecked(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa.f32_isa() {
        // SAFETY: the caller ran check(isa).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot(a, b) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dot(a, b) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// [`axpy_with`] without the feature check (caller ran `check(isa)`).
pub(crate) fn axpy_unchecked(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) {
    match isa.f32_isa() {
        // SAFETY: the caller ran check(isa).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::axpy(alpha, x, y) },
        // SAFETY: as for Avx2 just above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::axpy(alpha, x, y) },
        // SAFETY: as for Avx2 above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::axpy(alpha, x, y) },
        _ => scalar::axpy(alpha, x, y),
    }
}
