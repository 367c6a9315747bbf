//! Matrix products: frozen quantized weights times f32 activations, and plain f32 GEMMs.
//!
//! One driver serves all of them (Goto-style, without packing A): the output C[m, n] is cut
//! into tasks of MC rows × NB columns, run in parallel with rayon. A task walks k in chunks
//! of KC; for each chunk it fills an f32 panel B[kc, NB] in a thread-local buffer — for a
//! quantized weight this is where its blocks are dequantized, one tile at a time, never the
//! whole matrix — then a register-blocked MR×NR microkernel (per ISA) accumulates into C,
//! broadcasting A straight from the caller's buffer with arbitrary strides (which is how the
//! transposed variants come for free).
//!
//! Determinism: every C element belongs to exactly one task and is reduced over k in a fixed
//! order (chunk by chunk, p ascending), so results never depend on scheduling or thread count.

use super::dispatch::{active_isa, check, Isa};
use super::gemv;
use super::par;
use super::scalar;
use super::vecops::dequant_unchecked;
#[cfg(target_arch = "x86_64")]
use super::x86::{avx2, avx512};
use crate::model::weights::QMatrix;
use std::cell::RefCell;
use std::ops::Range;

/// See [`scalar::kernel`] for the contract every ISA's microkernel follows.
type KernelFn =
    unsafe fn(usize, *const f32, usize, usize, *const f32, usize, *mut f32, usize, usize, bool);

/// One ISA's microkernel and blocking parameters.
#[derive(Clone, Copy)]
struct Kern {
    mr: usize,
    nr: usize,
    run: KernelFn,
}

/// At most this many rows of C per task (the B panel is dequantized once per task and k chunk,
/// so tall tasks amortize it; rows are split evenly into tasks of a multiple of MR).
const MC_MAX: usize = 512;
/// Columns of C per task, at most: a multiple of every NR and of the 32-value quant block.
/// Halved (down to 32) until there are enough tasks to keep every thread busy.
const NB_MAX: usize = 128;
/// Depth of one B panel: a multiple of 32 so quant blocks never straddle chunks.
const KC: usize = 256;

/// The microkernel for `isa` and an output `n` columns wide. Narrow outputs (LoRA ranks 8–16)
/// on AVX-512 use the 16-wide AVX2 tile, which wastes less of each register on padding.
fn kern_for(isa: Isa, n: usize) -> Kern {
    #[cfg(target_arch = "x86_64")]
    let isa = if isa == Isa::Avx512 && n <= avx2::NR {
        Isa::Avx2
    } else {
        isa
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = n;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kern {
            mr: avx2::MR,
            nr: avx2::NR,
            run: avx2::kernel,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kern {
            mr: avx512::MR,
            nr: avx512::NR,
            run: avx512::kernel,
        },
        #[allow(unreachable_patterns)]
        _ => Kern {
            mr: scalar::MR,
            nr: scalar::NR,
            run: scalar::kernel,
        },
    }
}

/// Where B(p, j) (p < k, j < n) comes from.
#[derive(Clone, Copy)]
enum BSrc<'a> {
    /// B(p, j) = b[p*rs + j*cs]
    F32 { b: &'a [f32], rs: usize, cs: usize },
    /// B(p, j) = W[row0 + j, p]: Wᵀ, for y = x·Wᵀ.
    Wt { w: &'a QMatrix, row0: usize },
    /// B(p, j) = W[p, j], for dx = dy·W.
    W { w: &'a QMatrix },
}

/// A raw C pointer that tasks share; each task writes a disjoint tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks only write disjoint C tiles (see `gemm`), so sharing the pointer is sound.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

thread_local! {
    /// Per-thread scratch reused across calls: B panel, one dequantized row, a C edge tile.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Dequantize W[r, c0..c0+len] (block-aligned) into `out`.
fn dequant_segment(isa: Isa, w: &QMatrix, r: usize, c0: usize, out: &mut [f32]) {
    let bs = w.dtype.block_size();
    let ts = w.dtype.type_size();
    debug_assert!(c0 % bs == 0 && out.len() % bs == 0);
    let row = w.row(r);
    let bytes = &row[c0 / bs * ts..(c0 + out.len()) / bs * ts];
    dequant_unchecked(isa, w.dtype, bytes, out);
}

/// dst[p*ldb + r] = src[r*lds + p] for r < 8, p < kc with the ISA's SIMD transpose; false if
/// the ISA has none (the caller then does it element by element).
fn transpose8(isa: Isa, src: &[f32], lds: usize, kc: usize, dst: &mut [f32], ldb: usize) -> bool {
    assert!(kc == 0 || (src.len() >= 7 * lds + kc && dst.len() >= (kc - 1) * ldb + 8));
    match isa {
        // SAFETY: the sizes were asserted above; the caller ran check(isa), and both x86
        // ISAs include AVX2.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::pack::transpose8(src.as_ptr(), lds, kc, dst.as_mut_ptr(), ldb);
            true
        },
        _ => false,
    }
}

/// dst[p*ldb + r] = W[r0 + r, p0 + p] for r < 8, p < kc (multiples of 32), decoded straight
/// into the transposed panel by the ISA's code; false if the ISA has no such code.
fn pack_wt8(
    isa: Isa,
    w: &QMatrix,
    r0: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
    ldb: usize,
) -> bool {
    assert!(kc == 0 || dst.len() >= (kc - 1) * ldb + 8);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            let rows: [&[u8]; 8] = std::array::from_fn(|r| w.row(r0 + r));
            // SAFETY: dst's size was asserted above; pack_wt8 checks the rows hold p0 + kc
            // values and that p0, kc are multiples of 32; the caller ran check(isa), and both
            // x86 ISAs include AVX2.
            unsafe { super::x86::pack::pack_wt8(w.dtype, &rows, p0, kc, dst.as_mut_ptr(), ldb) };
            true
        }
        _ => {
            let _ = (w, r0, p0, kc, ldb);
            false
        }
    }
}

/// Fill panel[p*ldb + j] = B(p0 + p, j0 + j) for p < kc, j < nb; zero for nb ≤ j < ldb.
#[allow(clippy::too_many_arguments)]
fn pack_b(
    isa: Isa,
    src: BSrc,
    p0: usize,
    kc: usize,
    j0: usize,
    nb: usize,
    panel: &mut [f32],
    ldb: usize,
    tmp: &mut [f32],
) {
    match src {
        BSrc::F32 { b, rs: 1, cs } if cs != 1 => {
            // B = bᵀ with b row-major [n, k]: columns of B are contiguous; transpose 8 at once.
            for jg in (0..nb).step_by(8) {
                let g = 8.min(nb - jg);
                let base = (j0 + jg) * cs + p0;
                if g == 8 && transpose8(isa, &b[base..], cs, kc, &mut panel[jg..], ldb) {
                    continue;
                }
                for r in 0..g {
                    for p in 0..kc {
                        panel[p * ldb + jg + r] = b[base + r * cs + p];
                    }
                }
            }
            for prow in panel.chunks_exact_mut(ldb).take(kc) {
                prow[nb..].fill(0.0);
            }
        }
        BSrc::F32 { b, rs, cs } => {
            for (p, prow) in panel.chunks_exact_mut(ldb).take(kc).enumerate() {
                let base = (p0 + p) * rs + j0 * cs;
                if cs == 1 {
                    prow[..nb].copy_from_slice(&b[base..base + nb]);
                } else {
                    for (j, v) in prow[..nb].iter_mut().enumerate() {
                        *v = b[base + j * cs];
                    }
                }
                prow[nb..].fill(0.0);
            }
        }
        BSrc::Wt { w, row0 } => {
            // Dequantize 8 W rows (contiguous in p), then transpose them into the panel.
            let direct = p0 % 32 == 0 && kc % 32 == 0;
            for jg in (0..nb).step_by(8) {
                let g = 8.min(nb - jg);
                if g == 8
                    && direct
                    && pack_wt8(isa, w, row0 + j0 + jg, p0, kc, &mut panel[jg..], ldb)
                {
                    continue;
                }
                for r in 0..g {
                    dequant_segment(
                        isa,
                        w,
                        row0 + j0 + jg + r,
                        p0,
                        &mut tmp[r * kc..(r + 1) * kc],
                    );
                }
                if g == 8 && transpose8(isa, tmp, kc, kc, &mut panel[jg..], ldb) {
                    continue;
                }
                for r in 0..g {
                    for (p, &v) in tmp[r * kc..(r + 1) * kc].iter().enumerate() {
                        panel[p * ldb + jg + r] = v;
                    }
                }
            }
            for prow in panel.chunks_exact_mut(ldb).take(kc) {
                prow[nb..].fill(0.0);
            }
        }
        BSrc::W { w } => {
            for (p, prow) in panel.chunks_exact_mut(ldb).take(kc).enumerate() {
                dequant_segment(isa, w, p0 + p, j0, &mut prow[..nb]);
                prow[nb..].fill(0.0);
            }
        }
    }
}

/// C[m, n] (+)= A·B with A(i, p) = a[i*rsa + p*csa], B from `src`, C row-major (ldc = n).
/// The caller has checked that every A(i, p) index lies inside `a` and `c.len() == m*n`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    src: BSrc,
    c: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "gemm: output length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: A too short");
    let kern = kern_for(isa, n);
    let n_ib = m.div_ceil(MC_MAX);
    let mc = m.div_ceil(n_ib).div_ceil(kern.mr) * kern.mr;
    let n_ib = m.div_ceil(mc);
    let threads = rayon::current_num_threads();
    let mut nb_task = NB_MAX;
    while nb_task > 32 && n_ib * n.div_ceil(nb_task) < 4 * threads {
        nb_task /= 2;
    }
    let n_jb = n.div_ceil(nb_task);
    let cptr = CPtr(c.as_mut_ptr());
    let ldc = n;

    let task = |t: usize| {
        let (jb, ib) = (t / n_ib, t % n_ib);
        let (i0, j0) = (ib * mc, jb * nb_task);
        let mct = mc.min(m - i0);
        let nbt = nb_task.min(n - j0);
        let ldb = nbt.div_ceil(kern.nr) * kern.nr;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = KC * ldb + 8 * KC + kern.mr * kern.nr;
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let (panel, rest) = s.split_at_mut(KC * ldb);
            let (tmp, ctile) = rest.split_at_mut(8 * KC);
            let ctile = &mut ctile[..kern.mr * kern.nr];
            let cp = cptr;
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                pack_b(isa, src, p0, kc, j0, nbt, panel, ldb, tmp);
                let overwrite = !accumulate && p0 == 0;
                for jr in (0..nbt).step_by(kern.nr) {
                    let ncols = kern.nr.min(nbt - jr);
                    for ir in (0..mct).step_by(kern.mr) {
                        let rows = kern.mr.min(mct - ir);
                        let i = i0 + ir;
                        let j = j0 + jr;
                        // SAFETY: A(i.., p0..) stays inside `a` (asserted above); the panel
                        // holds kc rows of ldb ≥ jr + NR values; C(i..i+rows, j..j+ncols)
                        // lies inside c (i+rows ≤ m, j+ncols ≤ n) and belongs to this task
                        // only; the kernel's features were checked by the public caller.
                        unsafe {
                            let ap = a.as_ptr().add(i * rsa + p0 * csa);
                            let bp = panel.as_ptr().add(jr);
                            let cij = cp.0.add(i * ldc + j);
                            if ncols == kern.nr {
                                (kern.run)(kc, ap, rsa, csa, bp, ldb, cij, ldc, rows, overwrite);
                            } else {
                                // Edge tile: compute NR columns into ctile, keep ncols.
                                if !overwrite {
                                    for r in 0..rows {
                                        for q in 0..ncols {
                                            ctile[r * kern.nr + q] = *cij.add(r * ldc + q);
                                        }
                                    }
                                }
                                let tp = ctile.as_mut_ptr();
                                (kern.run)(kc, ap, rsa, csa, bp, ldb, tp, kern.nr, rows, overwrite);
                                for r in 0..rows {
                                    for q in 0..ncols {
                                        *cij.add(r * ldc + q) = ctile[r * kern.nr + q];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    };

    par::for_each_task(n_ib * n_jb, m * n * k, task);
}

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
        false,
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
