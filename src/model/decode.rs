//! One generated token through the model, as fast as this CPU allows: the same layers as
//! `forward` (which still runs the prompt), specialised to a single position. Buffers live in
//! a `DecodeState` reused for every token; the projections go through `cpu::gemv_q8::matvec`
//! (x in 8 bits per block on AVX-512 VNNI, exact elsewhere), q/k/v and gate/up each in one
//! parallel region; attention reads the KV cache in place.

use super::config::Activation;
use super::forward::KvCache;
use super::lora::{LoraSet, Target};
use super::Model;
use crate::cpu;
use crate::cpu::gemv_q8::{matvec, QuantX};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Cache rows above which a layer's heads are attended in parallel.
const PAR_ATTN_ROWS: usize = 128;

/// Scratch for `decode_step`, sized for one model; `logits` holds the last `decode_logits`.
pub struct DecodeState {
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
    scores: Vec<f32>,
    lora_u: Vec<f32>,
    qx: QuantX,
    /// Final-normed hidden state of the last position run [d_model].
    pub hidden: Vec<f32>,
    /// Logits [vocab] of the last `decode_logits`.
    pub logits: Vec<f32>,
}

/// y += bias, y += scale·B·(A·x) for the adapted projection `t` of layer `li`, if any.
fn extras(
    x: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    lora: Option<(&LoraSet, usize, Target)>,
    u: &mut Vec<f32>,
) {
    if let Some(b) = bias {
        y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    let Some((set, li, t)) = lora else { return };
    let Some(p) = set.get(li, t) else { return };
    u.resize(p.rank, 0.0);
    cpu::matmul_f32_nt(x, &p.a, u, 1, p.in_dim, p.rank, false);
    cpu::scale(set.scale, u);
    cpu::matmul_f32_nt(u, &p.b, y, 1, p.rank, p.out_dim, true);
}

impl Model {
    /// Scratch for `decode_step` and `decode_logits`.
    pub fn decode_state(&self) -> DecodeState {
        let c = &self.config;
        let z = |n: usize| vec![0.0f32; n];
        DecodeState {
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
            scores: Vec::new(),
            lora_u: Vec::new(),
            qx: QuantX::default(),
            hidden: z(c.d_model),
            logits: z(c.vocab_size),
        }
    }

    /// Logits [vocab] of the final-normed hidden row `st.hidden`, into `st.logits`.
    pub fn decode_logits(&self, st: &mut DecodeState) {
        let (hidden, logits, qx) = (&st.hidden, &mut st.logits, &mut st.qx);
        matvec(hidden, qx, &mut [(&self.output, &mut logits[..])]);
    }

    /// Run `token` at position `cache.len`: appends its keys and values to `cache` and leaves
    /// its final-normed hidden state in `st.hidden` (the same as `forward(&[token], ..)`, up to
    /// the int8 rounding of the projections' inputs where that path is on).
    pub fn decode_step(
        &self,
        token: u32,
        cache: &mut KvCache,
        lora: Option<&LoraSet>,
        st: &mut DecodeState,
    ) -> Result<()> {
        let c = &self.config;
        let (d, hd) = (c.d_model, c.head_dim);
        let pos = cache.len;
        self.embed_into(&[token], &mut st.x)?;
        let ropes = self.rope_tables(&[pos]);
        for (li, l) in self.layers.iter().enumerate() {
            let lo = |t| lora.map(|s| (s, li, t));
            let DecodeState {
                x,
                h,
                q,
                k,
                v,
                att,
                o,
                gate,
                up,
                act,
                scores,
                lora_u,
                qx,
                ..
            } = st;
            cpu::rmsnorm(x, &l.attn_norm, c.rms_eps, d, h);
            matvec(
                h,
                qx,
                &mut [
                    (&l.wq, &mut q[..]),
                    (&l.wk, &mut k[..]),
                    (&l.wv, &mut v[..]),
                ],
            );
            extras(h, q, l.bq.as_deref(), lo(Target::Q), lora_u);
            extras(h, k, l.bk.as_deref(), lo(Target::K), lora_u);
            extras(h, v, l.bv.as_deref(), lo(Target::V), lora_u);
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                let q_in = q.clone();
                cpu::rmsnorm(&q_in, qn, c.rms_eps, hd, q);
                let k_in = k.clone();
                cpu::rmsnorm(&k_in, kn, c.rms_eps, hd, k);
            }
            let rope = &ropes[self.rope_index(li)];
            rope.apply_row(0, q, false);
            rope.apply_row(0, k, false);
            cache.append(li, k, v, c.n_kv_heads, hd);
            self.attend_one(li, pos, q, &*cache, att, scores);

            matvec(att, qx, &mut [(&l.wo, &mut o[..])]);
            extras(att, o, None, lo(Target::O), lora_u);
            if let Some(pn) = &l.attn_post_norm {
                let o_in = o.clone();
                cpu::rmsnorm(&o_in, pn, c.rms_eps, d, o);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

            cpu::rmsnorm(x, &l.ffn_norm, c.rms_eps, d, h);
            matvec(
                h,
                qx,
                &mut [(&l.w_gate, &mut gate[..]), (&l.w_up, &mut up[..])],
            );
            extras(h, gate, None, lo(Target::Gate), lora_u);
            extras(h, up, None, lo(Target::Up), lora_u);
            match c.block.activation {
                Activation::SwiGlu => cpu::silu_mul(gate, up, act),
                Activation::GeGluTanh => crate::train::geglu::gelu_mul(gate, up, act),
            }
            matvec(act, qx, &mut [(&l.w_down, &mut o[..])]);
            extras(act, o, None, lo(Target::Down), lora_u);
            if let Some(pn) = &l.ffn_post_norm {
                let dn = o.clone();
                cpu::rmsnorm(&dn, pn, c.rms_eps, d, o);
            }
            x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        }
        cache.len += 1;
        cpu::rmsnorm(&st.x, &self.final_norm, c.rms_eps, d, &mut st.hidden);
        if st.hidden.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "non-finite hidden state in the forward pass of {}",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// att[qd] = softmax(q_h·Kᵀ·scale)·V per head, the query at position `pos` against the
    /// cache rows of layer `li` it may see (its window on Gemma's local layers).
    fn attend_one(
        &self,
        li: usize,
        pos: usize,
        q: &[f32],
        cache: &KvCache,
        att: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let hd = self.config.head_dim;
        if pos + 1 >= PAR_ATTN_ROWS {
            att.par_chunks_mut(hd)
                .enumerate()
                .for_each_init(Vec::new, |s, (h, out)| {
                    self.attend_head_at(li, pos, h, q, cache, out, s)
                });
        } else {
            for (h, out) in att.chunks_mut(hd).enumerate() {
                self.attend_head_at(li, pos, h, q, cache, out, scores);
            }
        }
    }

    /// Head h's row of `attend_one` into out [head_dim].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend_head_at(
        &self,
        li: usize,
        pos: usize,
        h: usize,
        q: &[f32],
        cache: &KvCache,
        out: &mut [f32],
        s: &mut Vec<f32>,
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let (scale, window) = (c.attn_scale(), c.window(li));
        let first = if window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(window)
        };
        let n = pos + 1 - first;
        let (k, v) = cache.head(li, h / group);
        let (k, v) = (
            &k[first * hd..(pos + 1) * hd],
            &v[first * hd..(pos + 1) * hd],
        );
        s.resize(n, 0.0);
        cpu::matmul_f32_nt(&q[h * hd..(h + 1) * hd], k, s, 1, hd, n, false);
        cpu::scale(scale, s);
        cpu::softmax_inplace(s);
        cpu::matmul_f32_nn(s, v, out, 1, n, hd, false);
    }

    /// Run `token` (as `decode_step`) and compute its logits (as `decode_logits`).
    pub fn decode_next(
        &self,
        token: u32,
        cache: &mut KvCache,
        lora: Option<&LoraSet>,
        st: &mut DecodeState,
    ) -> Result<()> {
        self.decode_step(token, cache, lora, st)?;
        self.decode_logits(st);
        Ok(())
    }

    /// Run `decode` with a per-token step function: the thread team's (`with_team`) where it
    /// applies (no LoRA, several pool threads, every product on the int8 path), else
    /// `decode_next`. `EDGE_SFT_DECODE_TEAM=0` turns the team off.
    pub fn with_decoder<R>(
        &self,
        cache: &mut KvCache,
        lora: Option<&LoraSet>,
        decode: impl FnOnce(&mut dyn FnMut(u32, &mut DecodeState) -> Result<()>) -> R,
    ) -> R {
        let threads = rayon::current_num_threads();
        let off = std::env::var("EDGE_SFT_DECODE_TEAM").is_ok_and(|v| v == "0");
        if lora.is_none() && threads > 1 && !off && self.team_ok() {
            self.with_team(cache, threads, |team| {
                decode(&mut |tok: u32, st: &mut DecodeState| team.step(tok, st))
            })
        } else {
            decode(&mut |tok: u32, st: &mut DecodeState| self.decode_next(tok, cache, lora, st))
        }
    }
}
