//! The public products of two f32 matrices (activations, LoRA factors, gradients), in the
//! three layouts the model needs (nn, nt, tn): shape checks, ISA check, then the few-row path
//! (`small`) or the tiled GEMM driver with an f32 B panel.

use super::dispatch::{active_isa, check, Isa};
use super::gemm::gemm;
use super::panel::BSrc;
use super::small;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::available_isas;
    use crate::cpu::gemm::gemm_lr;
    use crate::cpu::tile::LowRank;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
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
