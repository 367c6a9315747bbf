//! The tiled GEMM driver of the reduced-precision x86 path (`Isa::Avx512Bf16`): the same
//! task split as `gemm.rs` (tasks of MC rows × NB columns over rayon, k in chunks of KC),
//! but each chunk's B panel is a bf16 k-pair panel (`panel::pack_b_bf16`: a frozen weight's
//! blocks decoded and rounded in one pass); A is rounded to bf16 once per call, shared by
//! all tasks; the microkernel (`x86::bf16`) multiplies bf16 pairs and accumulates in f32.
//! `gemm.rs` sends products with a frozen weight here, and f32 products of 32 rows or more.
//!
//! Numerics: every product A(i,p)·B(p,j) uses bf16(A)·bf16(B) (each with relative rounding
//! error ≤ 2^-9), exact in f32, summed in f32 in a fixed order (pairs, then chunks in p
//! order): deterministic, whatever the thread count.
//!
//! `Isa::AmxBf16` runs the same driver with the tile-unit microkernel (`x86::amx`, 32×32
//! micro-tiles) on the same packed operands: tasks then hold whole 32-row micro-tiles.

use super::dispatch::Isa;
use super::panel::{pack_b, pack_b_bf16, BSrc};
use super::par;
use super::tile::{CPtr, EdgeTile, LowRank};
use super::x86::avx512;
use super::x86::{amx, bf16};
use std::cell::RefCell;

/// Rows per task at most (see `gemm::MC_MAX`).
const MC_MAX: usize = 256;
/// Columns per task at most; halved down to NR until each thread has 8 tasks.
const NB_MAX: usize = 128;
/// Depth of one panel (a multiple of 32 so quant blocks never straddle chunks).
const KC: usize = 256;

/// The shared packed-A buffer; tasks write disjoint row ranges of it.
#[derive(Clone, Copy)]
struct APtr(*mut u16);
// SAFETY: packing tasks write disjoint ranges (see `gemm`), so sharing the pointer is sound.
unsafe impl Send for APtr {}
// SAFETY: as above.
unsafe impl Sync for APtr {}

thread_local! {
    /// f32 scratch: B panel, dequantization rows, a C edge tile.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// bf16 scratch: packed B pairs.
    static SCRATCH16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// Free buffers for the bf16 A of one product (see `gemm`): a stack, because a thread
    /// waiting inside one product's fork may start a task that runs another product.
    static APACK: RefCell<Vec<Vec<u16>>> = const { RefCell::new(Vec::new()) };
}

/// C[m, n] (+)= A·B as `gemm::gemm`, with bf16 operands, on the AMX tile unit when `tiles`.
/// The caller ran `check(Isa::Avx512Bf16)` (and `check(Isa::AmxBf16)` for `tiles`), checked
/// that every A(i, p) lies in `a` and c.len() == m*n, and m, n, k > 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    tiles: bool,
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
    // Both kernels keep one contract (`bf16::kernel`'s), for a different number of rows.
    type Kernel =
        unsafe fn(usize, *const u16, usize, *const u16, usize, *mut f32, usize, usize, bool);
    let kernel: Kernel = if tiles { amx::kernel } else { bf16::kernel };
    let (mr, nr) = if tiles {
        (amx::MR, amx::NR)
    } else {
        (bf16::MR, bf16::NR)
    };
    let n_ib = m.div_ceil(MC_MAX);
    let mc = m.div_ceil(n_ib).div_ceil(mr) * mr;
    let n_ib = m.div_ceil(mc);
    let threads = rayon::current_num_threads();
    let mut nb_task = NB_MAX;
    while nb_task > nr && n_ib * n.div_ceil(nb_task) < 8 * threads {
        nb_task /= 2;
    }
    let n_jb = n.div_ceil(nb_task);
    let cptr = CPtr(c.as_mut_ptr());
    let ldc = n;
    // Packed A rows: KC rounded to even bf16 each.
    let lda = KC;
    let n_chunks = k.div_ceil(KC);

    let task = |apk_all: &[u16], t: usize| {
        let (jb, ib) = (t / n_ib, t % n_ib);
        let (i0, j0) = (ib * mc, jb * nb_task);
        let mct = mc.min(m - i0);
        let nbt = nb_task.min(n - j0);
        let ldb = nbt.div_ceil(nr) * nr;
        SCRATCH.with(|s| {
            SCRATCH16.with(|s16| {
                let mut s = s.borrow_mut();
                let mut s16 = s16.borrow_mut();
                let need = KC * ldb + 8 * KC + amx::MR * nr;
                if s.len() < need {
                    s.resize(need, 0.0);
                }
                let need16 = KC * ldb;
                if s16.len() < need16 {
                    s16.resize(need16, 0);
                }
                let (panel, rest) = s.split_at_mut(KC * ldb);
                let (tmp, ctile) = rest.split_at_mut(8 * KC);
                let ctile = &mut ctile[..amx::MR * nr];
                let bpk = &mut s16[..KC * ldb];
                let cp = cptr;
                for (ch, p0) in (0..k).step_by(KC).enumerate() {
                    let kc = KC.min(k - p0);
                    let kp = kc.div_ceil(2);
                    pack_b_bf16(src, p0, kc, j0, nbt, bpk, ldb, panel, tmp);
                    // This chunk's packed rows i0..i0+mct: lda = KC ≥ 2·kp values each.
                    let apk = &apk_all[(ch * m + i0) * lda..(ch * m + i0 + mct) * lda];
                    let overwrite = !accumulate && p0 == 0;
                    for jr in (0..nbt).step_by(nr) {
                        let ncols = nr.min(nbt - jr);
                        for ir in (0..mct).step_by(mr) {
                            let rows = mr.min(mct - ir);
                            let (i, j) = (i0 + ir, j0 + jr);
                            // SAFETY: apk rows ir..ir+rows hold 2·kp values each; bpk pair
                            // rows hold ldb ≥ jr + NR columns; C(i..i+rows, j..j+ncols) lies
                            // inside c and belongs to this task only.
                            unsafe {
                                let ap = apk.as_ptr().add(ir * lda);
                                let bp = bpk.as_ptr().add(2 * jr);
                                let cij = cp.0.add(i * ldc + j);
                                let tile = EdgeTile {
                                    c: cij,
                                    ldc,
                                    rows,
                                    ncols,
                                    nr,
                                };
                                tile.run(ctile, overwrite, |c, ldc| {
                                    kernel(kp, ap, lda, bp, 2 * ldb, c, ldc, rows, overwrite)
                                });
                            }
                        }
                    }
                }
                // The low-rank term (LoRA), in f32 with the AVX-512 kernel: same 8×32 tile,
                // so the f32 panel of this task serves it.
                if let Some(l) = lr.filter(|l| l.r > 0) {
                    let src = BSrc::F32 {
                        b: l.v,
                        rs: l.rs,
                        cs: l.cs,
                    };
                    pack_b(Isa::Avx512, src, 0, l.r, j0, nbt, panel, ldb, tmp);
                    for jr in (0..nbt).step_by(nr) {
                        let ncols = nr.min(nbt - jr);
                        for ir in (0..mct).step_by(avx512::MR) {
                            let rows = avx512::MR.min(mct - ir);
                            let (i, j) = (i0 + ir, j0 + jr);
                            // SAFETY: U rows i..i+rows hold r values each (checked by
                            // gemm_lr); the panel holds r ≤ KC rows of ldb ≥ jr + NR values;
                            // C(i..i+rows, j..j+ncols) lies inside c and belongs to this task.
                            unsafe {
                                let up = l.u.as_ptr().add(i * l.r);
                                let bp = panel.as_ptr().add(jr);
                                let cij = cp.0.add(i * ldc + j);
                                let tile = EdgeTile {
                                    c: cij,
                                    ldc,
                                    rows,
                                    ncols,
                                    nr,
                                };
                                tile.run(ctile, false, |c, ldc| {
                                    avx512::kernel(l.r, up, l.r, 1, bp, ldb, c, ldc, rows, false)
                                });
                            }
                        }
                    }
                }
            });
        });
    };

    // A is rounded to bf16 pairs once per call, [chunk][row][KC], shared by every column
    // task (instead of once per task), in a buffer taken from this thread's free stack.
    {
        let mut owned = APACK
            .with(|cell| cell.borrow_mut().pop())
            .unwrap_or_default();
        let buf = &mut owned;
        let need = n_chunks * m * lda;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let aptr = APtr(buf.as_mut_ptr());
        const RB: usize = 32;
        let n_rb = m.div_ceil(RB);
        par::for_each_task(n_chunks * n_rb, m * k, |t| {
            let (ch, b) = (t / n_rb, t % n_rb);
            let (i0, p0) = (b * RB, ch * KC);
            let (rows, kc) = (RB.min(m - i0), KC.min(k - p0));
            let ap = aptr;
            // SAFETY: A(i0.., p0..) lies inside `a` (caller); the destination rows
            // (ch·m + i0 ..+rows) · lda stay inside the `need` values and belong to this
            // task only; AVX512-BF16 was checked by the public caller.
            unsafe {
                let src = a.as_ptr().add(i0 * rsa + p0 * csa);
                bf16::pack_a(src, rsa, csa, rows, kc, ap.0.add((ch * m + i0) * lda), lda);
            }
        });
        let apk_all: &[u16] = &buf[..need];
        par::for_each_task(n_ib * n_jb, m * n * k, |t| task(apk_all, t));
        APACK.with(|cell| cell.borrow_mut().push(owned));
    }
}
