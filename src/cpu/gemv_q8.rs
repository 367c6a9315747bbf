//! Decoding's fast matrix-vector product: y = W·x with x quantized per 32-value block (as
//! llama.cpp does for its CPU dots, but to two int8 codes per value: see `QuantX`). Only
//! generation uses it (`Model::with_decoder`): training, eval and prompt prefill keep the exact
//! f32 products of `matmul_wt`, whose results it changes by ~1e-4 relative (the logits by up to
//! 7e-4 of the largest, `tests/decode_path.rs`). Q4_1 and Q8_0 weights (every weight of
//! the default model) on CPUs with AVX-512 VNNI; everything else, and `EDGE_SFT_DECODE=exact`,
//! goes through `matmul_wt`. Several matrices that read the same x (q, k, v; gate, up) run in
//! one parallel region, so a decoded token forks and joins a few times per layer, not per
//! matrix.

use super::dispatch::{active_isa, Isa};
use super::gemv::YPtr;
use super::par;
pub use super::quant_x::QuantX;
use crate::model::weights::QMatrix;
use crate::quant::GgmlType;
use std::sync::OnceLock;

/// W rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Whether the int8 kernels exist on this CPU and are allowed (the active kernel path is an
/// AVX-512 one and `EDGE_SFT_DECODE` is not `exact`).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let exact = std::env::var("EDGE_SFT_DECODE").is_ok_and(|v| v == "exact");
        !exact && kernels_available(active_isa())
    })
}

#[cfg(target_arch = "x86_64")]
fn kernels_available(isa: Isa) -> bool {
    isa.f32_isa() == Isa::Avx512 && super::x86::gemv_vnni::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn kernels_available(_isa: Isa) -> bool {
    false
}

/// True if `matvec` takes the int8 path for W (else it computes exactly, as `matmul_wt`).
pub fn int8_path(w: &QMatrix) -> bool {
    matches!(w.dtype, GgmlType::Q4_1 | GgmlType::Q8_0) && w.cols.is_multiple_of(64) && enabled()
}

/// Quantize x for the matrices in `mats` (a no-op if none takes the int8 path).
fn quantize(x: &[f32], q: &mut QuantX) {
    q.resize(x.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only reached when `enabled()`, which checked the CPU features; q was sized for x.
    unsafe {
        super::x86::gemv_vnni::quantize(x, q)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the int8 path is x86-only")
}

/// ys[j] = W_j · x for every (W_j, y_j) of `jobs` (all with W_j.cols = x.len(), y_j.len() =
/// W_j.rows): the int8 ones in one parallel region, chunks of 64 rows per task, each output
/// computed by one task in a fixed order (deterministic); the others by `matmul_wt`.
pub fn matvec(x: &[f32], q: &mut QuantX, jobs: &mut [(&QMatrix, &mut [f32])]) {
    for (w, y) in jobs.iter_mut() {
        assert!(
            w.cols == x.len() && y.len() == w.rows,
            "matvec '{}': shapes",
            w.name
        );
        if !int8_path(w) {
            super::matmul_wt(x, 1, w, y);
        }
    }
    let fast: Vec<(&QMatrix, YPtr)> = jobs
        .iter_mut()
        .filter(|(w, _)| int8_path(w))
        .map(|(w, y)| (&**w, YPtr(y.as_mut_ptr())))
        .collect();
    if fast.is_empty() {
        return;
    }
    quantize(x, q);
    let q = &*q;
    let counts: Vec<usize> = fast
        .iter()
        .map(|(w, _)| w.rows.div_ceil(ROWS_PER_TASK))
        .collect();
    let ntasks: usize = counts.iter().sum();
    let work: usize = fast.iter().map(|(w, _)| w.rows * w.cols).sum();
    par::for_each_task(ntasks, work, |mut t| {
        let mut j = 0;
        while t >= counts[j] {
            t -= counts[j];
            j += 1;
        }
        let (w, y) = fast[j];
        let r0 = t * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
        rows_task(w, q, r0..r1, y);
    });
}

fn rows_task(w: &QMatrix, q: &QuantX, rows: std::ops::Range<usize>, y: YPtr) {
    let mut buf = [0.0f32; ROWS_PER_TASK];
    let n = rows.len();
    rows_into(w, q, rows.clone(), &mut buf[..n]);
    for (i, v) in buf[..n].iter().enumerate() {
        // SAFETY: rows.start + i < rows.end ≤ w.rows = y's length; these rows belong to this
        // task only.
        unsafe { *y.get().add(rows.start + i) = *v };
    }
}

/// Quantize x for `matvec_rows` (a no-op where the int8 path is off).
pub fn prepare(x: &[f32], q: &mut QuantX) {
    if enabled() && x.len().is_multiple_of(64) {
        quantize(x, q);
    }
}

/// y = W[rows]·x on the calling thread: W's int8 path with x as `prepare` left it in q, or
/// the exact product.
pub fn matvec_rows(
    x: &[f32],
    q: &QuantX,
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    y: &mut [f32],
) {
    assert!(w.cols == x.len() && y.len() == rows.len() && rows.end <= w.rows);
    if int8_path(w) {
        assert_eq!(q.q8.len(), 2 * x.len(), "matvec_rows: x was not prepared");
        rows_into(w, q, rows, y);
    } else {
        super::matmul_wt_range(x, 1, w, rows, y);
    }
}

#[cfg(target_arch = "x86_64")]
fn rows_into(w: &QMatrix, q: &QuantX, rows: std::ops::Range<usize>, y: &mut [f32]) {
    use super::x86::gemv_vnni::{dot_rows, ROWS};
    let mut out = [0.0f32; ROWS];
    let mut r = rows.start;
    while r < rows.end {
        let g = if rows.end - r >= ROWS { ROWS } else { 1 };
        let wrows: [&[u8]; ROWS] = std::array::from_fn(|i| w.row(r + i.min(g - 1)));
        // SAFETY: `int8_path(w)` held (CPU features, type, cols a multiple of 64 = q's length).
        unsafe { dot_rows(w.dtype, &wrows[..g], q, &mut out) };
        y[r - rows.start..r - rows.start + g].copy_from_slice(&out[..g]);
        r += g;
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn rows_into(_w: &QMatrix, _q: &QuantX, _rows: std::ops::Range<usize>, _y: &mut [f32]) {
    unreachable!("the int8 path is x86-only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::Backing;
    use crate::quant::dequant::quantize_row;
    use std::sync::Arc;

    /// The same quantization and block sums in plain scalar code.
    fn simulate(w: &QMatrix, x: &[f32]) -> Vec<f32> {
        let k = x.len();
        let mut out = vec![0.0f32; w.rows];
        let mut wrow = vec![0.0f32; k];
        for (r, o) in out.iter_mut().enumerate() {
            w.dequantize_row(r, &mut wrow);
            let raw = w.row(r);
            let mut acc = 0.0f64;
            for b in 0..k / 32 {
                let xb = &x[32 * b..32 * b + 32];
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let (d, id) = if amax > 0.0 {
                    (amax / 127.0, 127.0 / amax)
                } else {
                    (0.0, 0.0)
                };
                let qx: Vec<f32> = xb
                    .iter()
                    .map(|v| {
                        let t = v * id;
                        let hi = t.round_ties_even();
                        128.0 * hi + ((t - hi) * 128.0).round_ties_even()
                    })
                    .collect();
                let (dw, mw, qw): (f32, f32, Vec<f32>) = match w.dtype {
                    GgmlType::Q8_0 => {
                        let blk = &raw[34 * b..34 * b + 34];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        (dw, 0.0, blk[2..].iter().map(|&c| c as i8 as f32).collect())
                    }
                    _ => {
                        let blk = &raw[20 * b..20 * b + 20];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        let mw = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                        let mut q = vec![0.0; 32];
                        for j in 0..16 {
                            q[j] = (blk[4 + j] & 15) as f32;
                            q[j + 16] = (blk[4 + j] >> 4) as f32;
                        }
                        (dw, mw, q)
                    }
                };
                let isum: f32 = qw.iter().zip(&qx).map(|(a, b)| a * b).sum();
                acc += (dw * (d / 128.0) * isum) as f64 + (mw * xb.iter().sum::<f32>()) as f64;
            }
            *o = acc as f32;
        }
        out
    }

    #[test]
    fn int8_matvec_matches_its_scalar_model_and_stays_near_exact() {
        let (rows, k) = (70, 192);
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let wf: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
        let mut x: Vec<f32> = (0..k).map(|_| rnd()).collect();
        x[5] = 9.0; // an outlier, as real activations have
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            let mut bytes = Vec::new();
            for r in 0..rows {
                let mut row = Vec::new();
                quantize_row(ty, &wf[r * k..(r + 1) * k], &mut row);
                bytes.extend(row);
            }
            let w = QMatrix::new("w", ty, rows, k, Backing::Owned(Arc::new(bytes)), 0).unwrap();
            let mut exact = vec![0.0f32; rows];
            crate::cpu::matmul_wt(&x, 1, &w, &mut exact);
            let mut y = vec![0.0f32; rows];
            matvec(&x, &mut QuantX::default(), &mut [(&w, &mut y[..])]);
            if !int8_path(&w) {
                assert_eq!(y, exact);
                continue;
            }
            let sim = simulate(&w, &x);
            let scale = exact.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for r in 0..rows {
                assert!(
                    (y[r] - sim[r]).abs() <= 1e-4 * scale,
                    "{ty:?} row {r}: {} vs {}",
                    y[r],
                    sim[r]
                );
                assert!(
                    (y[r] - exact[r]).abs() <= 1e-3 * scale,
                    "{ty:?} row {r}: {} vs exact {}",
                    y[r],
                    exact[r]
                );
            }
        }
    }
}
