//! Reference only: the training attention as it was before issue 4 (one task per (segment,
//! head) forward, per (segment, kv head) backward, fresh Vecs everywhere). Nothing in the crate
//! uses it; `benches/attention.rs` times it beside the current code as the `baseline` row, so
//! the speed-up is measured in one run on one machine. Left as it was: a fixed point to compare
//! against, not code to maintain or fix.

use edge_sft::cpu;
use edge_sft::train::attention::AttnShape;
use edge_sft::train::batch::Segment;
use rayon::prelude::*;

/// Query rows per tile.
const BLOCK: usize = 64;

/// Copy column block `col..col+w` of rows `r0..r0+n` of a row-major [*, stride] matrix.
pub fn gather(src: &[f32], stride: usize, r0: usize, n: usize, col: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * w);
    for r in r0..r0 + n {
        out.extend_from_slice(&src[r * stride + col..r * stride + col + w]);
    }
    out
}

/// Masked, scaled scores → probabilities in place for a tile of rows `i0..i0+bq` of queries at
/// key offset `offset`; returns nothing, fills `lse` for those rows when given.
fn softmax_tile(
    s: &mut [f32],
    bq: usize,
    kend: usize,
    i0: usize,
    offset: usize,
    scale: f32,
    lse: Option<&mut [f32]>,
) {
    let mut lse = lse;
    for r in 0..bq {
        let visible = offset + i0 + r + 1;
        let row = &mut s[r * kend..(r + 1) * kend];
        for v in row[..visible].iter_mut() {
            *v *= scale;
        }
        let mx = row[..visible]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in row[..visible].iter_mut() {
            *v = (*v - mx).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row[..visible].iter_mut() {
            *v *= inv;
        }
        row[visible..].fill(0.0);
        if let Some(l) = lse.as_deref_mut() {
            l[r] = mx + sum.ln();
        }
    }
}

/// One head of one sequence: q [n, hd] against k, v [L, hd] with queries at `offset = L − n`.
/// Returns out [n, hd] and lse [n].
pub fn attend_head(q: &[f32], k: &[f32], v: &[f32], n: usize, hd: usize) -> (Vec<f32>, Vec<f32>) {
    let l = k.len() / hd;
    let offset = l - n;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; n * hd];
    let mut lse = vec![0.0f32; n];
    let mut s = Vec::new();
    for i0 in (0..n).step_by(BLOCK) {
        let bq = BLOCK.min(n - i0);
        let kend = offset + i0 + bq;
        s.resize(bq * kend, 0.0);
        cpu::matmul_f32_nt(
            &q[i0 * hd..(i0 + bq) * hd],
            &k[..kend * hd],
            &mut s,
            bq,
            hd,
            kend,
            false,
        );
        softmax_tile(
            &mut s,
            bq,
            kend,
            i0,
            offset,
            scale,
            Some(&mut lse[i0..i0 + bq]),
        );
        cpu::matmul_f32_nn(
            &s,
            &v[..kend * hd],
            &mut out[i0 * hd..(i0 + bq) * hd],
            bq,
            kend,
            hd,
            false,
        );
    }
    (out, lse)
}

/// Training forward: out [T, qd] and lse [T, heads] from q [T, qd], k, v [T, kvd], with
/// attention kept inside each segment.
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
    let tasks: Vec<(usize, usize)> = (0..segs.len())
        .flat_map(|g| (0..nh).map(move |h| (g, h)))
        .collect();
    let results: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(si, head)| {
            let seg = segs[si];
            let kvh = head / s.group();
            let qh = gather(q, qd, seg.start, seg.len, head * hd, hd);
            let kh = gather(k, kvd, seg.start, seg.len, kvh * hd, hd);
            let vh = gather(v, kvd, seg.start, seg.len, kvh * hd, hd);
            attend_head(&qh, &kh, &vh, seg.len, hd)
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
    // One task per (segment, kv head): dk/dv of that head are summed by one task in a fixed
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
            let kh = gather(k, kvd, seg.start, n, kvh * hd, hd); // [n, hd]
            let vh = gather(v, kvd, seg.start, n, kvh * hd, hd); // [n, hd]
            let mut dqg = vec![0.0f32; s.group() * n * hd]; // [group, n, hd]
            let mut dkh = vec![0.0f32; n * hd];
            let mut dvh = vec![0.0f32; n * hd];
            let (mut p, mut dp) = (Vec::new(), Vec::new());
            for gi in 0..s.group() {
                let head = kvh * s.group() + gi;
                let qh = gather(q, qd, seg.start, n, head * hd, hd);
                let oh = gather(out, qd, seg.start, n, head * hd, hd);
                let doh = gather(dout, qd, seg.start, n, head * hd, hd);
                for i0 in (0..n).step_by(BLOCK) {
                    let bq = BLOCK.min(n - i0);
                    let kend = i0 + bq;
                    let (qb, dob) = (&qh[i0 * hd..kend * hd], &doh[i0 * hd..kend * hd]);
                    // P = exp(scale·QKᵀ − lse), masked: [bq, kend]
                    p.resize(bq * kend, 0.0);
                    cpu::matmul_f32_nt(qb, &kh[..kend * hd], &mut p, bq, hd, kend, false);
                    for r in 0..bq {
                        let li = lse[(seg.start + i0 + r) * nh + head];
                        let row = &mut p[r * kend..(r + 1) * kend];
                        let visible = i0 + r + 1;
                        for x in row[..visible].iter_mut() {
                            *x = (*x * scale - li).exp();
                        }
                        row[visible..].fill(0.0);
                    }
                    // dP = dO Vᵀ; dS = P ⊙ (dP − rowsum(dO ⊙ O)), folded with the scale.
                    dp.resize(bq * kend, 0.0);
                    cpu::matmul_f32_nt(dob, &vh[..kend * hd], &mut dp, bq, hd, kend, false);
                    for r in 0..bq {
                        let di = cpu::dot(
                            &dob[r * hd..(r + 1) * hd],
                            &oh[(i0 + r) * hd..(i0 + r + 1) * hd],
                        );
                        for c in 0..kend {
                            dp[r * kend + c] = p[r * kend + c] * (dp[r * kend + c] - di) * scale;
                        }
                    }
                    // dV += Pᵀ dO; dQ = dS K; dK += dSᵀ Q
                    cpu::matmul_f32_tn(&p, dob, &mut dvh[..kend * hd], kend, bq, hd, true);
                    let dqb = &mut dqg[(gi * n + i0) * hd..(gi * n + kend) * hd];
                    cpu::matmul_f32_nn(&dp, &kh[..kend * hd], dqb, bq, kend, hd, false);
                    cpu::matmul_f32_tn(&dp, qb, &mut dkh[..kend * hd], kend, bq, hd, true);
                }
            }
            (dqg, dkh, dvh)
        })
        .collect();
    for (&(si, kvh), (dqg, dkh, dvh)) in tasks.iter().zip(results) {
        let seg = segs[si];
        let n = seg.len;
        for i in 0..n {
            let row = seg.start + i;
            for gi in 0..s.group() {
                let head = kvh * s.group() + gi;
                dq[row * qd + head * hd..][..hd].copy_from_slice(&dqg[(gi * n + i) * hd..][..hd]);
            }
            dk[row * kvd + kvh * hd..][..hd].copy_from_slice(&dkh[i * hd..(i + 1) * hd]);
            dv[row * kvd + kvh * hd..][..hd].copy_from_slice(&dvh[i * hd..(i + 1) * hd]);
        }
    }
}
