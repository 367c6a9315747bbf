//! Causal grouped-query attention for training, tiled and balanced over rayon's threads.
//!
//! Queries are processed in blocks of `BLOCK` rows and keys in tiles of `KEY_TILE`; the query
//! heads that share a kv head are stacked, so each score tile [group·BLOCK, KEY_TILE] is one
//! GEMM that packs K (and V) once for the group. No [seq × seq] matrix per head is ever
//! stored. Forward keeps only the per-(row, head) log-sum-exp (online softmax across key
//! tiles); backward recomputes the probabilities tile by tile.
//!
//! Work split (2 threads must both stay busy on one 256-token record with 9 heads):
//! - forward: one task per (segment, kv head, query block), owning its output rows;
//! - backward: one task per (segment, kv head, query chunk), the chunks cut so that each has
//!   about the same causal work. A task owns dQ of its query rows and accumulates dK, dV of the
//!   keys it sees into its own partial buffer; a second pass sums the partials of each key row
//!   in chunk order. Every output element is thus reduced in a fixed order whatever the thread
//!   count or schedule: results are deterministic.
//!
//! Tasks are handed out largest first to whichever thread is free (`run_tasks`). Buffers come
//! from per-thread free lists (`with_scratch`) that keep their capacity across calls, so the
//! steady state allocates nothing. K and V are copied head-major once per call; query-side rows
//! are gathered per block.
//!
//! The same block kernel serves inference with a KV cache (`attend_head`: the n new queries are
//! the last n of L cached keys, `offset = L − n`).

use super::batch::Segment;
use crate::cpu;
use rayon::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Query rows per tile in training. The query heads of one kv head are stacked (3 × 32 rows
/// for SmolLM2), so K and V panels are still amortized over ~100 rows, while the masked half
/// of the diagonal tile, computed and thrown away, stays small (32 rather than 64 wide: 10%
/// faster at 256 tokens).
pub const BLOCK: usize = 32;
/// Query rows per tile for one head alone (`attend_head`, inference prefill).
const HEAD_BLOCK: usize = 64;
/// Keys per score tile: a [3·BLOCK, KEY_TILE] f32 tile is 192 KiB, so backward's P and dP
/// tiles and the K, V tiles stay in a 1–2 MiB L2.
const KEY_TILE: usize = 512;
/// Most query chunks per (segment, kv head) in backward: each chunk costs a partial dK/dV
/// buffer as long as the keys it sees.
const MAX_CHUNKS: usize = 4;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Score scale (1/√head_dim unless the model says otherwise).
    pub scale: f32,
    /// Sliding window: query i sees keys i − window + 1 ..= i; 0: all keys up to i.
    pub window: usize,
}

impl AttnShape {
    pub fn qd(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kvd(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Plain causal attention scaled by 1/√head_dim.
    pub fn causal(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttnShape {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
        }
    }
}

/// First key a query at position `pos` sees under `window` (0: unlimited).
#[inline]
fn first_key(pos: usize, window: usize) -> usize {
    if window == 0 {
        0
    } else {
        (pos + 1).saturating_sub(window)
    }
}

/// Copy column block `col..col+w` of rows `r0..r0+n` of a row-major [*, stride] matrix.
pub fn gather(src: &[f32], stride: usize, r0: usize, n: usize, col: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * w];
    gather_into(src, stride, r0, n, col, w, &mut out);
    out
}

/// `gather` into `dst` [n, w].
fn gather_into(
    src: &[f32],
    stride: usize,
    r0: usize,
    n: usize,
    col: usize,
    w: usize,
    dst: &mut [f32],
) {
    for (i, d) in dst[..n * w].chunks_exact_mut(w).enumerate() {
        let r = r0 + i;
        copy_row(d, &src[r * stride + col..r * stride + col + w]);
    }
}

/// d ← s for one head's row, in 16-float pieces that the compiler copies inline: a libc
/// memcpy call per 64-float row costs more than the copy itself.
#[inline]
fn copy_row(d: &mut [f32], s: &[f32]) {
    assert_eq!(d.len(), s.len(), "copy_row: lengths");
    let mut dc = d.chunks_exact_mut(16);
    let mut sc = s.chunks_exact(16);
    for (a, b) in (&mut dc).zip(&mut sc) {
        let (a, b): (&mut [f32; 16], &[f32; 16]) = (a.try_into().unwrap(), b.try_into().unwrap());
        *a = *b;
    }
    dc.into_remainder().copy_from_slice(sc.remainder());
}

thread_local! {
    /// Buffers this thread has used before, kept with their capacity. A list, not one buffer:
    /// a task waiting inside a GEMM's fork may run another task on the same thread.
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    /// Task lists, reused likewise.
    static TASKS: RefCell<Vec<Vec<Task>>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` floats of scratch (contents unspecified) from this thread's free list.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // The smallest buffer that fits, else the largest (grown): once every nesting depth has
    // seen its largest request, nothing is allocated any more.
    let mut buf = FREE.with(|l| {
        let mut l = l.borrow_mut();
        let fits = (0..l.len())
            .filter(|&i| l[i].len() >= len)
            .min_by_key(|&i| l[i].len());
        let pick = fits.or_else(|| (0..l.len()).max_by_key(|&i| l[i].len()));
        pick.map(|i| l.swap_remove(i)).unwrap_or_default()
    });
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    FREE.with(|l| l.borrow_mut().push(buf));
    r
}

/// Run `f` on an empty task list from this thread's free list.
fn with_tasks<R>(f: impl FnOnce(&mut Vec<Task>) -> R) -> R {
    let mut list = TASKS.with(|l| l.borrow_mut().pop()).unwrap_or_default();
    list.clear();
    let r = f(&mut list);
    TASKS.with(|l| l.borrow_mut().push(list));
    r
}

/// One unit of parallel work; `head` is always a kv head (its query heads go together).
/// Forward: `b0..b1` is one query block; backward: `b0..b1` a chunk of query blocks and `poff`
/// where its partial dK, dV go; reduction: `poff` where the segment's partials start.
#[derive(Debug, Clone, Copy)]
struct Task {
    seg: usize,
    head: usize,
    b0: usize,
    b1: usize,
    poff: usize,
    /// Causal (query, key) pairs, to order tasks largest first.
    work: usize,
}

/// Run `run(task)` for every task, largest first, on every pool thread that is free: a thread
/// takes the next task when it finishes one, which balances uneven (causal) tasks. Each task
/// writes only its own outputs, so results never depend on which thread ran what.
fn run_tasks(tasks: &mut [Task], run: impl Fn(&Task) + Sync) {
    tasks.sort_unstable_by_key(|t| std::cmp::Reverse(t.work));
    let tasks = &*tasks;
    let next = AtomicUsize::new(0);
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        match tasks.get(i) {
            Some(t) => run(t),
            None => break,
        }
    };
    let workers = rayon::current_num_threads().min(tasks.len());
    if workers <= 1 {
        worker();
    } else {
        (0..workers).into_par_iter().for_each(|_| worker());
    }
}

/// A buffer that parallel tasks write into, each task to its own disjoint ranges.
#[derive(Clone, Copy)]
struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint ranges only (see `write`), and the exclusive borrow held through
// `_buf` keeps every other access out while a `Shared` lives.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// The range `off..off + len`, for one task to write.
    ///
    /// # Safety
    /// No other task touches that range while the returned slice lives.
    unsafe fn range(self, off: usize, len: usize) -> &'a mut [f32] {
        assert!(off + len <= self.len, "attention: range out of bounds");
        // SAFETY: in bounds (asserted) of a buffer borrowed exclusively for 'a; the range
        // belongs to the calling task alone (caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }

    /// Copy `src` to `off..off + src.len()`.
    ///
    /// # Safety
    /// No other task touches that range while this `Shared` is in use.
    unsafe fn write(self, off: usize, src: &[f32]) {
        // SAFETY: the caller's contract.
        copy_row(unsafe { self.range(off, src.len()) }, src);
    }
}

/// Copy k and v [T, kvd] head-major into `kh`, `vh` [n_kv_heads, T, hd], so each head's keys
/// are the contiguous [*, hd] operand the GEMMs take.
fn split_heads(s: AttnShape, k: &[f32], v: &[f32], kh: &mut [f32], vh: &mut [f32]) {
    let (kvd, hd) = (s.kvd(), s.head_dim);
    let t = k.len() / kvd;
    for g in 0..s.n_kv_heads {
        gather_into(
            k,
            kvd,
            0,
            t,
            g * hd,
            hd,
            &mut kh[g * t * hd..(g + 1) * t * hd],
        );
        gather_into(
            v,
            kvd,
            0,
            t,
            g * hd,
            hd,
            &mut vh[g * t * hd..(g + 1) * t * hd],
        );
    }
}

/// Scratch floats `forward_block` needs for `rows` query rows.
fn forward_scratch(rows: usize) -> usize {
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
fn forward_block(
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

    /// Plain softmax attention for one head, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], n: usize, hd: usize) -> Vec<f64> {
        let l = k.len() / hd;
        let off = l - n;
        let mut out = vec![0.0; n * hd];
        for i in 0..n {
            let sc: Vec<f64> = (0..=off + i)
                .map(|j| {
                    (0..hd)
                        .map(|c| q[i * hd + c] as f64 * k[j * hd + c] as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            for (j, x) in sc.iter().enumerate() {
                for c in 0..hd {
                    out[i * hd + c] += (x - mx).exp() / z * v[j * hd + c] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn tiled_head_matches_naive_across_blocks_and_offsets() {
        let hd = 8;
        let mut seed = 11;
        let b = HEAD_BLOCK;
        for (l, n) in [
            (b * 2 + 5, b * 2 + 5),
            (150, 3),
            (70, 70),
            (9, 1),
            (KEY_TILE + 70, 70),
        ] {
            let q = rnd(&mut seed, n * hd);
            let k = rnd(&mut seed, l * hd);
            let v = rnd(&mut seed, l * hd);
            let (o, _) = attend_head(&q, &k, &v, n, hd, (1.0 / (hd as f32).sqrt(), 0));
            for (a, b) in o.iter().zip(naive(&q, &k, &v, n, hd)) {
                assert!((*a as f64 - b).abs() < 1e-5, "L={l} n={n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_and_segments_are_independent() {
        let s = AttnShape::causal(4, 2, 4);
        // The second segment spans two tiles so the blocked backward is exercised.
        let segs = [
            Segment { start: 0, len: 3 },
            Segment {
                start: 3,
                len: BLOCK + 6,
            },
        ];
        let t = 3 + BLOCK + 6;
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
            for idx in (0..base.len()).step_by(7) {
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
                    (fd - grad[idx] as f64).abs() < 2e-3,
                    "{name}[{idx}]: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
        // The second segment alone gives the same output rows: nothing leaks across records.
        let seg2 = [Segment {
            start: 0,
            len: BLOCK + 6,
        }];
        let mut out2 = vec![0.0; (BLOCK + 6) * s.qd()];
        let mut lse2 = vec![0.0; (BLOCK + 6) * s.n_heads];
        attention_forward(
            s,
            &seg2,
            &q[3 * s.qd()..],
            &k[3 * s.kvd()..],
            &v[3 * s.kvd()..],
            &mut out2,
            &mut lse2,
        );
        for (a, b) in out[3 * s.qd()..].iter().zip(&out2) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    /// Plain softmax attention with segments and GQA in f64, forward and backward, written
    /// from the definitions: returns (out, lse, dq, dk, dv) for the loss Σ out ⊙ dout.
    #[allow(clippy::type_complexity)]
    fn reference(
        s: AttnShape,
        segs: &[Segment],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (qd, kvd, hd, nh) = (s.qd(), s.kvd(), s.head_dim, s.n_heads);
        let t = q.len() / qd;
        let scale = s.scale as f64;
        let (mut out, mut lse) = (vec![0.0; t * qd], vec![0.0; t * nh]);
        let (mut dq, mut dk, mut dv) = (vec![0.0; t * qd], vec![0.0; t * kvd], vec![0.0; t * kvd]);
        let qa = |r: usize, h: usize, c: usize| q[r * qd + h * hd + c] as f64;
        let ka = |r: usize, g: usize, c: usize| k[r * kvd + g * hd + c] as f64;
        let va = |r: usize, g: usize, c: usize| v[r * kvd + g * hd + c] as f64;
        let da = |r: usize, h: usize, c: usize| dout[r * qd + h * hd + c] as f64;
        for seg in segs {
            for h in 0..nh {
                let g = h / s.group();
                for i in seg.start..seg.start + seg.len {
                    let lo = if s.window == 0 {
                        seg.start
                    } else {
                        (i + 1).saturating_sub(s.window).max(seg.start)
                    };
                    let keys = lo..=i;
                    let sc: Vec<f64> = keys
                        .clone()
                        .map(|j| (0..hd).map(|c| qa(i, h, c) * ka(j, g, c)).sum::<f64>() * scale)
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                    lse[i * nh + h] = mx + z.ln();
                    let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
                    for (pj, j) in p.iter().zip(keys.clone()) {
                        for c in 0..hd {
                            out[i * qd + h * hd + c] += pj * va(j, g, c);
                            dv[j * kvd + g * hd + c] += pj * da(i, h, c);
                        }
                    }
                    // dP_ij = dO_i · v_j; dS = P ⊙ (dP − Σ_j P dP)
                    let dp: Vec<f64> = keys
                        .clone()
                        .map(|j| (0..hd).map(|c| da(i, h, c) * va(j, g, c)).sum::<f64>())
                        .collect();
                    let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for ((pj, dpj), j) in p.iter().zip(&dp).zip(keys) {
                        let ds = pj * (dpj - dsum) * scale;
                        for c in 0..hd {
                            dq[i * qd + h * hd + c] += ds * ka(j, g, c);
                            dk[j * kvd + g * hd + c] += ds * qa(i, h, c);
                        }
                    }
                }
            }
        }
        (out, lse, dq, dk, dv)
    }

    /// |got − want| ≤ 1e-5 · max(|want|, mean |want|) element by element (the mean guards
    /// entries that cancel to near zero).
    fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mean = want.iter().map(|x| x.abs()).sum::<f64>() / want.len().max(1) as f64;
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            let tol = 1e-5 * b.abs().max(mean);
            assert!(
                (*a as f64 - b).abs() <= tol,
                "{what}[{i}]: {a} vs reference {b} (tolerance {tol:e})"
            );
        }
    }

    fn run_all(
        s: AttnShape,
        segs: &[Segment],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
    ) -> [Vec<f32>; 5] {
        let t = q.len() / s.qd();
        // Start from garbage: every element of the outputs must be written.
        let (mut out, mut lse) = (vec![7.0; t * s.qd()], vec![7.0; t * s.n_heads]);
        attention_forward(s, segs, q, k, v, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![7.0; q.len()], vec![7.0; k.len()], vec![7.0; v.len()]);
        attention_backward(
            s, segs, q, k, v, &out, &lse, dout, &mut dq, &mut dk, &mut dv,
        );
        [out, lse, dq, dk, dv]
    }

    #[test]
    fn forward_and_backward_match_scalar_reference_on_segment_layouts() {
        // Lengths off every tile size (BLOCK, KEY_TILE) and chunk count: single rows, a
        // partial block, several chunks, more keys than one key tile.
        let layouts: [&[usize]; 5] = [
            &[1],
            &[37],
            &[BLOCK * 3 + 5, 2, BLOCK + 1],
            &[KEY_TILE + BLOCK + 9],
            &[5, KEY_TILE - 3, 1, 70],
        ];
        // Plain causal, then scaled and windowed (Gemma's local layers): windows inside a
        // block, across blocks and across key tiles.
        let windowed = |w: usize| AttnShape {
            scale: 0.3,
            window: w,
            ..AttnShape::causal(6, 2, 8)
        };
        let shapes = [
            AttnShape::causal(6, 2, 8),
            AttnShape::causal(2, 2, 16),
            windowed(5),
            windowed(BLOCK + 3),
            windowed(KEY_TILE + 20),
        ];
        let mut seed = 5;
        for sh in shapes {
            for lens in layouts {
                let mut segs = Vec::new();
                let mut start = 0;
                for &len in lens {
                    segs.push(Segment { start, len });
                    start += len;
                }
                let t = start;
                let q = rnd(&mut seed, t * sh.qd());
                let k = rnd(&mut seed, t * sh.kvd());
                let v = rnd(&mut seed, t * sh.kvd());
                let dout = rnd(&mut seed, t * sh.qd());
                let got = run_all(sh, &segs, &q, &k, &v, &dout);
                let want = reference(sh, &segs, &q, &k, &v, &dout);
                let want = [want.0, want.1, want.2, want.3, want.4];
                for ((name, g), w) in ["out", "lse", "dq", "dk", "dv"].iter().zip(&got).zip(&want) {
                    assert_close(&format!("{sh:?} {lens:?} {name}"), g, w);
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let s = AttnShape::causal(9, 3, 64);
        let segs = [
            Segment { start: 0, len: 300 },
            Segment { start: 300, len: 3 },
            Segment {
                start: 303,
                len: KEY_TILE + 77,
            },
        ];
        let t = 303 + KEY_TILE + 77;
        let mut seed = 9;
        let q = rnd(&mut seed, t * s.qd());
        let k = rnd(&mut seed, t * s.kvd());
        let v = rnd(&mut seed, t * s.kvd());
        let dout = rnd(&mut seed, t * s.qd());
        let runs: Vec<[Vec<f32>; 5]> = [1, 2, 3]
            .iter()
            .map(|&n| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap();
                pool.install(|| run_all(s, &segs, &q, &k, &v, &dout))
            })
            .collect();
        for r in &runs[1..] {
            for (a, b) in r.iter().zip(&runs[0]) {
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }
}
