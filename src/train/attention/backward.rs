//! Attention backward: probabilities recomputed tile by tile from the forward's log-sum-exp,
//! one task per chunk of query blocks with its own partial dK, dV (`backward_chunk`), then the
//! partials of each key row summed in chunk order (`attention_backward`).

use super::schedule::{run_tasks, with_scratch, with_tasks, Shared, Task};
use super::shape::AttnShape;
use super::tiling::{first_key, gather_into, split_heads, BLOCK, KEY_TILE};
use crate::cpu;
use crate::train::batch::Segment;

/// Most query chunks per (segment, kv head) in backward: each chunk costs a partial dK/dV
/// buffer as long as the keys it sees.
const MAX_CHUNKS: usize = 4;

/// Query-block boundaries of the backward chunks of an `n`-row segment: one block per chunk
/// up to MAX_CHUNKS blocks, else MAX_CHUNKS chunks of about equal causal work (blocks 0..b
/// hold ∝ b² pairs, so boundaries sit at nb·√(c/C)). Fixed by `n` alone, so the reduction
/// order never depends on the thread count.
fn chunk_bounds(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let nb = n.div_ceil(BLOCK);
    let c = nb.min(MAX_CHUNKS);
    let bound = move |i: usize| {
        if nb <= MAX_CHUNKS {
            i
        } else {
            ((nb as f64) * (i as f64 / c as f64).sqrt()).round() as usize
        }
    };
    (0..c)
        .map(move |i| (bound(i), bound(i + 1)))
        .filter(|(b0, b1)| b1 > b0)
}

/// Scratch floats `backward_chunk` needs besides the partials.
fn backward_scratch(s: AttnShape) -> usize {
    let rows = s.group() * BLOCK;
    3 * rows * s.head_dim + 2 * rows + 2 * rows * KEY_TILE
}

/// Backward of one chunk of query blocks `b0..b1` of kv head `g`: writes dq of those rows for
/// the group's heads, and dK, dV of keys 0..end into `dkp`, `dvp` [end, hd] (partial: these
/// queries' share only). `kseg`, `vseg` [n, hd] are the segment's keys of head g. The group's
/// heads are stacked into one [group·bq, *] operand per block, as in `forward_block`.
#[allow(clippy::too_many_arguments)]
fn backward_chunk(
    s: AttnShape,
    seg: Segment,
    g: usize,
    (b0, b1): (usize, usize),
    (kseg, vseg): (&[f32], &[f32]),
    (q, out, lse, dout): (&[f32], &[f32], &[f32], &[f32]),
    dq: Shared,
    (dkp, dvp): (&mut [f32], &mut [f32]),
    scratch: &mut [f32],
) {
    let (qd, hd, nh, group) = (s.qd(), s.head_dim, s.n_heads, s.group());
    let scale = s.scale;
    let rmax = group * BLOCK;
    let (qs, rest) = scratch.split_at_mut(rmax * hd); // queries [rows, hd]
    let (dob, rest) = rest.split_at_mut(rmax * hd); // dO [rows, hd]
    let (dqb, rest) = rest.split_at_mut(rmax * hd); // dQ [rows, hd], O [rows, hd] before
    let (di, rest) = rest.split_at_mut(rmax); // rowsum(dO ⊙ O)
    let (li, rest) = rest.split_at_mut(rmax); // lse
    let (p, dp) = rest.split_at_mut(rmax * KEY_TILE); // P, then dP and dS [rows, kt]
    dkp.fill(0.0);
    dvp.fill(0.0);
    let heads = g * group..(g + 1) * group;
    for b in b0..b1 {
        let i0 = b * BLOCK;
        let bq = BLOCK.min(seg.len - i0);
        let rows = group * bq;
        let kend = i0 + bq;
        let (qs, dob, dqb) = (
            &mut qs[..rows * hd],
            &mut dob[..rows * hd],
            &mut dqb[..rows * hd],
        );
        let row0 = seg.start + i0;
        for (gi, head) in heads.clone().enumerate() {
            let at = gi * bq * hd..(gi + 1) * bq * hd;
            gather_into(q, qd, row0, bq, head * hd, hd, &mut qs[at.clone()]);
            gather_into(dout, qd, row0, bq, head * hd, hd, &mut dob[at.clone()]);
            gather_into(out, qd, row0, bq, head * hd, hd, &mut dqb[at]);
            for r in 0..bq {
                let x = gi * bq + r;
                di[x] = cpu::dot(&dob[x * hd..(x + 1) * hd], &dqb[x * hd..(x + 1) * hd]);
                li[x] = lse[(row0 + r) * nh + head];
            }
        }
        let kstart = first_key(i0, s.window) / KEY_TILE * KEY_TILE;
        for j0 in (kstart..kend).step_by(KEY_TILE) {
            let kt = KEY_TILE.min(kend - j0);
            let (kt_k, kt_v) = (
                &kseg[j0 * hd..(j0 + kt) * hd],
                &vseg[j0 * hd..(j0 + kt) * hd],
            );
            // P = exp(scale·QKᵀ − lse), masked: [rows, kt]
            let p = &mut p[..rows * kt];
            cpu::matmul_f32_nt(qs, kt_k, p, rows, hd, kt, false);
            for (x, row) in p.chunks_exact_mut(kt).enumerate() {
                let pos = i0 + x % bq;
                let vis = (pos + 1).saturating_sub(j0).min(kt);
                let lo = first_key(pos, s.window).saturating_sub(j0).min(vis);
                cpu::scale(scale, &mut row[lo..vis]);
                cpu::exp_sub_inplace(&mut row[lo..vis], li[x]);
                row[..lo].fill(0.0);
                row[vis..].fill(0.0);
            }
            // dP = dO Vᵀ; dS' = P ⊙ (dP − D) (dS = scale·dS', scaled at the end)
            let dp = &mut dp[..rows * kt];
            cpu::matmul_f32_nt(dob, kt_v, dp, rows, hd, kt, false);
            for (x, (dr, pr)) in dp.chunks_exact_mut(kt).zip(p.chunks_exact(kt)).enumerate() {
                let d = di[x];
                for (y, &pv) in dr.iter_mut().zip(pr) {
                    *y = pv * (*y - d);
                }
            }
            // dV += Pᵀ dO; dK += dS'ᵀ Q; dQ (+)= dS' K
            let (dvt, dkt) = (
                &mut dvp[j0 * hd..(j0 + kt) * hd],
                &mut dkp[j0 * hd..(j0 + kt) * hd],
            );
            cpu::matmul_f32_tn(p, dob, dvt, kt, rows, hd, true);
            cpu::matmul_f32_tn(dp, qs, dkt, kt, rows, hd, true);
            cpu::matmul_f32_nn(dp, kt_k, dqb, rows, kt, hd, j0 > kstart);
        }
        cpu::scale(scale, dqb);
        for (gi, head) in heads.clone().enumerate() {
            for r in 0..bq {
                let x = gi * bq + r;
                // SAFETY: rows i0..i0+bq of this segment at the group's heads' columns
                // belong to this task only (its chunk of query blocks).
                unsafe { dq.write((row0 + r) * qd + head * hd, &dqb[x * hd..(x + 1) * hd]) };
            }
        }
    }
    cpu::scale(scale, dkp);
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
    let (kvd, hd) = (s.kvd(), s.head_dim);
    let t = k.len() / kvd;
    let (dq, dk, dv) = (Shared::new(dq), Shared::new(dk), Shared::new(dv));
    with_tasks(|tasks| {
        with_tasks(|sums| {
            // Chunk tasks, each with a partial [end, hd] dK then dV at `poff`; the chunks of
            // one (segment, kv head) lie in chunk order from the `poff` of its sum task.
            let mut plen = 0;
            for (si, seg) in segs.iter().enumerate() {
                for g in 0..s.n_kv_heads {
                    let work = seg.len;
                    sums.push(Task {
                        seg: si,
                        head: g,
                        b0: 0,
                        b1: 0,
                        poff: plen,
                        work,
                    });
                    for (b0, b1) in chunk_bounds(seg.len) {
                        let end = (b1 * BLOCK).min(seg.len);
                        let start = b0 * BLOCK;
                        let work = (end * end - start * start) / 2 * s.group();
                        tasks.push(Task {
                            seg: si,
                            head: g,
                            b0,
                            b1,
                            poff: plen,
                            work,
                        });
                        plen += 2 * end * hd;
                    }
                }
            }
            with_scratch(2 * t * kvd + plen, |buf| {
                let (kh, rest) = buf.split_at_mut(t * kvd);
                let (vh, partial) = rest.split_at_mut(t * kvd);
                split_heads(s, k, v, kh, vh);
                let (kh, vh) = (&*kh, &*vh);
                let parts = Shared::new(partial);
                run_tasks(tasks, |task| {
                    let seg = segs[task.seg];
                    let g = task.head;
                    let end = (task.b1 * BLOCK).min(seg.len);
                    let keys = (g * t + seg.start) * hd..(g * t + seg.start + seg.len) * hd;
                    // SAFETY: poff..poff + 2·end·hd was reserved for this task alone.
                    let part = unsafe { parts.range(task.poff, 2 * end * hd) };
                    let (dkp, dvp) = part.split_at_mut(end * hd);
                    with_scratch(backward_scratch(s), |rest| {
                        backward_chunk(
                            s,
                            seg,
                            g,
                            (task.b0, task.b1),
                            (&kh[keys.clone()], &vh[keys]),
                            (q, out, lse, dout),
                            dq,
                            (dkp, dvp),
                            rest,
                        );
                    });
                });
                let partial = &*partial;
                // dK, dV of each key row = Σ over the chunks that saw it, in chunk order.
                run_tasks(sums, |task| {
                    let seg = segs[task.seg];
                    let n = seg.len;
                    with_scratch(2 * n * hd, |acc| {
                        acc.fill(0.0);
                        let (ak, av) = acc.split_at_mut(n * hd);
                        let mut off = task.poff;
                        for (_, b1) in chunk_bounds(n) {
                            let end = (b1 * BLOCK).min(n);
                            let pk = &partial[off..off + end * hd];
                            let pv = &partial[off + end * hd..off + 2 * end * hd];
                            ak[..end * hd].iter_mut().zip(pk).for_each(|(a, b)| *a += b);
                            av[..end * hd].iter_mut().zip(pv).for_each(|(a, b)| *a += b);
                            off += 2 * end * hd;
                        }
                        let col = task.head * hd;
                        for j in 0..n {
                            let at = (seg.start + j) * kvd + col;
                            // SAFETY: this segment's rows at kv head `task.head`'s columns
                            // belong to this task only.
                            unsafe {
                                dk.write(at, &ak[j * hd..(j + 1) * hd]);
                                dv.write(at, &av[j * hd..(j + 1) * hd]);
                            }
                        }
                    });
                });
            });
        });
    });
}
