//! y = x·Wᵀ for a few rows of x (generation: n = 1), where packing panels would cost more than
//! the product. With SIMD (x86, NEON) a fused kernel decodes each 32-value block of 4 W rows
//! into registers and dots it with the x rows (block scales applied once per block dot); on
//! the portable path, for widths that are not whole blocks, and for types without such a
//! block decoder (Q5_0, Q5_1, the K-quants), each W row is dequantized
//! into a thread-local buffer and dotted with every x row. Parallel over chunks of W rows, each output element computed by
//! one task in a fixed order (deterministic).

use super::dispatch::Isa;
use super::par;
use super::vecops::{dequant_unchecked, dot_unchecked, has_block32_simd};
use crate::model::weights::QMatrix;
use crate::quant::GgmlType;
use std::cell::RefCell;
use std::ops::Range;

/// Largest n for which matmul_wt takes this path instead of the tiled GEMM.
pub(crate) const MAX_ROWS: usize = 4;
/// W rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// A fused dequantize-and-dot kernel: out[i*rows_per_call + r] = W_r · x_i for up to
/// `rows_per_call` W rows and `xs_per_call` x rows (see `x86::gemv_avx512::dot_rows`).
type DotRows = unsafe fn(GgmlType, &[&[u8]], usize, &[f32], usize, usize, &mut [f32; 8]);

struct Fused {
    run: DotRows,
    rows_per_call: usize,
    xs_per_call: usize,
}

fn fused_for(isa: Isa) -> Option<Fused> {
    match isa.f32_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(Fused {
            run: super::x86::gemv_avx2::dot_rows,
            rows_per_call: super::x86::gemv_avx2::ROWS,
            xs_per_call: super::x86::gemv_avx2::XS,
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(Fused {
            run: super::x86::gemv_avx512::dot_rows,
            rows_per_call: super::x86::gemv_avx512::ROWS,
            xs_per_call: super::x86::gemv_avx512::XS,
        }),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Some(Fused {
            run: super::arm::gemv_neon::dot_rows,
            rows_per_call: super::arm::gemv_neon::ROWS,
            xs_per_call: super::arm::gemv_neon::XS,
        }),
        _ => None,
    }
}

thread_local! {
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
pub(crate) struct YPtr(pub(crate) *mut f32);
// SAFETY: each task writes the y columns of its own W rows only (disjoint).
unsafe impl Send for YPtr {}
// SAFETY: as above.
unsafe impl Sync for YPtr {}

impl YPtr {
    /// A method, so closures capture the whole Send+Sync wrapper rather than its raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// y[n, rows.len()] = x[n, w.cols] · W[rows, :]ᵀ. Shapes were checked by the caller, which
/// also ran `check(isa)`.
pub(crate) fn gemv_wt(
    isa: Isa,
    x: &[f32],
    n: usize,
    w: &QMatrix,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let k = w.cols;
    let nout = rows.len();
    assert!(x.len() == n * k && y.len() == n * nout, "gemv_wt: shapes");
    let yp = YPtr(y.as_mut_ptr());
    let fused = fused_for(isa).filter(|_| k.is_multiple_of(32) && has_block32_simd(w.dtype));
    let task = |t: usize| {
        let j0 = t * ROWS_PER_TASK;
        let j1 = (j0 + ROWS_PER_TASK).min(nout);
        if let Some(f) = fused.as_ref() {
            let mut out = [0.0f32; 8];
            let mut j = j0;
            while j < j1 {
                let g = if j1 - j >= f.rows_per_call {
                    f.rows_per_call
                } else {
                    1
                };
                let wrows: [&[u8]; 8] =
                    std::array::from_fn(|r| w.row(rows.start + j + r.min(g - 1)));
                for i0 in (0..n).step_by(f.xs_per_call) {
                    let nx = f.xs_per_call.min(n - i0);
                    // SAFETY: the caller ran check(isa); every row holds k values of w.dtype
                    // (k a multiple of 32 and w.dtype one with a block decoder, checked when
                    // choosing this path) and x holds nx
                    // rows of k values from i0 on.
                    unsafe { (f.run)(w.dtype, &wrows[..g], k, &x[i0 * k..], k, nx, &mut out) };
                    for i in 0..nx {
                        for r in 0..g {
                            // SAFETY: (i0+i) < n and j+r < nout: inside y; these columns
                            // belong to this task only.
                            unsafe {
                                *yp.get().add((i0 + i) * nout + j + r) =
                                    out[i * f.rows_per_call + r]
                            };
                        }
                    }
                }
                j += g;
            }
            return;
        }
        ROW.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < k {
                buf.resize(k, 0.0);
            }
            let wrow = &mut buf[..k];
            for j in j0..j1 {
                dequant_unchecked(isa, w.dtype, w.row(rows.start + j), wrow);
                for i in 0..n {
                    let v = dot_unchecked(isa, wrow, &x[i * k..(i + 1) * k]);
                    // SAFETY: i < n and j < nout, so the index is inside y; column j belongs
                    // to this task only.
                    unsafe { *yp.get().add(i * nout + j) = v };
                }
            }
        });
    };
    par::for_each_task(nout.div_ceil(ROWS_PER_TASK), n * nout * k, task);
}
