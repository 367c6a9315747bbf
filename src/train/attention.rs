//! Causal grouped-query attention over packed segments, forward and backward.
//!
//! Forward stores only the per-(row, head) log-sum-exp; backward recomputes the probabilities
//! from q and k, so no [seq × seq] matrix per head is ever kept between the passes.

use super::batch::Segment;
use crate::cpu;
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn qd(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn kvd(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// out [T, qd] and lse [T, heads] from q [T, qd], k, v [T, kvd].
pub fn attention_forward(
    s: AttnShape,
    segs: &[Segment],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (qd, kvd, hd, nh) = (s.qd(), s.kvd(), s.head_dim, s.n_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (segment, head); each writes its own columns, gathered afterwards.
    let tasks: Vec<(usize, usize)> = (0..segs.len())
        .flat_map(|g| (0..nh).map(move |h| (g, h)))
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(si, head)| {
            let seg = segs[si];
            let kvh = head / s.group();
            let mut o = vec![0.0f32; seg.len * hd]; // [len, hd]
            let mut l = vec![0.0f32; seg.len];
            let mut p = vec![0.0f32; seg.len];
            for i in 0..seg.len {
                let qi = &q[(seg.start + i) * qd + head * hd..][..hd];
                for (j, pj) in p[..=i].iter_mut().enumerate() {
                    *pj = cpu::dot(qi, &k[(seg.start + j) * kvd + kvh * hd..][..hd]) * scale;
                }
                let mx = p[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for pj in p[..=i].iter_mut() {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                let oi = &mut o[i * hd..(i + 1) * hd];
                for (j, &pj) in p[..=i].iter().enumerate() {
                    cpu::axpy(pj / sum, &v[(seg.start + j) * kvd + kvh * hd..][..hd], oi);
                }
                l[i] = mx + sum.ln();
            }
            (o, l)
        })
        .collect();
    for (&(si, head), (o, l)) in tasks.iter().zip(results) {
        let seg = segs[si];
        for i in 0..seg.len {
            out[(seg.start + i) * qd + head * hd..][..hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
            lse[(seg.start + i) * nh + head] = l[i];
        }
    }
}

/// Gradients dq [T, qd], dk, dv [T, kvd] (overwritten) from dout [T, qd].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    s: AttnShape,
    segs: &[Segment],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (qd, kvd, hd, nh) = (s.qd(), s.kvd(), s.head_dim, s.n_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (segment, kv head) so dk/dv of that head are summed by one task in a fixed
    // order (deterministic), over the query heads of its group.
    let tasks: Vec<(usize, usize)> = (0..segs.len())
        .flat_map(|g| (0..s.n_kv_heads).map(move |h| (g, h)))
        .collect();
    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);
    let results: Vec<Grads> = tasks
        .par_iter()
        .map(|&(si, kvh)| {
            let seg = segs[si];
            let n = seg.len;
            let mut dqg = vec![0.0f32; s.group() * n * hd]; // [group, len, hd]
            let mut dkg = vec![0.0f32; n * hd]; // [len, hd]
            let mut dvg = vec![0.0f32; n * hd]; // [len, hd]
            let mut p = vec![0.0f32; n];
            for gi in 0..s.group() {
                let head = kvh * s.group() + gi;
                for i in 0..n {
                    let row = seg.start + i;
                    let qi = &q[row * qd + head * hd..][..hd];
                    let doi = &dout[row * qd + head * hd..][..hd];
                    let oi = &out[row * qd + head * hd..][..hd];
                    let li = lse[row * nh + head];
                    let di = cpu::dot(doi, oi);
                    let dqi = &mut dqg[(gi * n + i) * hd..(gi * n + i + 1) * hd];
                    for j in 0..=i {
                        let kj = &k[(seg.start + j) * kvd + kvh * hd..][..hd];
                        let vj = &v[(seg.start + j) * kvd + kvh * hd..][..hd];
                        p[j] = (cpu::dot(qi, kj) * scale - li).exp();
                        let ds = p[j] * (cpu::dot(doi, vj) - di);
                        cpu::axpy(ds * scale, kj, dqi);
                        cpu::axpy(ds * scale, qi, &mut dkg[j * hd..(j + 1) * hd]);
                        cpu::axpy(p[j], doi, &mut dvg[j * hd..(j + 1) * hd]);
                    }
                }
            }
            (dqg, dkg, dvg)
        })
        .collect();
    for (&(si, kvh), (dqg, dkg, dvg)) in tasks.iter().zip(results) {
        let seg = segs[si];
        let n = seg.len;
        for i in 0..n {
            let row = seg.start + i;
            for gi in 0..s.group() {
                let head = kvh * s.group() + gi;
                dq[row * qd + head * hd..][..hd].copy_from_slice(&dqg[(gi * n + i) * hd..][..hd]);
            }
            dk[row * kvd + kvh * hd..][..hd].copy_from_slice(&dkg[i * hd..(i + 1) * hd]);
            dv[row * kvd + kvh * hd..][..hd].copy_from_slice(&dvg[i * hd..(i + 1) * hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn loss(s: AttnShape, segs: &[Segment], q: &[f32], k: &[f32], v: &[f32], w: &[f32]) -> f64 {
        let t: usize = segs.iter().map(|g| g.len).sum();
        let mut out = vec![0.0; t * s.qd()];
        let mut lse = vec![0.0; t * s.n_heads];
        attention_forward(s, segs, q, k, v, &mut out, &mut lse);
        out.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn backward_matches_finite_differences_and_segments_are_independent() {
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 4,
        };
        let segs = [Segment { start: 0, len: 3 }, Segment { start: 3, len: 4 }];
        let t = 7;
        let mut seed = 3;
        let q = rnd(&mut seed, t * s.qd());
        let k = rnd(&mut seed, t * s.kvd());
        let v = rnd(&mut seed, t * s.kvd());
        let w = rnd(&mut seed, t * s.qd()); // loss = Σ out ⊙ w, so dout = w
        let mut out = vec![0.0; t * s.qd()];
        let mut lse = vec![0.0; t * s.n_heads];
        attention_forward(s, &segs, &q, &k, &v, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention_backward(
            s, &segs, &q, &k, &v, &out, &lse, &w, &mut dq, &mut dk, &mut dv,
        );
        let eps = 1e-2f32;
        for (name, base, grad) in [("q", &q, &dq), ("k", &k, &dk), ("v", &v, &dv)] {
            for idx in 0..base.len() {
                let mut plus = base.clone();
                plus[idx] += eps;
                let mut minus = base.clone();
                minus[idx] -= eps;
                let pick = |x: &Vec<f32>| match name {
                    "q" => loss(s, &segs, x, &k, &v, &w),
                    "k" => loss(s, &segs, &q, x, &v, &w),
                    _ => loss(s, &segs, &q, &k, x, &w),
                };
                let fd = (pick(&plus) - pick(&minus)) / (2.0 * eps as f64);
                assert!(
                    (fd - grad[idx] as f64).abs() < 1e-3,
                    "{name}[{idx}]: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
        // The second segment alone gives the same output rows: nothing leaks across records.
        let seg2 = [Segment { start: 0, len: 4 }];
        let mut out2 = vec![0.0; 4 * s.qd()];
        let mut lse2 = vec![0.0; 4 * s.n_heads];
        attention_forward(
            s,
            &seg2,
            &q[3 * s.qd()..],
            &k[3 * s.kvd()..],
            &v[3 * s.kvd()..],
            &mut out2,
            &mut lse2,
        );
        assert_eq!(&out[3 * s.qd()..], &out2[..]);
    }
}
