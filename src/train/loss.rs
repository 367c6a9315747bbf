//! The fused response-masked NLL: output projection, log-softmax, NLL and the gradient with
//! respect to the final hidden state in ONE pass over vocabulary chunks, for scored rows only.
//!
//! With logits l = h·Wᵀ, p = softmax(l): ∂(−log p_y)/∂h = Σ_v p_v W_v − W_y. The sum is kept as
//! an online-softmax accumulator g = Σ_v exp(l_v − m) W_v, rescaled whenever the running max m
//! grows, so the [rows × vocab] logits matrix never exists: only one [rows × CHUNK] tile does.

use crate::cpu;
use crate::model::weights::QMatrix;
use rayon::prelude::*;

/// Vocabulary columns per chunk: [rows, CHUNK] logits live at a time.
pub const CHUNK: usize = 2048;

/// Result of the fused kernel.
pub struct NllOutput {
    /// −log Pr(target_i) per row, in f64.
    pub nll: Vec<f64>,
}

/// Reusable buffers of the fused kernel (grown to the largest call, then kept).
#[derive(Default)]
pub struct NllScratch {
    tile: Vec<f32>, // [m, chunk] logits, then exp(l − max)
    g: Vec<f32>,    // [m, d] Σ exp(l − max) W_v
    max: Vec<f32>,  // [m]
    sum: Vec<f64>,  // [m]
    tgt: Vec<f32>,  // [m] the target's logit
    wy: Vec<f32>,   // [m, d] the target's output row
}

impl NllScratch {
    /// Buffers for up to `m` rows of width `d` and a vocabulary of `vocab`.
    pub fn for_rows(m: usize, d: usize, vocab: usize) -> Self {
        NllScratch {
            tile: vec![0.0; m * CHUNK.min(vocab)],
            g: vec![0.0; m * d],
            max: vec![0.0; m],
            sum: vec![0.0; m],
            tgt: vec![0.0; m],
            wy: vec![0.0; m * d],
        }
    }

    /// Size in f32 values (the f64 sums count twice).
    pub fn values(&self) -> usize {
        self.tile.len()
            + self.g.len()
            + self.max.len()
            + 2 * self.sum.len()
            + self.tgt.len()
            + self.wy.len()
    }
}

/// The first `n` values of `v` (grown if needed), contents unspecified: for buffers that are
/// fully written before they are read.
fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// The first `n` values of `v`, set to `fill`.
fn fit<T: Clone + Default>(v: &mut Vec<T>, n: usize, fill: T) -> &mut [T] {
    let s = grow(v, n);
    s.fill(fill);
    s
}

/// For hidden rows `h` [m, d] and their `targets`, compute each row's NLL and write
/// `dh` [m, d] = `grad_scale` · ∂(Σ_i nll_i)/∂h_i. `w` is the output projection [vocab, d].
pub fn fused_nll(
    h: &[f32],
    targets: &[u32],
    w: &QMatrix,
    grad_scale: f32,
    dh: &mut [f32],
) -> NllOutput {
    fused_nll_in(&mut NllScratch::default(), h, targets, w, grad_scale, dh)
}

/// [`fused_nll`] with caller-kept scratch (the trainer's arena): no allocation once warm.
pub fn fused_nll_in(
    sc: &mut NllScratch,
    h: &[f32],
    targets: &[u32],
    w: &QMatrix,
    grad_scale: f32,
    dh: &mut [f32],
) -> NllOutput {
    let m = targets.len();
    let d = w.cols;
    let vocab = w.rows;
    assert_eq!(h.len(), m * d, "fused_nll: h must be [{m}, {d}]");
    assert_eq!(dh.len(), m * d, "fused_nll: dh must be [{m}, {d}]");
    if m == 0 {
        return NllOutput { nll: Vec::new() };
    }
    let chunk = CHUNK.min(vocab);
    let tile = grow(&mut sc.tile, m * chunk); // each chunk's logits overwrite it
    let g = fit(&mut sc.g, m * d, 0.0);
    let max = fit(&mut sc.max, m, f32::NEG_INFINITY);
    let sum = fit(&mut sc.sum, m, 0.0);
    let tgt = fit(&mut sc.tgt, m, 0.0);
    let wy = grow(&mut sc.wy, m * d); // rows dequantized below

    let mut c0 = 0;
    while c0 < vocab {
        let c1 = (c0 + chunk).min(vocab);
        let wc = c1 - c0;
        let wchunk = w.slice_rows(c0, c1);
        let t = &mut tile[..m * wc];
        cpu::matmul_wt(h, m, &wchunk, t);
        // Rows are independent: online max/rescale/exp per row, spread over the pool.
        t.par_chunks_mut(wc)
            .zip(g.par_chunks_mut(d))
            .zip(max.par_iter_mut().zip(sum.par_iter_mut()))
            .zip(tgt.par_iter_mut().zip(targets.par_iter()))
            .with_min_len(8)
            .for_each(|(((row, gi), (mi, si)), (ti, &target))| {
                let target = target as usize;
                if (c0..c1).contains(&target) {
                    *ti = row[target - c0];
                }
                let cmax = cpu::max(row);
                if cmax > *mi {
                    let f = (*mi - cmax).exp(); // 0 on the first chunk
                    *si *= f as f64;
                    cpu::scale(f, gi);
                    *mi = cmax;
                }
                *si += cpu::exp_sub_inplace(row, *mi) as f64;
            });
        // g += exp-tile [m, wc] · W_chunk [wc, d]
        cpu::matmul_w_into(t, m, &wchunk, g, true);
        c0 = c1;
    }

    let mut nll = Vec::with_capacity(m);
    for i in 0..m {
        nll.push(-(tgt[i] as f64 - max[i] as f64 - sum[i].ln()));
    }
    dh.par_chunks_mut(d)
        .zip(wy.par_chunks_mut(d))
        .enumerate()
        .for_each(|(i, (di, wyi))| {
            w.dequantize_row(targets[i] as usize, wyi);
            let inv = (1.0 / sum[i]) as f32;
            let gi = &g[i * d..(i + 1) * d];
            for k in 0..d {
                di[k] = grad_scale * (gi[k] * inv - wyi[k]);
            }
        });
    NllOutput { nll }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Plain reference: full logits, log-softmax in f64.
    fn reference(h: &[f32], t: &[u32], w: &[f32], v: usize, d: usize) -> Vec<f64> {
        t.iter()
            .enumerate()
            .map(|(i, &y)| {
                let l: Vec<f64> = (0..v)
                    .map(|j| {
                        (0..d)
                            .map(|k| h[i * d + k] as f64 * w[j * d + k] as f64)
                            .sum()
                    })
                    .collect();
                let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + l.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                lse - l[y as usize]
            })
            .collect()
    }

    #[test]
    fn matches_reference_and_finite_differences_across_chunks() {
        // Few rows (the products take the GEMV path) and many (the tiled GEMM).
        for m in [3, 13] {
            check_against_reference(m);
        }
    }

    /// Each row of a many-row call on a quantized weight gets what the row gets alone (the
    /// GEMM's panel decoding against the GEMV's in-register decoding).
    #[test]
    fn many_rows_match_each_row_alone_on_q8_0() {
        let (m, d, v) = (13, 64, CHUNK + 300);
        let mut s = 11u64;
        let w: Vec<f32> = (0..v * d).map(|_| lcg(&mut s)).collect();
        let mut bytes = Vec::new();
        for row in w.chunks_exact(d) {
            crate::quant::dequant::quantize_row(crate::quant::GgmlType::Q8_0, row, &mut bytes);
        }
        let backing = crate::model::weights::Backing::Owned(std::sync::Arc::new(bytes));
        let wq = QMatrix::new("w", crate::quant::GgmlType::Q8_0, v, d, backing, 0).unwrap();
        let h: Vec<f32> = (0..m * d).map(|_| lcg(&mut s) * 4.0).collect();
        let targets: Vec<u32> = (0..m as u32).map(|i| (i * 331) % v as u32).collect();
        let mut dh = vec![0.0; m * d];
        let all = fused_nll(&h, &targets, &wq, 1.0, &mut dh);
        for i in 0..m {
            let mut dh1 = vec![0.0; d];
            let one = fused_nll(&h[i * d..(i + 1) * d], &targets[i..=i], &wq, 1.0, &mut dh1);
            assert!((one.nll[0] - all.nll[i]).abs() < 1e-5 * one.nll[0].max(1.0));
            for (a, b) in dh1.iter().zip(&dh[i * d..(i + 1) * d]) {
                assert!((a - b).abs() < 1e-5, "row {i}: {a} vs {b}");
            }
        }
    }

    fn check_against_reference(m: usize) {
        // vocab spans several chunks so the online rescaling is exercised.
        let (d, v) = (8, 2 * CHUNK + 37);
        let mut s = 7u64;
        let w: Vec<f32> = (0..v * d).map(|_| lcg(&mut s) * 2.0).collect();
        let h: Vec<f32> = (0..m * d).map(|_| lcg(&mut s) * 3.0).collect();
        let fixed = [5u32, (CHUNK + 3) as u32, (v - 1) as u32];
        let targets: Vec<u32> = (0..m).map(|i| fixed[i % 3] - (i / 3) as u32).collect();
        let wq = QMatrix::from_f32("w", v, d, &w);
        let mut dh = vec![0.0; m * d];
        let out = fused_nll(&h, &targets, &wq, 1.0, &mut dh);
        let r = reference(&h, &targets, &w, v, d);
        for (a, b) in out.nll.iter().zip(&r) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "nll {a} vs {b}");
        }
        // Central finite differences of the reference (f64) for every coordinate.
        let eps = 1e-3f32;
        for i in 0..m {
            for k in 0..d {
                let mut hp = h.clone();
                hp[i * d + k] += eps;
                let mut hm = h.clone();
                hm[i * d + k] -= eps;
                let fd = (reference(&hp, &targets, &w, v, d)[i]
                    - reference(&hm, &targets, &w, v, d)[i])
                    / (2.0 * eps as f64);
                let an = dh[i * d + k] as f64;
                assert!(
                    (fd - an).abs() < 2e-3 * fd.abs().max(1.0),
                    "row {i} dim {k}: fd {fd} vs {an}"
                );
            }
        }
        // grad_scale scales the gradient linearly.
        let mut dh2 = vec![0.0; m * d];
        fused_nll(&h, &targets, &wq, 0.5, &mut dh2);
        for (a, b) in dh.iter().zip(&dh2) {
            assert!((a * 0.5 - b).abs() < 1e-6);
        }
    }
}
