//! y = x·Wᵀ for a few rows of x (generation: n = 1). Memory bound: each W row is dequantized
//! once into a thread-local buffer and dotted with every x row. Parallel over chunks of W rows,
//! each output element computed by one task in a fixed order (deterministic).

use super::dispatch::Isa;
use super::vecops::{dequant_unchecked, dot_unchecked};
use crate::model::weights::QMatrix;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// Largest n for which matmul_wt takes this path instead of the tiled GEMM.
pub(crate) const MAX_ROWS: usize = 2;
/// W rows per parallel task.
const ROWS_PER_TASK: usize = 32;

thread_local! {
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct YPtr(*mut f32);
// SAFETY: each task writes the y columns of its own W rows only (disjoint).
unsafe impl Send for YPtr {}
// SAFETY: as above.
unsafe impl Sync for YPtr {}

impl YPtr {
    /// A method, so closures capture the whole Send+Sync wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
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
    let task = |t: usize| {
        let j0 = t * ROWS_PER_TASK;
        let j1 = (j0 + ROWS_PER_TASK).min(nout);
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
    let ntasks = nout.div_ceil(ROWS_PER_TASK);
    if nout * k < (1 << 15) {
        (0..ntasks).for_each(task);
    } else {
        (0..ntasks).into_par_iter().for_each(task);
    }
}
