//! Reference kernels: the plainest loops, accumulating in f64. Slow on purpose; every fast
//! path is tested against these. Quantized weights are dequantized with the ggml-exact scalar
//! `crate::quant::dequantize_row`, so the references share no code with the SIMD paths.

use crate::model::weights::QMatrix;

/// W dequantized to f32, [w.rows, w.cols].
pub fn dequantize(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0.0f32; w.rows * w.cols];
    for (r, row) in out.chunks_exact_mut(w.cols.max(1)).enumerate().take(w.rows) {
        crate::quant::dequantize_row(w.dtype, w.row(r), row);
    }
    out
}

/// y[n, w.rows] = x[n, w.cols] · Wᵀ
pub fn matmul_wt(x: &[f32], n: usize, w: &QMatrix, y: &mut [f32]) {
    let wf = dequantize(w);
    matmul_f32_nt(x, &wf, y, n, w.cols, w.rows, false);
}

/// dx[n, w.cols] = dy[n, w.rows] · W
pub fn matmul_w(dy: &[f32], n: usize, w: &QMatrix, dx: &mut [f32]) {
    let wf = dequantize(w);
    matmul_f32_nn(dy, &wf, dx, n, w.rows, w.cols, false);
}

/// c[m, n] (+)= a[m, k] · b[k, n]
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_nn(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    gemm_strided(a, (k, 1), b, (n, 1), c, m, k, n, accumulate);
}

/// c[m, n] (+)= a[m, k] · b[n, k]ᵀ
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_nt(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    gemm_strided(a, (k, 1), b, (1, k), c, m, k, n, accumulate);
}

/// c[m, n] (+)= a[k, m]ᵀ · b[k, n]
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_tn(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    gemm_strided(a, (1, m), b, (n, 1), c, m, k, n, accumulate);
}

/// c[i, j] (+)= Σ_p A(i, p)·B(p, j) with A(i, p) = a[i*sa.0 + p*sa.1], B(p, j) = b[p*sb.0 + j*sb.1].
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * sa.0 + p * sa.1] as f64 * b[p * sb.0 + j * sb.1] as f64;
            }
            let old = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (old + s) as f32;
        }
    }
}

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * w, for each row r of `d` values.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, d: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for ((o, &v), &wi) in or.iter_mut().zip(xr).zip(w) {
            *o = (v as f64 * inv * wi as f64) as f32;
        }
    }
}

/// out = silu(gate) * up, silu(g) = g / (1 + e^-g).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let g = g as f64;
        *o = (g / (1.0 + (-g).exp()) * u as f64) as f32;
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>() as f32
}

/// y += alpha * x
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = (*yi as f64 + alpha as f64 * xi as f64) as f32;
    }
}

/// x *= alpha
pub fn scale(alpha: f32, x: &mut [f32]) {
    for v in x {
        *v = (*v as f64 * alpha as f64) as f32;
    }
}

pub fn logsumexp(x: &[f32]) -> f32 {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    if m == f64::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    (m + s.ln()) as f32
}

pub fn softmax_inplace(x: &mut [f32]) {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    for v in x {
        *v = ((*v as f64 - m).exp() / s) as f32;
    }
}
