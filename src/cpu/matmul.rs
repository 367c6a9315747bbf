//! The public matrix products: shape checks, ISA check, then the GEMV path (few rows of x)
//! or the tiled GEMM driver.

use super::dispatch::{active_isa, check, Isa};
use super::gemm::{gemm, gemm_lr, LowRank};
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

    /// c (+)= A·B in f64 with A(i, p) = a[i*rsa + p*csa], B(p, j) = b[p*rsb + j*csb].
    #[allow(clippy::too_many_arguments)]
    fn product_f64(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        c0: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        // (value, Σ|terms| as the scale of the rounding error)
        let mut want = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut v, mut g) = c0.map_or((0.0, 0.0), |c| {
                    let x = c[i * n + j] as f64;
                    (x, x.abs())
                });
                for p in 0..k {
                    let t = a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                    v += t;
                    g += t.abs();
                }
                want[i * n + j] = v;
                mag[i * n + j] = g;
            }
        }
        (want, mag)
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], mag: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (idx, ((&g, &w), &s)) in got.iter().zip(want).zip(mag).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (s + 1e-3),
                "{what}: element {idx}: got {g}, want {w}"
            );
        }
    }

    /// Narrow outputs (n ≤ 8: LoRA rank-8 products, the narrow microkernel on x86) match an
    /// f64 product for every n in 1..=8, row counts that are not multiples of any MR (partial
    /// row tiles, several row tasks), depths above one panel, all three A/B layouts, overwrite
    /// and accumulate, on every ISA of this host.
    #[test]
    fn narrow_outputs_match_f64_product() {
        type Prod = fn(Isa, &[f32], &[f32], &mut [f32], usize, usize, usize, bool);
        let variants: [(&str, Prod); 3] = [
            ("nn", matmul_f32_nn_with),
            ("nt", matmul_f32_nt_with),
            ("tn", matmul_f32_tn_with),
        ];
        for (m, k) in [(5, 3), (13, 64), (37, 256), (301, 300)] {
            for n in 1..=8 {
                let a = vals(m * k, m + n);
                let b = vals(k * n, 2 * n + 1);
                let c0 = vals(m * n, 3 * n + 7);
                for (name, prod) in variants {
                    // Strides of A [m, k] (nn, nt) or [k, m] (tn); B [k, n] or [n, k] (nt).
                    let sa = if name == "tn" { (1, m) } else { (k, 1) };
                    let sb = if name == "nt" { (1, k) } else { (n, 1) };
                    for accumulate in [false, true] {
                        let init = accumulate.then_some(&c0[..]);
                        let (want, mag) = product_f64(m, n, k, &a, sa, &b, sb, init);
                        for isa in available_isas() {
                            let mut c = if accumulate {
                                c0.clone()
                            } else {
                                vec![f32::NAN; m * n]
                            };
                            prod(isa, &a, &b, &mut c, m, k, n, accumulate);
                            let what = format!("{name} {isa:?} m={m} k={k} n={n} acc={accumulate}");
                            // Narrow outputs stay f32 on every path.
                            assert_close(&what, &c, &want, &mag, 1e-5);
                        }
                    }
                }
            }
        }
    }

    /// Narrow results do not depend on the thread count (which changes how rows are split
    /// into tasks): each element is reduced in the same order.
    #[test]
    fn narrow_outputs_are_independent_of_thread_count() {
        let (m, k, n) = (301, 300, 8);
        let a = vals(m * k, 11);
        let b = vals(k * n, 12);
        for isa in available_isas() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut c = vec![0f32; m * n];
                    matmul_f32_nn_with(isa, &a, &b, &mut c, m, k, n, false);
                    c.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                })
            };
            let one = run(1);
            assert!(one == run(2), "{isa:?}: 2 threads differ from 1");
            assert!(one == run(3), "{isa:?}: 3 threads differ from 1");
        }
    }

    /// f32 B with unit column stride is read in place by full micro-tiles and packed only for
    /// the partial tile at the right edge: widths that are multiples of every NR and widths
    /// that are not, a row stride wider than n (a column slice of a wider matrix), depths
    /// above one panel (chunk offsets p0 > 0), few rows (m = 8: `dA += duᵀ·x`), overwrite and
    /// accumulate, through `gemm` directly and through the low-rank term of `gemm_lr`.
    #[test]
    fn f32_b_with_unit_column_stride_matches_f64_product() {
        for (m, k) in [(8, 300), (37, 64)] {
            for n in [16, 32, 64, 128, 9, 40, 72, 100, 129, 300] {
                for extra in [0, 5] {
                    let rs = n + extra;
                    let a = vals(m * k, n + extra);
                    let b = vals(k * rs, n + 3);
                    let c0 = vals(m * n, n + 4);
                    for accumulate in [false, true] {
                        let init = accumulate.then_some(&c0[..]);
                        // A as in dA += duᵀ·x: A(i, p) = a[p*m + i].
                        let (want, mag) = product_f64(m, n, k, &a, (1, m), &b, (rs, 1), init);
                        for isa in available_isas() {
                            let tol = if isa.reduced_precision() { 2e-2 } else { 1e-5 };
                            let mut c = if accumulate {
                                c0.clone()
                            } else {
                                vec![f32::NAN; m * n]
                            };
                            let src = BSrc::F32 { b: &b, rs, cs: 1 };
                            gemm(isa, m, n, k, &a, 1, m, src, &mut c, accumulate);
                            let what =
                                format!("{isa:?} m={m} k={k} n={n} rs={rs} acc={accumulate}");
                            assert_close(&what, &c, &want, &mag, tol);
                        }
                    }
                }
            }
        }
        // The low-rank term V [r, n] with rs = n, cs = 1 (LoRA A in the backward), with a main
        // product whose B is packed (strided, cs ≠ 1).
        let (m, k, r) = (29, 40, 8);
        for n in [64, 72] {
            let a = vals(m * k, 21);
            let b = vals(n * k, 22); // B(p, j) = b[j*k + p]
            let u = vals(m * r, 23);
            let v = vals(r * n, 24);
            let (w1, g1) = product_f64(m, n, k, &a, (k, 1), &b, (1, k), None);
            let (w2, g2) = product_f64(m, n, r, &u, (r, 1), &v, (n, 1), None);
            let want: Vec<f64> = w1.iter().zip(&w2).map(|(x, y)| x + y).collect();
            let mag: Vec<f64> = g1.iter().zip(&g2).map(|(x, y)| x + y).collect();
            for isa in available_isas() {
                let tol = if isa.reduced_precision() { 2e-2 } else { 1e-5 };
                let mut c = vec![f32::NAN; m * n];
                let lr = LowRank {
                    u: &u,
                    r,
                    v: &v,
                    rs: n,
                    cs: 1,
                };
                let src = BSrc::F32 {
                    b: &b,
                    rs: 1,
                    cs: k,
                };
                gemm_lr(isa, m, n, k, &a, k, 1, src, &mut c, false, Some(lr));
                assert_close(&format!("low rank {isa:?} n={n}"), &c, &want, &mag, tol);
            }
        }
    }
}
