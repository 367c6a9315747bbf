//! The public products with a frozen weight W (any ggml type), alone or with a LoRA term
//! fused in: shape checks, ISA check, then the GEMV path (few rows of x) or the tiled GEMM
//! driver. The products of two f32 matrices are in `matmul_f32`.

use super::dispatch::{active_isa, check, Isa};
use super::gemm::{gemm, gemm_lr};
use super::gemv;
use super::matmul_f32::matmul_f32_nt;
use super::panel::BSrc;
use super::tile::LowRank;
use crate::model::weights::QMatrix;
use std::ops::Range;

/// y[n, w.rows] = x[n, w.cols] · Wᵀ, W frozen in its ggml type.
pub fn matmul_wt(x: &[f32], n: usize, w: &QMatrix, y: &mut [f32]) {
    matmul_wt_range_with(active_isa(), x, n, w, 0..w.rows, y)
}

pub fn matmul_wt_with(isa: Isa, x: &[f32], n: usize, w: &QMatrix, y: &mut [f32]) {
    matmul_wt_range_with(isa, x, n, w, 0..w.rows, y)
}

/// y[n, rows.len()] = x[n, w.cols] · W[rows, :]ᵀ — a slice of the output features, e.g. one
/// vocabulary chunk of the output projection.
pub fn matmul_wt_range(x: &[f32], n: usize, w: &QMatrix, rows: Range<usize>, y: &mut [f32]) {
    matmul_wt_range_with(active_isa(), x, n, w, rows, y)
}

pub fn matmul_wt_range_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    w: &QMatrix,
    rows: Range<usize>,
    y: &mut [f32],
) {
    check(isa);
    assert!(
        rows.start <= rows.end && rows.end <= w.rows,
        "matmul_wt '{}': row range {rows:?} outside 0..{}",
        w.name,
        w.rows
    );
    assert_eq!(
        x.len(),
        n * w.cols,
        "matmul_wt '{}': x must be [{n}, {}]",
        w.name,
        w.cols
    );
    let nout = rows.len();
    assert_eq!(
        y.len(),
        n * nout,
        "matmul_wt '{}': y must be [{n}, {nout}]",
        w.name
    );
    if n <= gemv::MAX_ROWS {
        gemv::gemv_wt(isa, x, n, w, rows, y);
        return;
    }
    let src = BSrc::Wt {
        w,
        row0: rows.start,
    };
    gemm(isa, n, nout, w.cols, x, w.cols, 1, src, y, false);
}

/// dx[n, w.cols] = dy[n, w.rows] · W — the activation gradient through a frozen weight.
pub fn matmul_w(dy: &[f32], n: usize, w: &QMatrix, dx: &mut [f32]) {
    matmul_w_with(active_isa(), dy, n, w, dx)
}

pub fn matmul_w_with(isa: Isa, dy: &[f32], n: usize, w: &QMatrix, dx: &mut [f32]) {
    matmul_w_into_with(isa, dy, n, w, dx, false)
}

/// dx[n, w.cols] (+)= dy[n, w.rows] · W: `accumulate` adds into dx (several projections
/// reading one input sum their gradients without a temporary).
pub fn matmul_w_into(dy: &[f32], n: usize, w: &QMatrix, dx: &mut [f32], accumulate: bool) {
    matmul_w_into_with(active_isa(), dy, n, w, dx, accumulate)
}

pub fn matmul_w_into_with(
    isa: Isa,
    dy: &[f32],
    n: usize,
    w: &QMatrix,
    dx: &mut [f32],
    accumulate: bool,
) {
    check(isa);
    assert_eq!(
        dy.len(),
        n * w.rows,
        "matmul_w '{}': dy must be [{n}, {}]",
        w.name,
        w.rows
    );
    assert_eq!(
        dx.len(),
        n * w.cols,
        "matmul_w '{}': dx must be [{n}, {}]",
        w.name,
        w.cols
    );
    gemm(
        isa,
        n,
        w.cols,
        w.rows,
        dy,
        w.rows,
        1,
        BSrc::W { w },
        dx,
        accumulate,
    );
}

/// y[n, w.rows] = x · Wᵀ + us · Bᵀ: a frozen projection plus its LoRA term, with us [n, r]
/// (already scaled) and b = LoRA B [w.rows, r]. The low-rank product is added to each output
/// tile inside the GEMM, while the tile is in cache.
pub fn matmul_wt_lora(x: &[f32], n: usize, w: &QMatrix, y: &mut [f32], us: &[f32], b: &[f32]) {
    let isa = active_isa();
    check(isa);
    assert_eq!(
        x.len(),
        n * w.cols,
        "matmul_wt_lora '{}': x must be [{n}, {}]",
        w.name,
        w.cols
    );
    assert_eq!(
        y.len(),
        n * w.rows,
        "matmul_wt_lora '{}': y must be [{n}, {}]",
        w.name,
        w.rows
    );
    let r = us.len().checked_div(n).unwrap_or(0);
    assert_eq!(us.len(), n * r, "matmul_wt_lora: us must be [n, r]");
    assert_eq!(
        b.len(),
        w.rows * r,
        "matmul_wt_lora: B must be [{}, {r}]",
        w.rows
    );
    if n <= gemv::MAX_ROWS {
        gemv::gemv_wt(isa, x, n, w, 0..w.rows, y);
        matmul_f32_nt(us, b, y, n, r, w.rows, true);
        return;
    }
    let lr = LowRank {
        u: us,
        r,
        v: b,
        rs: 1,
        cs: r,
    };
    let src = BSrc::Wt { w, row0: 0 };
    gemm_lr(
        isa,
        n,
        w.rows,
        w.cols,
        x,
        w.cols,
        1,
        src,
        y,
        false,
        Some(lr),
    );
}

/// dx[n, w.cols] (+)= dy · W + du · A: the input gradient of a LoRA-adapted projection, with
/// du [n, r] (already scaled) and a = LoRA A [r, w.cols], the low-rank term fused as above.
pub fn matmul_w_lora(
    dy: &[f32],
    n: usize,
    w: &QMatrix,
    dx: &mut [f32],
    accumulate: bool,
    du: &[f32],
    a: &[f32],
) {
    let isa = active_isa();
    check(isa);
    assert_eq!(
        dy.len(),
        n * w.rows,
        "matmul_w_lora '{}': dy must be [{n}, {}]",
        w.name,
        w.rows
    );
    assert_eq!(
        dx.len(),
        n * w.cols,
        "matmul_w_lora '{}': dx must be [{n}, {}]",
        w.name,
        w.cols
    );
    let r = du.len().checked_div(n).unwrap_or(0);
    assert_eq!(du.len(), n * r, "matmul_w_lora: du must be [n, r]");
    assert_eq!(
        a.len(),
        r * w.cols,
        "matmul_w_lora: A must be [{r}, {}]",
        w.cols
    );
    let lr = LowRank {
        u: du,
        r,
        v: a,
        rs: w.cols,
        cs: 1,
    };
    let src = BSrc::W { w };
    gemm_lr(
        isa,
        n,
        w.cols,
        w.rows,
        dy,
        w.rows,
        1,
        src,
        dx,
        accumulate,
        Some(lr),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::available_isas;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// The fused low-rank term equals the separate product, on every path, with edge tiles
    /// (rows and columns not multiples of the micro-tile), overwrite and accumulate, and a
    /// rank above one panel depth (unfused fallback).
    #[test]
    fn low_rank_term_matches_the_separate_product() {
        let (m, k, n) = (37, 64, 72);
        let w = QMatrix::from_f32("w", n, k, &vals(n * k, 1));
        let wf = vals(n * k, 1);
        let x = vals(m * k, 2);
        for r in [1, 8, 300] {
            let us = vals(m * r, 3);
            let b = vals(n * r, 4);
            let a = vals(r * k, 5);
            // References in f64: y = x·Wᵀ + us·Bᵀ, dx = 1 + dy·W + du·A (du = us).
            let dy = vals(m * n, 6);
            let mut want_y = vec![0f64; m * n];
            let mut want_dx = vec![1f64; m * k];
            for i in 0..m {
                for j in 0..n {
                    let base: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * wf[j * k + p] as f64)
                        .sum();
                    let low: f64 = (0..r)
                        .map(|q| us[i * r + q] as f64 * b[j * r + q] as f64)
                        .sum();
                    want_y[i * n + j] = base + low;
                }
                for p in 0..k {
                    let base: f64 = (0..n)
                        .map(|j| dy[i * n + j] as f64 * wf[j * k + p] as f64)
                        .sum();
                    let low: f64 = (0..r)
                        .map(|q| us[i * r + q] as f64 * a[q * k + p] as f64)
                        .sum();
                    want_dx[i * k + p] += base + low;
                }
            }
            for isa in available_isas() {
                // bf16/f16 paths round A·B operands: 1e-2 relative to the row scale; f32 1e-5.
                let tol = if isa.reduced_precision() { 2e-2 } else { 1e-5 };
                let mut y = vec![0f32; m * n];
                let lr = LowRank {
                    u: &us,
                    r,
                    v: &b,
                    rs: 1,
                    cs: r,
                };
                let src = BSrc::Wt { w: &w, row0: 0 };
                gemm_lr(isa, m, n, k, &x, k, 1, src, &mut y, false, Some(lr));
                let scale_y = (k + r) as f64;
                for (g, want) in y.iter().zip(&want_y) {
                    assert!(
                        (*g as f64 - want).abs() <= tol * scale_y,
                        "{isa:?} r={r}: y {g} vs {want}"
                    );
                }
                let mut dx = vec![1f32; m * k];
                let lr = LowRank {
                    u: &us,
                    r,
                    v: &a,
                    rs: k,
                    cs: 1,
                };
                gemm_lr(
                    isa,
                    m,
                    k,
                    n,
                    &dy,
                    n,
                    1,
                    BSrc::W { w: &w },
                    &mut dx,
                    true,
                    Some(lr),
                );
                let scale_dx = (n + r) as f64;
                for (g, want) in dx.iter().zip(&want_dx) {
                    assert!(
                        (*g as f64 - want).abs() <= tol * scale_dx,
                        "{isa:?} r={r}: dx {g} vs {want}"
                    );
                }
            }
        }
    }
}
