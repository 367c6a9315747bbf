//! `decode_step` for several threads without a fork-join per product: one job per token on
//! every thread of the pool (`rayon::broadcast`), whose threads split each product's rows
//! statically and meet at spinning barriers
//! (as llama.cpp's threads do). A rayon fork-join costs little while the pool is warm, but its
//! idle workers `sched_yield` and then sleep: on a busy machine each of the ~150 joins of a
//! token then waits for a time slice. Every thread keeps its own copy of the small vectors
//! (residual stream, norms, quantized inputs) and recomputes them, so the only shared data
//! are the products' outputs, exchanged through atomics between barriers. Not for LoRA
//! adapters (`decode_step` runs those).

use super::config::Activation;
use super::forward::KvCache;
use super::weights::QMatrix;
use super::Model;
use crate::cpu;
use crate::cpu::gemv_q8::{matvec_rows, prepare, QuantX};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::RwLock;

/// Spins before a waiting thread starts yielding its CPU.
const SPINS: u32 = 1 << 14;

fn spin_limit() -> u32 {
    static L: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        std::env::var("EDGE_SFT_SPINS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SPINS)
    })
}

/// A barrier whose waiters spin (then yield), so a wake-up costs no scheduler round trip.
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        let limit = spin_limit();
        while self.generation.load(Ordering::Acquire) == g {
            if spins < limit {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// An f32 vector that the team's threads write (disjoint parts) and read (all of it, after a
/// barrier).
struct Shared(Vec<AtomicU32>);

impl Shared {
    fn new(n: usize) -> Self {
        Shared((0..n).map(|_| AtomicU32::new(0)).collect())
    }
    fn put(&self, at: usize, v: &[f32]) {
        for (a, x) in self.0[at..at + v.len()].iter().zip(v) {
            a.store(x.to_bits(), Ordering::Relaxed);
        }
    }
    fn get(&self, out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(&self.0) {
            *o = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }
}

/// Thread t's share of 0..n out of `threads`, in whole groups of 4 rows.
fn share(n: usize, t: usize, threads: usize) -> Range<usize> {
    let groups = n.div_ceil(4);
    let at = |i: usize| (groups * i / threads * 4).min(n);
    at(t)..at(t + 1)
}

/// One thread's copies of the small vectors.
struct Local {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    out: Vec<f32>,
    scores: Vec<f32>,
    qx: QuantX,
}

impl Model {
    /// `decode_step` + `decode_logits` in one go on `threads` threads (≥ 2), no LoRA: leaves
    /// the final-normed hidden state in `hidden` and the logits in `logits`. Same results as
    /// `decode_step` (each output row computed by the same kernel, whatever the split).
    pub(crate) fn decode_step_team(
        &self,
        token: u32,
        cache: &mut KvCache,
        threads: usize,
        hidden: &mut [f32],
        logits: &mut [f32],
    ) -> crate::error::Result<()> {
        let c = &self.config;
        let (d, hd, qd, kvd, ffn) = (c.d_model, c.head_dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let pos = cache.len;
        let mut x0 = vec![0.0f32; d];
        self.embed_into(&[token], &mut x0)?;
        let ropes = self.rope_tables(&[pos]);
        let bar = SpinBarrier::new(threads);
        let (sq, sk, sv) = (Shared::new(qd), Shared::new(kvd), Shared::new(kvd));
        let (satt, so) = (Shared::new(qd), Shared::new(d));
        let (sg, su) = (Shared::new(ffn), Shared::new(ffn));
        let kv = RwLock::new(cache);
        let bad = AtomicBool::new(false);
        let vocab = c.vocab_size;
        let mut parts: Vec<&mut [f32]> = Vec::with_capacity(threads);
        let mut rest = &mut *logits;
        for t in 0..threads {
            let r = share(vocab, t, threads);
            let (a, b) = rest.split_at_mut(r.len());
            parts.push(a);
            rest = b;
        }
        let hidden_out = std::sync::Mutex::new(hidden);
        let run = |t: usize, lg: &mut [f32]| {
            let z = |n: usize| vec![0.0f32; n];
            let mut l = Local {
                x: x0.clone(),
                h: z(d),
                q: z(qd),
                k: z(kvd),
                v: z(kvd),
                att: z(qd),
                o: z(d),
                gate: z(ffn),
                up: z(ffn),
                act: z(ffn),
                out: Vec::new(),
                scores: Vec::new(),
                qx: QuantX::default(),
            };
            let part = |x: &[f32], qx: &QuantX, w: &QMatrix, dst: &Shared, out: &mut Vec<f32>| {
                let r = share(dst.0.len(), t, threads);
                out.resize(r.len(), 0.0);
                matvec_rows(x, qx, w, r.clone(), out);
                dst.put(r.start, out);
            };
            for (li, ly) in self.layers.iter().enumerate() {
                cpu::rmsnorm(&l.x, &ly.attn_norm, c.rms_eps, d, &mut l.h);
                prepare(&l.h, &mut l.qx);
                part(&l.h, &l.qx, &ly.wq, &sq, &mut l.out);
                part(&l.h, &l.qx, &ly.wk, &sk, &mut l.out);
                part(&l.h, &l.qx, &ly.wv, &sv, &mut l.out);
                bar.wait();
                sq.get(&mut l.q);
                for (s, y, b) in [(&sk, &mut l.k, &ly.bk), (&sv, &mut l.v, &ly.bv)] {
                    s.get(y);
                    if let Some(b) = b {
                        y.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                }
                if let Some(b) = &ly.bq {
                    l.q.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
                if let (Some(qn), Some(kn)) = (&ly.q_norm, &ly.k_norm) {
                    let q_in = l.q.clone();
                    cpu::rmsnorm(&q_in, qn, c.rms_eps, hd, &mut l.q);
                    let k_in = l.k.clone();
                    cpu::rmsnorm(&k_in, kn, c.rms_eps, hd, &mut l.k);
                }
                let rope = &ropes[self.rope_index(li)];
                rope.apply_row(0, &mut l.q, false);
                if t == 0 {
                    rope.apply_row(0, &mut l.k, false);
                    let mut w = kv.write().unwrap_or_else(|e| e.into_inner());
                    w.append(li, &l.k, &l.v, c.n_kv_heads, hd);
                }
                bar.wait();
                {
                    let r = kv.read().unwrap_or_else(|e| e.into_inner());
                    for h in (t..c.n_heads).step_by(threads) {
                        let out = &mut l.att[h * hd..(h + 1) * hd];
                        self.attend_head_at(li, pos, h, &l.q, &r, out, &mut l.scores);
                        satt.put(h * hd, out);
                    }
                }
                bar.wait();
                satt.get(&mut l.att);
                prepare(&l.att, &mut l.qx);
                part(&l.att, &l.qx, &ly.wo, &so, &mut l.out);
                bar.wait();
                so.get(&mut l.o);
                if let Some(pn) = &ly.attn_post_norm {
                    let o_in = l.o.clone();
                    cpu::rmsnorm(&o_in, pn, c.rms_eps, d, &mut l.o);
                }
                l.x.iter_mut().zip(&l.o).for_each(|(a, b)| *a += b);

                cpu::rmsnorm(&l.x, &ly.ffn_norm, c.rms_eps, d, &mut l.h);
                prepare(&l.h, &mut l.qx);
                part(&l.h, &l.qx, &ly.w_gate, &sg, &mut l.out);
                part(&l.h, &l.qx, &ly.w_up, &su, &mut l.out);
                bar.wait();
                sg.get(&mut l.gate);
                su.get(&mut l.up);
                match c.block.activation {
                    Activation::SwiGlu => cpu::silu_mul(&l.gate, &l.up, &mut l.act),
                    Activation::GeGluTanh => {
                        crate::train::geglu::gelu_mul(&l.gate, &l.up, &mut l.act)
                    }
                }
                prepare(&l.act, &mut l.qx);
                part(&l.act, &l.qx, &ly.w_down, &so, &mut l.out);
                bar.wait();
                so.get(&mut l.o);
                if let Some(pn) = &ly.ffn_post_norm {
                    let dn = l.o.clone();
                    cpu::rmsnorm(&dn, pn, c.rms_eps, d, &mut l.o);
                }
                // No barrier needed here: the next write to any shared vector comes after
                // the next layer's first barrier, which every thread reaches after its reads.
                l.x.iter_mut().zip(&l.o).for_each(|(a, b)| *a += b);
            }
            cpu::rmsnorm(&l.x, &self.final_norm, c.rms_eps, d, &mut l.h);
            if l.h.iter().any(|v| !v.is_finite()) {
                bad.store(true, Ordering::Relaxed);
            }
            prepare(&l.h, &mut l.qx);
            let r = share(vocab, t, threads);
            matvec_rows(&l.h, &l.qx, &self.output, r, lg);
            if t == 0 {
                let mut hid = hidden_out.lock().unwrap_or_else(|e| e.into_inner());
                hid.copy_from_slice(&l.h);
            }
        };
        // The pool's own (long-lived) threads, one job each: a thread spawned per token would
        // start on its parent's core and share it until the load balancer moves it.
        let parts: Vec<std::sync::Mutex<&mut [f32]>> =
            parts.into_iter().map(std::sync::Mutex::new).collect();
        rayon::broadcast(|ctx| {
            let t = ctx.index();
            let mut lg = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            run(t, &mut lg);
        });
        let cache = kv.into_inner().unwrap_or_else(|e| e.into_inner());
        cache.len += 1;
        if bad.load(Ordering::Relaxed) {
            return Err(crate::error::Error::Numeric(format!(
                "non-finite hidden state in the forward pass of {}",
                self.path.display()
            )));
        }
        Ok(())
    }
}
