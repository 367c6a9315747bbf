//! The tiled GEMM driver behind the matrix products (see `matmul.rs` and `matmul_f32.rs` for
//! the public API).
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

use super::dispatch::Isa;
use super::panel::{pack_b, BSrc};
use super::par;
use super::scalar;
use super::tile::{CPtr, EdgeTile, LowRank};
#[cfg(target_arch = "x86_64")]
use super::x86::{avx2, avx512, narrow, narrow512};
use crate::quant::kquants::QK_K;
use std::cell::RefCell;

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
/// Columns of C per task, at most (except K-quant W sources, see `gemm_lr`): a multiple of
/// every NR and of the 32-value quant block.
/// Halved (down to 32) until there are 8 tasks per thread: narrower tasks cost almost nothing
/// (each W element is still dequantized once per row block) and balance the threads better.
const NB_MAX: usize = 128;
/// Rows per task at least when a narrow product is split over rows.
const MIN_ROWS_NARROW: usize = 32;
/// Depth of one B panel: a multiple of 32 so quant blocks never straddle chunks.
const KC: usize = 256;
/// Fewest rows for which an f32 B is worth rounding into bf16 pairs (see `gemm_lr`).
#[cfg(target_arch = "x86_64")]
const BF16_MIN_ROWS: usize = 32;

/// The microkernel for `isa` and an output `n` columns wide. On x86, outputs at most 8 wide
/// (LoRA rank 8) use the 12×8 narrow tile: no padding columns, no edge-tile copies; outputs
/// up to 16 wide (rank 16) on AVX-512 use the 16-wide AVX2 tile, which wastes less of each
/// register on padding than the 32-wide one.
fn kern_for(isa: Isa, n: usize) -> Kern {
    let isa = isa.f32_isa();
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && n <= narrow::NR {
        return Kern {
            mr: narrow::MR,
            nr: narrow::NR,
            run: narrow::kernel,
        };
    }
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
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Kern {
            mr: super::arm::neon::MR,
            nr: super::arm::neon::NR,
            run: super::arm::neon::kernel,
        },
        #[allow(unreachable_patterns)]
        _ => Kern {
            mr: scalar::MR,
            nr: scalar::NR,
            run: scalar::kernel,
        },
    }
}

/// f32 values in one cache line: panels start on a line so full-width SIMD loads of a panel
/// row never straddle two lines.
pub(crate) const ALIGN_F32: usize = 16;

/// The part of `buf` that starts on a 64-byte boundary (`buf` has ALIGN_F32 spare values).
pub(crate) fn aligned(buf: &mut [f32]) -> &mut [f32] {
    let off = buf.as_ptr().align_offset(64).min(ALIGN_F32);
    &mut buf[off..]
}

thread_local! {
    /// Per-thread scratch reused across calls: B panel, one dequantized row, a C edge tile.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Free buffers for a transposed narrow B (see `narrow_dots`): a stack, because a thread
    /// waiting inside one product's fork may start a task that runs another product.
    static BT_FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// C[m, n ≤ 8] (+)= A·B, A(i, p) = a[i*rsa + p], B(p, j) = b[p*rs + j*cs], by the AVX-512 dot
/// kernel: Bᵀ's rows are B's columns, read in place when contiguous (rs = 1: B = LoRA's Aᵀ),
/// else transposed once (LoRA's B [out, rank], a few KB); rows are split over the pool. The
/// caller checked the extents of A, B and C, and ran check(isa).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn narrow_dots(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    b: &[f32],
    rs: usize,
    cs: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    let mut owned: Option<Vec<f32>> = None;
    let (bt, ldt): (&[f32], usize) = if rs == 1 {
        (b, cs)
    } else {
        let owned = owned.insert(BT_FREE.with(|f| f.borrow_mut().pop()).unwrap_or_default());
        if owned.len() < n * k {
            owned.resize(n * k, 0.0);
        }
        for (j, row) in owned.chunks_exact_mut(k).take(n).enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = b[p * rs + j * cs];
            }
        }
        (&owned[..n * k], k)
    };
    let threads = rayon::current_num_threads();
    let tasks = (4 * threads).min(m / MIN_ROWS_NARROW).max(1);
    let rows_per = m.div_ceil(tasks).next_multiple_of(2);
    let cptr = CPtr(c.as_mut_ptr());
    par::for_each_task(m.div_ceil(rows_per), m * n * k, |t| {
        let i0 = t * rows_per;
        let rows = rows_per.min(m - i0);
        let cp = cptr;
        // SAFETY: rows i0..i0+rows of A hold k values at stride rsa (the caller's extent check:
        // (m-1)·rsa + k - 1 < a.len()); Bᵀ has n rows of k values at stride ldt (in place: B's
        // extent check with rs = 1; else the n·k buffer above); C rows i0.. (n values each)
        // lie inside c and belong to this task only; AVX-512 was checked by the caller.
        unsafe {
            narrow512::dots(
                rows,
                n,
                k,
                a.as_ptr().add(i0 * rsa),
                rsa,
                bt.as_ptr(),
                ldt,
                cp.0.add(i0 * n),
                n,
                accumulate,
            )
        };
    });
    if let Some(buf) = owned {
        BT_FREE.with(|f| f.borrow_mut().push(buf));
    }
}

/// C[m, n] (+)= A·B with A(i, p) = a[i*rsa + p*csa], B from `src`, C row-major (ldc = n).
/// The caller has checked that every A(i, p) index lies inside `a` and `c.len() == m*n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
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
    gemm_lr(isa, m, n, k, a, rsa, csa, src, c, accumulate, None)
}

/// [`gemm`] plus an optional low-rank term: C (+)= A·B + U·V.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_lr(
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
    lr: Option<LowRank>,
) {
    assert_eq!(c.len(), m * n, "gemm: output length");
    if m == 0 || n == 0 {
        return;
    }
    if let Some(l) = &lr {
        l.check(m, n);
        if l.r > KC {
            // Ranks above one panel depth: not fused.
            gemm_lr(isa, m, n, k, a, rsa, csa, src, c, accumulate, None);
            gemm(isa, m, n, l.r, l.u, l.r, 1, l.src(), c, true);
            return;
        }
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        if let Some(l) = lr {
            gemm(isa, m, n, l.r, l.u, l.r, 1, l.src(), c, true);
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: A too short");
    // f32 B with unit column stride is read in place by the microkernel: check its extent.
    if let BSrc::F32 { b, rs, cs } = src {
        assert!((k - 1) * rs + (n - 1) * cs < b.len(), "gemm: B too short");
    }
    // Drivers without the fused term add it in a second (f32) pass.
    let unfused = |c: &mut [f32]| {
        if let Some(l) = lr {
            gemm(isa.f32_isa(), m, n, l.r, l.u, l.r, 1, l.src(), c, true);
        }
    };
    // The bf16 path pays off on tiles of at least half its 32-wide micro-tile, when each
    // rounded B value serves many rows: always for a frozen weight (its panel is decoded
    // straight to bf16), and for f32 B (attention) from BF16_MIN_ROWS rows. LoRA's dA (rank
    // rows, B = the layer input) stays f32, which reads B in place.
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Bf16 | Isa::AmxBf16)
        && n > avx2::NR
        && (m >= BF16_MIN_ROWS || matches!(src, BSrc::Wt { .. } | BSrc::W { .. }))
    {
        let tiles = isa == Isa::AmxBf16;
        super::gemm_bf16::gemm(tiles, m, n, k, a, rsa, csa, src, c, accumulate, lr);
        return;
    }
    // The fp16 path rounds only frozen weights (f32 products may hold gradients, which f16's
    // range would flush); narrow outputs stay f32 as above.
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::NeonFp16
        && n > super::arm::neon::NR
        && matches!(src, BSrc::Wt { .. } | BSrc::W { .. })
    {
        super::gemm_f16::gemm(isa, m, n, k, a, rsa, csa, src, c, accumulate);
        unfused(c);
        return;
    }
    // Its x86 twin: f16 weight panels widened by F16C, f32 FMA (same policy as above).
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2F16 && n > avx2::NR && matches!(src, BSrc::Wt { .. } | BSrc::W { .. }) {
        super::gemm_f16::gemm(isa, m, n, k, a, rsa, csa, src, c, accumulate);
        unfused(c);
        return;
    }
    // Narrow outputs with a row-major A on AVX-512: dot products along k (`narrow512.rs`).
    #[cfg(target_arch = "x86_64")]
    if n <= 8 && csa == 1 && lr.is_none() && isa.f32_isa() == Isa::Avx512 {
        if let BSrc::F32 { b, rs, cs } = src {
            narrow_dots(m, n, k, a, rsa, b, rs, cs, c, accumulate);
            return;
        }
    }
    let kern = kern_for(isa, n);
    let threads = rayon::current_num_threads();
    // Narrow outputs (LoRA ranks: one column block) would be a single task: cut their rows
    // instead, into about 4 tasks per thread of at least MIN_ROWS rows.
    let row_tasks = if n <= NB_MAX / 2 {
        (4 * threads).min(m / MIN_ROWS_NARROW).max(1)
    } else {
        1
    };
    let n_ib = m.div_ceil(MC_MAX).max(row_tasks);
    let mc = m.div_ceil(n_ib).div_ceil(kern.mr) * kern.mr;
    let n_ib = m.div_ceil(mc);
    let mut nb_task = NB_MAX;
    while nb_task > 32 && n_ib * n.div_ceil(nb_task) < 8 * threads {
        nb_task /= 2;
    }
    // A K-quant weight read as W (dx = dy·W) is decoded 256 columns (one super-block) at a
    // time: tasks one super-block wide decode each super-block once, where tasks of 32-128
    // columns would decode it whole for each of them (see `panel::dequant_segment`). Taken
    // when that still leaves two tasks per thread.
    if let BSrc::W { w } = src {
        let sb = w.dtype.block_size();
        if sb == QK_K && n.is_multiple_of(sb) && n_ib * (n / sb) >= 2 * threads {
            nb_task = sb;
        }
    }
    let n_jb = n.div_ceil(nb_task);
    let cptr = CPtr(c.as_mut_ptr());
    let ldc = n;

    let task = |t: usize| {
        let (jb, ib) = (t / n_ib, t % n_ib);
        let (i0, j0) = (ib * mc, jb * nb_task);
        let mct = mc.min(m - i0);
        let nbt = nb_task.min(n - j0);
        // The widest panel this task may pack: nbt padded to a multiple of NR.
        let nbp = nbt.div_ceil(kern.nr) * kern.nr;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = KC * nbp + 8 * KC + kern.mr * kern.nr + ALIGN_F32;
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let s = aligned(&mut s);
            let (panel, rest) = s.split_at_mut(KC * nbp);
            let (tmp, ctile) = rest.split_at_mut(8 * KC);
            let ctile = &mut ctile[..kern.mr * kern.nr];
            let cp = cptr;
            // The k chunks of A·B, then (if any) the low-rank term as one more chunk.
            let chunks = (0..k).step_by(KC).map(|p0| (p0, KC.min(k - p0), false));
            let extra = lr.map(|l| (0, l.r, true)).filter(|&(_, r, _)| r > 0);
            for (p0, kc, is_lr) in chunks.chain(extra) {
                let (a, rsa, csa, src) = match (is_lr, lr) {
                    (true, Some(l)) => (l.u, l.r, 1, l.src()),
                    _ => (a, rsa, csa, src),
                };
                // f32 B with unit column stride: full micro-tiles (columns < jfull) read it in
                // place (ldb = rs); only the partial tile at the right edge, if any, is packed
                // (into a panel of width ldp starting at column jfull). Other sources: all
                // packed (jfull = 0).
                let (direct, jfull) = match src {
                    BSrc::F32 { b, rs, cs: 1 } => (Some((b, rs)), nbt / kern.nr * kern.nr),
                    _ => (None, 0),
                };
                let ldp = (nbt - jfull).div_ceil(kern.nr) * kern.nr;
                if jfull < nbt {
                    pack_b(isa, src, p0, kc, j0 + jfull, nbt - jfull, panel, ldp, tmp);
                }
                let overwrite = !accumulate && p0 == 0 && !is_lr;
                for jr in (0..nbt).step_by(kern.nr) {
                    let ncols = kern.nr.min(nbt - jr);
                    for ir in (0..mct).step_by(kern.mr) {
                        let rows = kern.mr.min(mct - ir);
                        let i = i0 + ir;
                        let j = j0 + jr;
                        // SAFETY: A(i.., p0..) stays inside `a` (asserted above). In place,
                        // B(p0 + p, j + q) for p < kc, q < NR has index
                        // (p0+p)*rs + j + q < (k-1)*rs + n ≤ b.len() (jr + NR ≤ jfull ≤ nbt,
                        // j0 + nbt ≤ n; extent asserted above, or by LowRank::check);
                        // otherwise the panel holds kc rows of ldp ≥ jr - jfull + NR values.
                        // C(i..i+rows, j..j+ncols) lies inside c (i+rows ≤ m, j+ncols ≤ n)
                        // and belongs to this task only; the kernel's features were checked by
                        // the public caller.
                        unsafe {
                            let ap = a.as_ptr().add(i * rsa + p0 * csa);
                            let (bp, ldb) = match direct {
                                Some((b, rs)) if jr < jfull => {
                                    (b.as_ptr().add((p0 * rs) + j0 + jr), rs)
                                }
                                _ => (panel.as_ptr().add(jr - jfull), ldp),
                            };
                            let cij = cp.0.add(i * ldc + j);
                            let tile = EdgeTile {
                                c: cij,
                                ldc,
                                rows,
                                ncols,
                                nr: kern.nr,
                            };
                            tile.run(ctile, overwrite, |c, ldc| {
                                (kern.run)(kc, ap, rsa, csa, bp, ldb, c, ldc, rows, overwrite)
                            });
                        }
                    }
                }
            }
        });
    };

    par::for_each_task(n_ib * n_jb, m * n * k, task);
}
