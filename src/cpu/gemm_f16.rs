//! The tiled GEMM driver of the f16-weight paths (`Isa::NeonFp16` on AArch64, `Isa::Avx2F16`
//! on x86-64), for products with a frozen weight (x·Wᵀ, dy·W): the same task split as
//! `gemm.rs` (tasks of MC rows × NB columns over rayon, k in chunks of KC), with each chunk's
//! weight panel dequantized by the path's f32 packers and stored as f16, then widened in the
//! microkernel (`arm::fp16`, `x86::f16c`) and multiplied with the f32 activations,
//! accumulating in f32.
//!
//! Numerics: each product is A(i,p)·f16(W) — only the weight is rounded (relative error
//! ≤ 2⁻¹¹) — summed in f32 in a fixed order: deterministic, whatever the thread count.

use super::dispatch::Isa;
use super::panel::{pack_b, BSrc};
use super::par;
use super::tile::{CPtr, EdgeTile};
use std::cell::RefCell;

/// Rows per task at most (see `gemm::MC_MAX`).
const MC_MAX: usize = 512;
/// Columns per task at most; halved down to 32 until each thread has 8 tasks.
const NB_MAX: usize = 128;
/// Depth of one panel (a multiple of 32 so quant blocks never straddle chunks): the f32
/// driver's 256, so the f16 panel takes half its bytes. Doubling it to fill the same bytes
/// measured slower (AVX2, Zen 4, dx = dy·W with k = 1536: 70 vs 90 GFLOP/s on one thread):
/// A is not packed, and each task re-streams its [MC, KC] block of A once per NR columns,
/// which at KC = 512 (512 KiB) no longer stays in L2 next to everything else.
const KC: usize = 256;

/// Converts kc rows of an f32 panel (ldb wide, a multiple of NR) to f16 bits.
type PackFn = unsafe fn(*const f32, usize, usize, *mut u16);
/// The f16-panel microkernel; the contract of `arm::fp16::kernel` / `x86::f16c::kernel`.
type KernelFn =
    unsafe fn(usize, *const f32, usize, usize, *const u16, usize, *mut f32, usize, usize, bool);

/// One f16 path's pieces.
#[derive(Clone, Copy)]
struct Kern {
    mr: usize,
    nr: usize,
    /// The f32 ISA whose packers dequantize the weight panel.
    base: Isa,
    pack: PackFn,
    run: KernelFn,
}

fn kern_for(isa: Isa) -> Kern {
    match isa {
        #[cfg(target_arch = "aarch64")]
        Isa::NeonFp16 => Kern {
            mr: super::arm::fp16::MR,
            nr: super::arm::fp16::NR,
            base: Isa::Neon,
            pack: super::arm::fp16::pack_f16,
            run: super::arm::fp16::kernel,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2F16 => Kern {
            mr: super::x86::f16c::MR,
            nr: super::x86::f16c::NR,
            base: Isa::Avx2,
            pack: super::x86::f16c::pack_f16,
            run: super::x86::f16c::kernel,
        },
        _ => unreachable!("gemm_f16: {isa:?} is not an f16-panel path"),
    }
}

/// The part of `buf` that starts on a 64-byte boundary (`buf` has 32 spare values), so the
/// microkernel's NR-wide f16 loads never straddle a cache line.
fn aligned16(buf: &mut [u16]) -> &mut [u16] {
    let off = buf.as_ptr().align_offset(64).min(32);
    &mut buf[off..]
}

thread_local! {
    /// f32 scratch: the f32 panel, dequantization rows, a C edge tile.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The f16 panel.
    static SCRATCH16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// C[m, n] (+)= A·B as `gemm::gemm`, with B rounded to f16, on `isa` (`NeonFp16` or
/// `Avx2F16`). The caller ran `check(isa)`, checked that every A(i, p) lies in `a` and
/// c.len() == m*n, and m, n, k > 0.
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
    let kern = kern_for(isa);
    let (mr, nr) = (kern.mr, kern.nr);
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
                if s16.len() < KC * ldb + 32 {
                    s16.resize(KC * ldb + 32, 0);
                }
                let s16 = aligned16(&mut s16);
                let (panel, rest) = s.split_at_mut(KC * ldb);
                let (tmp, ctile) = rest.split_at_mut(8 * KC);
                let ctile = &mut ctile[..mr * nr];
                let cp = cptr;
                for p0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - p0);
                    // Dequantizing into a smaller f32 stage (32 k rows, L1-resident) and
                    // converting it piecewise measured slower (per-call packing overhead).
                    pack_b(kern.base, src, p0, kc, j0, nbt, panel, ldb, tmp);
                    // SAFETY: panel holds kc rows of ldb (a multiple of NR, itself of 8) f32
                    // and s16 room for KC·ldb u16; the path's CPU features were checked by
                    // the public caller.
                    unsafe { (kern.pack)(panel.as_ptr(), kc, ldb, s16.as_mut_ptr()) };
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
                                let tile = EdgeTile {
                                    c: cij,
                                    ldc,
                                    rows,
                                    ncols,
                                    nr,
                                };
                                tile.run(ctile, overwrite, |c, ldc| {
                                    (kern.run)(kc, ap, rsa, csa, bp, ldb, c, ldc, rows, overwrite)
                                });
                            }
                        }
                    }
                }
            });
        });
    };

    par::for_each_task(n_ib * n_jb, m * n * k, task);
}
