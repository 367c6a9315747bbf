//! Row-major f32 GEMMs on cuBLAS (column-major): a row-major matrix is its transpose in
//! column-major, so C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped.

use cudarc::cublas::{result as blas, sys, CudaBlas};
use cudarc::driver::sys::CUdeviceptr;
use std::os::raw::c_int;

/// One row-major operand: its address, and whether the product reads it transposed. `ld` is
/// its stored row length (columns of the matrix as it lies in memory).
#[derive(Clone, Copy)]
pub(crate) struct Op {
    pub ptr: CUdeviceptr,
    pub ld: usize,
    pub t: bool,
}

/// A not-transposed operand with rows of `ld` values.
pub(crate) fn n(ptr: CUdeviceptr, ld: usize) -> Op {
    Op { ptr, ld, t: false }
}

/// A transposed operand, stored with rows of `ld` values.
pub(crate) fn t(ptr: CUdeviceptr, ld: usize) -> Op {
    Op { ptr, ld, t: true }
}

fn op(t: bool) -> sys::cublasOperation_t {
    if t {
        sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        sys::cublasOperation_t::CUBLAS_OP_N
    }
}

fn int(v: usize, what: &str) -> c_int {
    c_int::try_from(v).unwrap_or_else(|_| panic!("cuda backend: GEMM {what} {v} exceeds i32"))
}

/// C [m, n] (row-major, rows of n) = alpha · op(A) [m, k] · op(B) [k, n] + beta · C.
///
/// The caller guarantees the sizes: A holds m·k values (rows of `a.ld` = k, or m when
/// transposed), B k·n values (rows of n, or k when transposed), C m·n values, all live device
/// memory on the stream `blas` was created with.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    blas: &CudaBlas,
    what: &str,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Op,
    b: Op,
    beta: f32,
    c: CUdeviceptr,
) {
    if m == 0 || n == 0 {
        return;
    }
    debug_assert_eq!(a.ld, if a.t { m } else { k }, "{what}: lda");
    debug_assert_eq!(b.ld, if b.t { k } else { n }, "{what}: ldb");
    // SAFETY: (see the function's contract) cuBLAS reads k·n values of B and m·k of A at
    // their leading dimensions and writes m·n values of C; alpha and beta are host scalars
    // (the handle's default pointer mode).
    let r = unsafe {
        blas::sgemm(
            *blas.handle(),
            op(b.t),
            op(a.t),
            int(n, "n"),
            int(m, "m"),
            int(k, "k"),
            &alpha,
            b.ptr as *const f32,
            int(b.ld.max(1), "ldb"),
            a.ptr as *const f32,
            int(a.ld.max(1), "lda"),
            &beta,
            c as *mut f32,
            int(n, "ldc"),
        )
    };
    r.unwrap_or_else(|e| panic!("cuda backend: {what}: cuBLAS sgemm failed: {e:?}"));
}
