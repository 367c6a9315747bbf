//! The tiled GEMM driver of the AArch64 fp16 path (`Isa::NeonFp16`), for products with a
//! frozen weight (x·Wᵀ, dy·W): the same task split as `gemm.rs` (tasks of MC rows × NB
//! columns over rayon, k in chunks of KC), with each chunk's weight panel dequantized by the
//! `Neon` packers and stored as f16, then widened in the microkernel (`arm::fp16`) and
//! multiplied with the f32 activations, accumulating in f32.
//!
//! Numerics: each product is A(i,p)·f16(W) — only the weight is rounded (relative error
//! ≤ 2⁻¹¹) — summed in f32 in a fixed order: deterministic, whatever the thread count.

use super::arm::fp16;
use super::dispatch::Isa;
use super::panel::{pack_b, BSrc};
use super::par;
use std::cell::RefCell;

/// Rows per task at most (see `gemm::MC_MAX`).
const MC_MAX: usize = 512;
/// Columns per task at most; halved down to 32 until each thread has 8 tasks.
const NB_MAX: usize = 128;
/// Depth of one panel (a multiple of 32 so quant blocks never straddle chunks).
const KC: usize = 256;

#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks only write disjoint C tiles, so sharing the pointer is sound.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

thread_local! {
    /// f32 scratch: B panel, dequantization rows, a C edge tile.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The f16 panel.
    static SCRATCH16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// C[m, n] (+)= A·B as `gemm::gemm`, with B rounded to f16. The caller ran
/// `check(Isa::NeonFp16)`, checked that every A(i, p) lies in `a` and c.len() == m*n, and
/// m, n, k > 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
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
    let (mr, nr) = (fp16::MR, fp16::NR);
    let n_ib = m.div_ceil(MC_MAX);
    let mc = m.div_ceil(n_ib).div_ceil(mr) * mr;
    let n_ib = m.div_ceil(mc);
    let threads = rayon::current_num_threads();
    let mut nb_task = NB_MAX;
    while nb_task > 32 && n_ib * n.div_ceil(nb_task) < 8 * threads {
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
        let ldb = nbt.div_ceil(nr) * nr;
        SCRATCH.with(|s| {
            SCRATCH16.with(|s16| {
                let mut s = s.borrow_mut();
                let mut s16 = s16.borrow_mut();
                let need = KC * ldb + 8 * KC + mr * nr;
                if s.len() < need {
                    s.resize(need, 0.0);
                }
                if s16.len() < KC * ldb {
                    s16.resize(KC * ldb, 0);
                }
                let (panel, rest) = s.split_at_mut(KC * ldb);
                let (tmp, ctile) = rest.split_at_mut(8 * KC);
                let ctile = &mut ctile[..mr * nr];
                let cp = cptr;
                for p0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - p0);
                    pack_b(Isa::Neon, src, p0, kc, j0, nbt, panel, ldb, tmp);
                    // SAFETY: panel holds kc rows of ldb (a multiple of 8) f32 and s16 room
                    // for KC·ldb u16; NEON fp16 was checked by the public caller.
                    unsafe { fp16::pack_f16(panel.as_ptr(), kc, ldb, s16.as_mut_ptr()) };
                    let overwrite = !accumulate && p0 == 0;
                    for jr in (0..nbt).step_by(nr) {
                        let ncols = nr.min(nbt - jr);
                        for ir in (0..mct).step_by(mr) {
                            let rows = mr.min(mct - ir);
                            let (i, j) = (i0 + ir, j0 + jr);
                            // SAFETY: A(i.., p0..) lies inside `a` (caller); the f16 panel
                            // holds kc rows of ldb ≥ jr + NR values; C(i..i+rows, j..j+ncols)
                            // lies inside c and belongs to this task only.
                            unsafe {
                                let ap = a.as_ptr().add(i * rsa + p0 * csa);
                                let bp = s16.as_ptr().add(jr);
                                let cij = cp.0.add(i * ldc + j);
                                if ncols == nr {
                                    fp16::kernel(
                                        kc, ap, rsa, csa, bp, ldb, cij, ldc, rows, overwrite,
                                    );
                                } else {
                                    // Edge tile: compute NR columns into ctile, keep ncols.
                                    if !overwrite {
                                        for r in 0..rows {
                                            for q in 0..ncols {
                                                ctile[r * nr + q] = *cij.add(r * ldc + q);
                                            }
                                        }
                                    }
                                    let tp = ctile.as_mut_ptr();
                                    fp16::kernel(
                                        kc, ap, rsa, csa, bp, ldb, tp, nr, rows, overwrite,
                                    );
                                    for r in 0..rows {
                                        for q in 0..ncols {
                                            *cij.add(r * ldc + q) = ctile[r * nr + q];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
        });
    };

    par::for_each_task(n_ib * n_jb, m * n * k, task);
}
