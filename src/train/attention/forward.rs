//! Attention forward: one query block against its visible keys with an online softmax over
//! key tiles (`forward_block`), for one head with a KV cache (`attend_head`) and for training
//! over segments, kv heads and query blocks (`attention_forward`).

use super::schedule::{run_tasks, with_scratch, with_tasks, Shared, Task};
use super::shape::AttnShape;
use super::tiling::{first_key, gather_into, split_heads, BLOCK, HEAD_BLOCK, KEY_TILE};
use crate::cpu;
use crate::train::batch::Segment;

/// Scratch floats `forward_block` needs for `rows` query rows.
pub(super) fn forward_scratch(rows: usize) -> usize {
    rows * KEY_TILE + 2 * rows
}

/// One query block against its visible keys, online softmax over key tiles.
/// q [rows, hd] stacks `rows / bq` heads' blocks of `bq` rows that share these keys (the query
/// heads of one kv head), so each GEMM packs K and V once for all of them; k, v
/// [≥ first + bq, hd]; row r of a block sees keys first_key(first + r)..=first + r (all from 0
/// without a window). Scores are scaled by `scale` after the product, like the reference
/// implementations do. Writes o [rows, hd] and lse [rows] (of the scaled scores). Key tiles
/// that no row of the block sees are skipped.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (rows, bq): (usize, usize),
    first: usize,
    hd: usize,
    (scale, window): (f32, usize),
    o: &mut [f32],
    lse: &mut [f32],
    scratch: &mut [f32],
) {
    let kend = first + bq;
    let (st, rest) = scratch.split_at_mut(rows * KEY_TILE);
    let (m, l) = rest.split_at_mut(rows); // running max and sum per row
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let kstart = first_key(first, window) / KEY_TILE * KEY_TILE;
    for j0 in (kstart..kend).step_by(KEY_TILE) {
        let kt = KEY_TILE.min(kend - j0);
        let st = &mut st[..rows * kt]; // scores, then probabilities [rows, kt]
        cpu::matmul_f32_nt(q, &k[j0 * hd..(j0 + kt) * hd], st, rows, hd, kt, false);
        for (r, row) in st.chunks_exact_mut(kt).enumerate() {
            let pos = first + r % bq;
            let vis = (pos + 1).saturating_sub(j0).min(kt);
            let lo = first_key(pos, window).saturating_sub(j0).min(vis);
            if lo < vis {
                let part = &mut row[lo..vis];
                cpu::scale(scale, part);
                if j0 == kstart {
                    m[r] = cpu::max(part);
                    l[r] = cpu::exp_sub_inplace(part, m[r]);
                } else {
                    let m_new = m[r].max(cpu::max(part));
                    // A row that saw no key yet has m = −∞ and o = 0: alpha = 0 is harmless.
                    let alpha = (m[r] - m_new).exp();
                    l[r] = l[r] * alpha + cpu::exp_sub_inplace(part, m_new);
                    if alpha != 1.0 {
                        cpu::scale(alpha, &mut o[r * hd..(r + 1) * hd]);
                    }
                    m[r] = m_new;
                }
            }
            row[..lo].fill(0.0);
            row[vis..].fill(0.0);
        }
        let ob = &mut o[..rows * hd];
        let acc = j0 > kstart;
        cpu::matmul_f32_nn(st, &v[j0 * hd..(j0 + kt) * hd], ob, rows, kt, hd, acc);
    }
    for r in 0..rows {
        cpu::scale(1.0 / l[r], &mut o[r * hd..(r + 1) * hd]);
        lse[r] = m[r] + l[r].ln();
    }
}

/// One head of one sequence: q [n, hd] against k, v [L, hd] with queries at `offset = L − n`,
/// scores scaled by `scale`, keys limited to `window` (0: none). Returns out [n, hd], lse [n].
pub fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    hd: usize,
    (scale, window): (f32, usize),
) -> (Vec<f32>, Vec<f32>) {
    let l = k.len() / hd;
    let offset = l - n;
    let mut out = vec![0.0f32; n * hd];
    let mut lse = vec![0.0f32; n];
    let bmax = HEAD_BLOCK.min(n);
    with_scratch(forward_scratch(bmax), |buf| {
        for i0 in (0..n).step_by(HEAD_BLOCK) {
            let bq = HEAD_BLOCK.min(n - i0);
            let qb = &q[i0 * hd..(i0 + bq) * hd];
            let (o, ls) = (&mut out[i0 * hd..(i0 + bq) * hd], &mut lse[i0..i0 + bq]);
            let sw = (scale, window);
            forward_block(qb, k, v, (bq, bq), offset + i0, hd, sw, o, ls, buf);
        }
    });
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
    let (qd, hd, nh) = (s.qd(), s.head_dim, s.n_heads);
    let sw = (s.scale, s.window);
    let t = k.len() / s.kvd();
    let (out, lse_all) = (Shared::new(out), Shared::new(lse));
    with_scratch(2 * t * s.kvd(), |kv| {
        let (kh, vh) = kv.split_at_mut(t * s.kvd());
        split_heads(s, k, v, kh, vh);
        let (kh, vh) = (&*kh, &*vh);
        with_tasks(|tasks| {
            for (si, seg) in segs.iter().enumerate() {
                for g in 0..s.n_kv_heads {
                    for b in 0..seg.len.div_ceil(BLOCK) {
                        let kend = ((b + 1) * BLOCK).min(seg.len);
                        let (b0, b1, poff) = (b, b + 1, 0);
                        let work = kend * (kend - b * BLOCK);
                        tasks.push(Task {
                            seg: si,
                            head: g,
                            b0,
                            b1,
                            poff,
                            work,
                        });
                    }
                }
            }
            run_tasks(tasks, |task| {
                let seg = segs[task.seg];
                let (g, i0) = (task.head, task.b0 * BLOCK);
                let bq = BLOCK.min(seg.len - i0);
                let rows = s.group() * bq; // the group's heads stacked, [group, bq]
                let kseg = &kh[(g * t + seg.start) * hd..(g * t + seg.start + seg.len) * hd];
                let vseg = &vh[(g * t + seg.start) * hd..(g * t + seg.start + seg.len) * hd];
                with_scratch(2 * rows * hd + rows + forward_scratch(rows), |buf| {
                    let (qs, rest) = buf.split_at_mut(rows * hd);
                    let (o, rest) = rest.split_at_mut(rows * hd);
                    let (ls, rest) = rest.split_at_mut(rows);
                    let heads = g * s.group()..(g + 1) * s.group();
                    for (gi, head) in heads.clone().enumerate() {
                        let dst = &mut qs[gi * bq * hd..(gi + 1) * bq * hd];
                        gather_into(q, qd, seg.start + i0, bq, head * hd, hd, dst);
                    }
                    forward_block(qs, kseg, vseg, (rows, bq), i0, hd, sw, o, ls, rest);
                    for (gi, head) in heads.enumerate() {
                        for r in 0..bq {
                            let (row, x) = (seg.start + i0 + r, gi * bq + r);
                            // SAFETY: rows i0..i0+bq of this segment at the group's heads'
                            // columns belong to this task only.
                            unsafe {
                                out.write(row * qd + head * hd, &o[x * hd..(x + 1) * hd]);
                                lse_all.write(row * nh + head, &ls[x..x + 1]);
                            }
                        }
                    }
                });
            });
        });
    });
}
