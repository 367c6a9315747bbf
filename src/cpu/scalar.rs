//! The portable path: plain Rust in f32, written so the compiler can auto-vectorize it with
//! whatever the baseline target offers. Used on CPUs without a SIMD path of our own.

/// Micro-tile of the portable GEMM kernel: MR rows of A by NR columns of B.
pub(crate) const MR: usize = 4;
pub(crate) const NR: usize = 8;

/// C[i, j] (+)= Σ_{p < kc} A(i, p)·B(p, j) for i < mr ≤ MR, j < NR, where
/// A(i, p) = a[i*rsa + p*csa], B(p, j) = b[p*ldb + j], C(i, j) = c[i*ldc + j].
/// `overwrite` stores the sum instead of adding it to C.
///
/// # Safety
/// Every A, B and C element named above must be readable (C writable) through the pointers.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    overwrite: bool,
) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: the caller guarantees B(p, 0..NR) is readable.
        let brow: [f32; NR] =
            unsafe { std::ptr::read_unaligned(b.add(p * ldb) as *const [f32; NR]) };
        for (i, acc_i) in acc.iter_mut().enumerate().take(mr) {
            // SAFETY: i < mr and p < kc, so A(i, p) is readable.
            let av = unsafe { *a.add(i * rsa + p * csa) };
            for j in 0..NR {
                acc_i[j] += av * brow[j];
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate().take(mr) {
        for (j, &v) in acc_i.iter().enumerate() {
            // SAFETY: i < mr, j < NR: C(i, j) is writable.
            unsafe {
                let cp = c.add(i * ldc + j);
                *cp = if overwrite { v } else { *cp + v };
            }
        }
    }
}

/// Σ a·b with 8 interleaved partial sums (fixed order: deterministic, and vectorizable).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let mut s = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            s[j] += x[j] * y[j];
        }
    }
    let mut tail = 0.0f32;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

pub(crate) fn scale(alpha: f32, x: &mut [f32]) {
    for v in x {
        *v *= alpha;
    }
}

pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

pub(crate) fn max(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Σ exp(x - m), summed with 8 partial sums.
pub(crate) fn sum_exp(x: &[f32], m: f32) -> f32 {
    let mut s = [0.0f32; 8];
    let mut c = x.chunks_exact(8);
    for ch in &mut c {
        for j in 0..8 {
            s[j] += (ch[j] - m).exp();
        }
    }
    let tail: f32 = c.remainder().iter().map(|&v| (v - m).exp()).sum();
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

/// x = exp(x - m), returning Σ of the new x (same order as [`sum_exp`]).
pub(crate) fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
    for v in x.iter_mut() {
        *v = (*v - m).exp();
    }
    let mut s = [0.0f32; 8];
    let mut c = x.chunks_exact(8);
    for ch in &mut c {
        for j in 0..8 {
            s[j] += ch[j];
        }
    }
    let tail: f32 = c.remainder().iter().sum();
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}
