//! f32 products with only a few output rows (m ≤ SMALL_M: one query row in generation): no
//! panel packing, which would cost more than the product. Each output element is one dot
//! product (b transposed), or each output row one axpy sweep over b's rows. Column chunks run
//! in parallel when large; every element is reduced in a fixed order either way.

use super::dispatch::Isa;
use super::par;
use super::vecops::{axpy_unchecked, dot_unchecked};

/// Largest m that takes these paths.
pub(crate) const SMALL_M: usize = 4;
/// Output columns per parallel piece.
const COLS: usize = 256;

/// c[i, j] (+)= Σ_p a[i*k + p]·b[j*k + p] for i < m, j < n (a [m, k], b [n, k] row-major).
/// Shapes were checked by the caller, which also ran `check(isa)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn nt(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for (i, ci) in c.chunks_exact_mut(n.max(1)).take(m).enumerate() {
        let ai = &a[i * k..(i + 1) * k];
        par::for_each_chunk(ci, COLS, n * k, |j0, cj| {
            for (jj, v) in cj.iter_mut().enumerate() {
                let j = j0 + jj;
                let d = dot_unchecked(isa, ai, &b[j * k..(j + 1) * k]);
                *v = if accumulate { *v + d } else { d };
            }
        });
    }
}

/// c[i, :] (+)= Σ_p A(i, p)·b[p, :] for i < m, with A(i, p) = a[i*rsa + p*csa] and b [k, n]
/// row-major: p ascending, one axpy per p. Shapes were checked by the caller, which also ran
/// `check(isa)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_times_b(
    isa: Isa,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    for (i, ci) in c.chunks_exact_mut(n.max(1)).take(m).enumerate() {
        par::for_each_chunk(ci, COLS, n * k, |j0, cj| {
            if !accumulate {
                cj.fill(0.0);
            }
            for p in 0..k {
                let bp = &b[p * n + j0..p * n + j0 + cj.len()];
                axpy_unchecked(isa, a[i * rsa + p * csa], bp, cj);
            }
        });
    }
}
