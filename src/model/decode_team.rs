//! Decoding on several threads without a fork-join per product: a team of pool threads that
//! lives for a whole reply (`Model::with_team`). Each token, its threads split every product's
//! rows statically and meet at spinning barriers (as llama.cpp's threads do). A rayon fork-join
//! costs little while the pool is warm, but its idle workers `sched_yield` and then sleep: on
//! a busy machine each of the ~150 joins of a token then waits for a time slice. Every thread
//! keeps its own copy of the small vectors (residual stream, norms, quantized inputs) and
//! recomputes them, so the only shared data are the products' outputs, exchanged through
//! atomics between barriers. Only where every product takes the int8 path and there is no
//! LoRA adapter (nothing inside a step may use rayon: a waiting pool thread could pick up a
//! team job); `decode_next` covers the rest.

use super::config::Activation;
use super::forward::KvCache;
use super::weights::QMatrix;
use super::Model;
use crate::cpu;
use crate::cpu::gemv_q8::{matvec_rows, prepare, QuantX};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

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
    /// Set when the team ends (or its driver failed): waiters return false at once.
    abort: AtomicBool,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
        }
    }

    /// False if the team was aborted.
    fn wait(&self) -> bool {
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        let mut spins = 0u32;
        let limit = spin_limit();
        while self.generation.load(Ordering::Acquire) == g {
            if self.abort.load(Ordering::Relaxed) {
                return false;
            }
            if spins < limit {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        true
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

/// The team's shared state for one reply.
pub(crate) struct Team<'a> {
    model: &'a Model,
    threads: usize,
    bar: SpinBarrier,
    token: AtomicU32,
    bad: AtomicBool,
    kv: RwLock<&'a mut KvCache>,
    sq: Shared,
    sk: Shared,
    sv: Shared,
    satt: Shared,
    so: Shared,
    sg: Shared,
    su: Shared,
    /// Each thread's rows of the logits, and thread 0's final-normed hidden state.
    logits: Vec<Mutex<Vec<f32>>>,
    hidden: Mutex<Vec<f32>>,
    /// The driving thread's own copies.
    lead: Mutex<Local>,
}

/// Ends the team when the driver returns (or unwinds): waiting threads leave.
struct Abort<'t, 'a>(&'t Team<'a>);

impl Drop for Abort<'_, '_> {
    fn drop(&mut self) {
        self.0.bar.abort.store(true, Ordering::Relaxed);
    }
}

impl Model {
    /// Whether `with_team` may run this model (see the module doc).
    pub(crate) fn team_ok(&self) -> bool {
        let mut mats = vec![&self.output];
        for l in &self.layers {
            mats.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        mats.into_iter().all(crate::cpu::gemv_q8::int8_path)
    }

    /// Run `drive` on this thread with `threads − 1` pool threads waiting for its `Team::step`
    /// calls; the team ends when `drive` returns.
    pub(crate) fn with_team<R>(
        &self,
        cache: &mut KvCache,
        threads: usize,
        drive: impl FnOnce(&Team) -> R,
    ) -> R {
        let c = &self.config;
        let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let team = Team {
            model: self,
            threads,
            bar: SpinBarrier::new(threads),
            token: AtomicU32::new(0),
            bad: AtomicBool::new(false),
            kv: RwLock::new(cache),
            sq: Shared::new(qd),
            sk: Shared::new(kvd),
            sv: Shared::new(kvd),
            satt: Shared::new(qd),
            so: Shared::new(d),
            sg: Shared::new(ffn),
            su: Shared::new(ffn),
            logits: (0..threads)
                .map(|t| Mutex::new(vec![0.0; share(c.vocab_size, t, threads).len()]))
                .collect(),
            hidden: Mutex::new(vec![0.0; d]),
            lead: Mutex::new(Local::new(self)),
        };
        rayon::in_place_scope(|s| {
            for t in 1..threads {
                let team = &team;
                s.spawn(move |_| {
                    let mut l = Local::new(self);
                    while team.bar.wait() {
                        team.run(t, &mut l);
                    }
                });
            }
            let _end = Abort(&team);
            drive(&team)
        })
    }
}

impl Local {
    fn new(m: &Model) -> Self {
        let c = &m.config;
        let z = |n: usize| vec![0.0f32; n];
        Local {
            x: z(c.d_model),
            h: z(c.d_model),
            q: z(c.q_dim()),
            k: z(c.kv_dim()),
            v: z(c.kv_dim()),
            att: z(c.q_dim()),
            o: z(c.d_model),
            gate: z(c.ffn_dim),
            up: z(c.ffn_dim),
            act: z(c.ffn_dim),
            out: Vec::new(),
            scores: Vec::new(),
            qx: QuantX::default(),
        }
    }
}

impl Team<'_> {
    /// `decode_next` for the team: run `token` at the cache's next position, leaving the
    /// final-normed hidden state and the logits in `st`. Called by the thread that made the
    /// team.
    pub(crate) fn step(
        &self,
        token: u32,
        st: &mut super::decode::DecodeState,
    ) -> crate::error::Result<()> {
        let m = self.model;
        if token as usize >= m.config.vocab_size {
            return Err(crate::error::Error::Usage(format!(
                "token id {token} is outside the vocabulary ({})",
                m.config.vocab_size
            )));
        }
        self.token.store(token, Ordering::Relaxed);
        let mut l = self.lead.lock().unwrap_or_else(|e| e.into_inner());
        self.bar.wait(); // start
        self.run(0, &mut l);
        self.bar.wait(); // every thread's logits are in
        let mut at = 0;
        for part in &self.logits {
            let p = part.lock().unwrap_or_else(|e| e.into_inner());
            st.logits[at..at + p.len()].copy_from_slice(&p);
            at += p.len();
        }
        st.hidden
            .copy_from_slice(&self.hidden.lock().unwrap_or_else(|e| e.into_inner()));
        self.kv.write().unwrap_or_else(|e| e.into_inner()).len += 1;
        if self.bad.load(Ordering::Relaxed) {
            return Err(crate::error::Error::Numeric(format!(
                "non-finite hidden state in the forward pass of {}",
                m.path.display()
            )));
        }
        Ok(())
    }

    /// Thread t's part of one token.
    fn run(&self, t: usize, l: &mut Local) {
        let m = self.model;
        let c = &m.config;
        let threads = self.threads;
        let (d, hd) = (c.d_model, c.head_dim);
        let token = self.token.load(Ordering::Relaxed);
        let pos = self.kv.read().unwrap_or_else(|e| e.into_inner()).len;
        if m.embed_into(&[token], &mut l.x).is_err() {
            self.bad.store(true, Ordering::Relaxed);
        }
        let ropes = m.rope_tables(&[pos]);
        let bar = &self.bar;
        let part = |x: &[f32], qx: &QuantX, w: &QMatrix, dst: &Shared, out: &mut Vec<f32>| {
            let r = share(dst.0.len(), t, threads);
            out.resize(r.len(), 0.0);
            matvec_rows(x, qx, w, r.clone(), out);
            dst.put(r.start, out);
        };
        for (li, ly) in m.layers.iter().enumerate() {
            cpu::rmsnorm(&l.x, &ly.attn_norm, c.rms_eps, d, &mut l.h);
            prepare(&l.h, &mut l.qx);
            part(&l.h, &l.qx, &ly.wq, &self.sq, &mut l.out);
            part(&l.h, &l.qx, &ly.wk, &self.sk, &mut l.out);
            part(&l.h, &l.qx, &ly.wv, &self.sv, &mut l.out);
            bar.wait();
            self.sq.get(&mut l.q);
            for (s, y, b) in [(&self.sk, &mut l.k, &ly.bk), (&self.sv, &mut l.v, &ly.bv)] {
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
            let rope = &ropes[m.rope_index(li)];
            rope.apply_row(0, &mut l.q, false);
            rope.apply_row(0, &mut l.k, false);
            // The new position's keys and values come from this thread's own copies, so the
            // heads need not wait for thread 0 to append them to the cache (it does so once
            // the others have stopped reading this layer's rows: the lock orders it).
            {
                let r = self.kv.read().unwrap_or_else(|e| e.into_inner());
                for h in (t..c.n_heads).step_by(threads) {
                    let out = &mut l.att[h * hd..(h + 1) * hd];
                    let new = (&l.k[..], &l.v[..]);
                    attend_serial(m, li, pos, h, &l.q, &r, new, out, &mut l.scores);
                    self.satt.put(h * hd, out);
                }
            }
            if t == 0 {
                let mut w = self.kv.write().unwrap_or_else(|e| e.into_inner());
                w.append(li, &l.k, &l.v, c.n_kv_heads, hd);
            }
            bar.wait();
            self.satt.get(&mut l.att);
            prepare(&l.att, &mut l.qx);
            part(&l.att, &l.qx, &ly.wo, &self.so, &mut l.out);
            bar.wait();
            self.so.get(&mut l.o);
            if let Some(pn) = &ly.attn_post_norm {
                let o_in = l.o.clone();
                cpu::rmsnorm(&o_in, pn, c.rms_eps, d, &mut l.o);
            }
            l.x.iter_mut().zip(&l.o).for_each(|(a, b)| *a += b);

            cpu::rmsnorm(&l.x, &ly.ffn_norm, c.rms_eps, d, &mut l.h);
            prepare(&l.h, &mut l.qx);
            part(&l.h, &l.qx, &ly.w_gate, &self.sg, &mut l.out);
            part(&l.h, &l.qx, &ly.w_up, &self.su, &mut l.out);
            bar.wait();
            self.sg.get(&mut l.gate);
            self.su.get(&mut l.up);
            match c.block.activation {
                Activation::SwiGlu => cpu::silu_mul(&l.gate, &l.up, &mut l.act),
                Activation::GeGluTanh => crate::train::geglu::gelu_mul(&l.gate, &l.up, &mut l.act),
            }
            prepare(&l.act, &mut l.qx);
            part(&l.act, &l.qx, &ly.w_down, &self.so, &mut l.out);
            bar.wait();
            self.so.get(&mut l.o);
            if let Some(pn) = &ly.ffn_post_norm {
                let dn = l.o.clone();
                cpu::rmsnorm(&dn, pn, c.rms_eps, d, &mut l.o);
            }
            // No barrier needed here: the next write to any shared vector comes after the
            // next layer's first barrier, which every thread reaches after its reads.
            l.x.iter_mut().zip(&l.o).for_each(|(a, b)| *a += b);
        }
        cpu::rmsnorm(&l.x, &m.final_norm, c.rms_eps, d, &mut l.h);
        if l.h.iter().any(|v| !v.is_finite()) {
            self.bad.store(true, Ordering::Relaxed);
        }
        prepare(&l.h, &mut l.qx);
        let r = share(c.vocab_size, t, threads);
        let mut lg = self.logits[t].lock().unwrap_or_else(|e| e.into_inner());
        matvec_rows(&l.h, &l.qx, &m.output, r, &mut lg);
        if t == 0 {
            let mut hid = self.hidden.lock().unwrap_or_else(|e| e.into_inner());
            hid.copy_from_slice(&l.h);
        }
        drop(lg);
        if t != 0 {
            bar.wait(); // matches the driver's "logits are in" barrier
        }
    }
}

/// `Model::attend_head_at` without any rayon inside (dot and axpy per cache row), the cache
/// holding positions ..pos and `new` (k, v [kv_dim]) position pos.
#[allow(clippy::too_many_arguments)]
fn attend_serial(
    m: &Model,
    li: usize,
    pos: usize,
    h: usize,
    q: &[f32],
    cache: &KvCache,
    new: (&[f32], &[f32]),
    out: &mut [f32],
    s: &mut Vec<f32>,
) {
    let c = &m.config;
    let hd = c.head_dim;
    let (scale, window) = (c.attn_scale(), c.window(li));
    let first = if window == 0 {
        0
    } else {
        (pos + 1).saturating_sub(window)
    };
    let g = h / (c.n_heads / c.n_kv_heads);
    let (k, v) = cache.head(li, g);
    let (kn, vn) = (&new.0[g * hd..(g + 1) * hd], &new.1[g * hd..(g + 1) * hd]);
    let qh = &q[h * hd..(h + 1) * hd];
    s.clear();
    s.extend((first..pos).map(|j| cpu::dot(qh, &k[j * hd..(j + 1) * hd]) * scale));
    s.push(cpu::dot(qh, kn) * scale);
    cpu::softmax_inplace(s);
    out.fill(0.0);
    for (p, j) in s.iter().zip(first..pos) {
        cpu::axpy(*p, &v[j * hd..(j + 1) * hd], out);
    }
    cpu::axpy(s[s.len() - 1], vn, out);
}
