//! The public matrix products: shape checks, ISA check, then the GEMV path (few rows of x)
//! or the tiled GEMM driver.

use super::dispatch::{active_isa, check, Isa};
use super::gemm::gemm;
use super::gemv;
use super::panel::BSrc;
use super::small;
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

fn check_f32(what: &str, a: &[f32], b: &[f32], c: &[f32], m: usize, k: usize, n: usize) {
    assert_eq!(a.len(), m * k, "{what}: a must hold m*k = {m}*{k}");
    assert_eq!(b.len(), k * n, "{what}: b must hold k*n = {k}*{n}");
    assert_eq!(c.len(), m * n, "{what}: c must hold m*n = {m}*{n}");
}

/// c[m, n] (+)= a[m, k] · b[k, n]  (`accumulate` adds to c instead of overwriting it).
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
    matmul_f32_nn_with(active_isa(), a, b, c, m, k, n, accumulate)
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_nn_with(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    check(isa);
    check_f32("matmul_f32_nn", a, b, c, m, k, n);
    if m <= small::SMALL_M {
        small::rows_times_b(isa, a, k, 1, b, c, m, k, n, accumulate);
        return;
    }
    gemm(
        isa,
        m,
        n,
        k,
        a,
        k,
        1,
        BSrc::F32 { b, rs: n, cs: 1 },
        c,
        accumulate,
    );
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
    matmul_f32_nt_with(active_isa(), a, b, c, m, k, n, accumulate)
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_nt_with(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    check(isa);
    check_f32("matmul_f32_nt", a, b, c, m, k, n);
    if m <= small::SMALL_M {
        small::nt(isa, a, b, c, m, k, n, accumulate);
        return;
    }
    gemm(
        isa,
        m,
        n,
        k,
        a,
        k,
        1,
        BSrc::F32 { b, rs: 1, cs: k },
        c,
        accumulate,
    );
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
    matmul_f32_tn_with(active_isa(), a, b, c, m, k, n, accumulate)
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_tn_with(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    check(isa);
    check_f32("matmul_f32_tn", a, b, c, m, k, n);
    if m <= small::SMALL_M {
        small::rows_times_b(isa, a, 1, m, b, c, m, k, n, accumulate);
        return;
    }
    gemm(
        isa,
        m,
        n,
        k,
        a,
        1,
        m,
        BSrc::F32 { b, rs: n, cs: 1 },
        c,
        accumulate,
    );
}
