//! Inference forward pass over one sequence with a KV cache (eval, generate). Training uses its
//! own forward that keeps activations; both share the kernels in `crate::cpu`.

use super::config::Activation;
use super::lora::{LoraSet, Target};
use super::rope::{Rope, RopeTable};
use super::weights::QMatrix;
use super::Model;
use crate::cpu;
use crate::error::{Error, Result};
use crate::train::attention::{attend_head, gather};
use crate::train::proj::proj_forward_infer;
use rayon::prelude::*;

/// Keys and values of the positions seen so far, per layer and KV head: each head's rows
/// [len, head_dim] are contiguous, so attention reads them in place (no per-token gather).
pub struct KvCache {
    k: Vec<Vec<Vec<f32>>>, // per layer, per kv head [len, head_dim]
    v: Vec<Vec<Vec<f32>>>, // per layer, per kv head [len, head_dim]
    pub len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            len: 0,
        }
    }

    /// Keep the first `len` positions and drop the rest (a chat turn reuses the prefix it
    /// shares with the previous one). A `len` past the end changes nothing.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for heads in self.k.iter_mut().chain(self.v.iter_mut()) {
            for h in heads.iter_mut() {
                let row = h.len() / self.len.max(1);
                h.truncate(len * row);
            }
        }
        self.len = len;
    }

    /// Append the rows k, v [n, n_kv · hd] of layer `li`; the caller adds n to `len` once
    /// every layer has its rows.
    pub(crate) fn append(&mut self, li: usize, k: &[f32], v: &[f32], n_kv: usize, hd: usize) {
        for (store, src) in [(&mut self.k[li], k), (&mut self.v[li], v)] {
            if store.len() != n_kv {
                store.resize(n_kv, Vec::new());
            }
            for row in src.chunks_exact(n_kv * hd) {
                for (g, h) in store.iter_mut().enumerate() {
                    h.extend_from_slice(&row[g * hd..(g + 1) * hd]);
                }
            }
        }
    }

    /// Keys and values [len', hd] of KV head `g` of layer `li` (len' counts the rows appended
    /// so far, including any of the current forward pass).
    pub(crate) fn head(&self, li: usize, g: usize) -> (&[f32], &[f32]) {
        (&self.k[li][g], &self.v[li][g])
    }
}

/// A projection with optional bias and LoRA (the training path's, without dropout).
fn project(
    x: &[f32],
    n: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    lora: Option<(&LoraSet, usize, Target)>,
) -> Vec<f32> {
    let (pair, scale) = match lora {
        Some((set, layer, t)) => (set.get(layer, t), set.scale),
        None => (None, 1.0),
    };
    proj_forward_infer(x, n, w, bias, pair, scale)
}

impl Model {
    /// The RoPE of layer `li` (Gemma's local layers have their own base).
    pub fn rope_for(&self, li: usize) -> Rope {
        let c = &self.config;
        if c.is_sliding(li) {
            Rope::new(c.head_dim, c.block.rope_theta_local, c.rope_style)
        } else {
            self.global_rope()
        }
    }

    /// The global layers' RoPE, with Llama 3 frequency factors when the model has them.
    fn global_rope(&self) -> Rope {
        let c = &self.config;
        let f = &c.block.rope_freq_factors;
        Rope::with_factors(c.head_dim, c.rope_theta, c.rope_style, f)
    }

    /// RoPE tables for `positions`: index 0 for global layers, 1 for local ones (if any).
    pub fn rope_tables(&self, positions: &[usize]) -> Vec<RopeTable> {
        let c = &self.config;
        let mut out = vec![RopeTable::new(
            self.global_rope(),
            positions.iter().copied(),
        )];
        if (0..c.n_layers).any(|li| c.is_sliding(li)) {
            let local = Rope::new(c.head_dim, c.block.rope_theta_local, c.rope_style);
            out.push(RopeTable::new(local, positions.iter().copied()));
        }
        out
    }

    /// Which of `rope_tables` layer `li` uses.
    pub fn rope_index(&self, li: usize) -> usize {
        usize::from(self.config.is_sliding(li))
    }

    /// Embedding rows for `tokens`: [n, d_model].
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut x = vec![0.0f32; tokens.len() * self.config.d_model];
        self.embed_into(tokens, &mut x)?;
        Ok(x)
    }

    /// Embedding rows for `tokens` into x [n, d_model].
    pub fn embed_into(&self, tokens: &[u32], x: &mut [f32]) -> Result<()> {
        let d = self.config.d_model;
        assert_eq!(
            x.len(),
            tokens.len() * d,
            "embed_into: x must be [n, d_model]"
        );
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= self.config.vocab_size {
                return Err(Error::Usage(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.config.vocab_size
                )));
            }
            let row = &mut x[i * d..(i + 1) * d];
            self.tok_embd.dequantize_row(t as usize, row);
            if let Some(s) = self.config.block.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        Ok(())
    }

    /// Run `tokens` at positions `cache.len..`; returns the final-normed hidden states
    /// [n, d_model] and appends the new keys/values to `cache`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        lora: Option<&LoraSet>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (n, d) = (tokens.len(), c.d_model);
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let start = cache.len;
        let mut x = self.embed(tokens)?; // [n, d]
        let mut h = vec![0.0f32; n * d]; // [n, d]
        let positions: Vec<usize> = (start..start + n).collect();
        let ropes = self.rope_tables(&positions);

        for (li, l) in self.layers.iter().enumerate() {
            let lo = |t| lora.map(|s| (s, li, t));
            let rope = &ropes[self.rope_index(li)];
            cpu::rmsnorm(&x, &l.attn_norm, c.rms_eps, d, &mut h);
            let mut q = project(&h, n, &l.wq, l.bq.as_deref(), lo(Target::Q)); // [n, qd]
            let mut k = project(&h, n, &l.wk, l.bk.as_deref(), lo(Target::K)); // [n, kvd]
            let v = project(&h, n, &l.wv, l.bv.as_deref(), lo(Target::V)); // [n, kvd]
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                // Per head: rows of head_dim.
                let q_in = q.clone();
                cpu::rmsnorm(&q_in, qn, c.rms_eps, hd, &mut q);
                let k_in = k.clone();
                cpu::rmsnorm(&k_in, kn, c.rms_eps, hd, &mut k);
            }
            for i in 0..n {
                rope.apply_row(i, &mut q[i * qd..(i + 1) * qd], false);
                rope.apply_row(i, &mut k[i * kvd..(i + 1) * kvd], false);
            }
            cache.append(li, &k, &v, c.n_kv_heads, hd);
            let kv = &*cache;

            let mut att = vec![0.0f32; n * qd]; // [n, qd]
            let group = c.n_heads / c.n_kv_heads;
            let sw = (c.attn_scale(), c.window(li));
            let heads: Vec<Vec<f32>> = (0..c.n_heads)
                .into_par_iter()
                .map(|head| {
                    let g = head / group;
                    let qh = gather(&q, qd, 0, n, head * hd, hd); // [n, hd]
                    let (kh, vh) = kv.head(li, g); // [start + n, hd] each, in place
                    attend_head(&qh, kh, vh, n, hd, sw).0
                })
                .collect();
            for (head, oh) in heads.iter().enumerate() {
                for i in 0..n {
                    att[i * qd + head * hd..i * qd + (head + 1) * hd]
                        .copy_from_slice(&oh[i * hd..(i + 1) * hd]);
                }
            }
            let mut o = project(&att, n, &l.wo, None, lo(Target::O)); // [n, d]
            if let Some(pn) = &l.attn_post_norm {
                let o_in = o.clone();
                cpu::rmsnorm(&o_in, pn, c.rms_eps, d, &mut o);
            }
            for (xv, ov) in x.iter_mut().zip(&o) {
                *xv += ov;
            }

            cpu::rmsnorm(&x, &l.ffn_norm, c.rms_eps, d, &mut h);
            let gate = project(&h, n, &l.w_gate, None, lo(Target::Gate)); // [n, ffn]
            let up = project(&h, n, &l.w_up, None, lo(Target::Up)); // [n, ffn]
            let mut act = vec![0.0f32; gate.len()];
            match c.block.activation {
                Activation::SwiGlu => cpu::silu_mul(&gate, &up, &mut act),
                Activation::GeGluTanh => crate::train::geglu::gelu_mul(&gate, &up, &mut act),
            }
            let mut down = project(&act, n, &l.w_down, None, lo(Target::Down)); // [n, d]
            if let Some(pn) = &l.ffn_post_norm {
                let dn = down.clone();
                cpu::rmsnorm(&dn, pn, c.rms_eps, d, &mut down);
            }
            for (xv, dv) in x.iter_mut().zip(&down) {
                *xv += dv;
            }
        }
        cache.len += n;
        let mut out = vec![0.0f32; n * d];
        cpu::rmsnorm(&x, &self.final_norm, c.rms_eps, d, &mut out);
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "non-finite hidden state in the forward pass of {}",
                self.path.display()
            )));
        }
        Ok(out)
    }

    /// Full logits [n, vocab] for hidden rows [n, d] (generation: n is 1).
    pub fn logits(&self, hidden: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; n * self.config.vocab_size];
        cpu::matmul_wt(hidden, n, &self.output, &mut y);
        y
    }

    /// log Pr(target_i | row i) for hidden rows [m, d], walking the vocabulary in chunks so the
    /// [m, vocab] logits matrix never exists.
    pub fn target_logprobs(&self, hidden: &[f32], targets: &[u32]) -> Vec<f64> {
        const CHUNK: usize = 4096;
        let m = targets.len();
        let vocab = self.config.vocab_size;
        let mut max = vec![f32::NEG_INFINITY; m];
        let mut sum = vec![0.0f64; m]; // Σ exp(logit − max)
        let mut tgt = vec![0.0f32; m];
        let mut buf = vec![0.0f32; m * CHUNK.min(vocab)]; // [m, chunk]
        let mut c0 = 0;
        while c0 < vocab {
            let c1 = (c0 + CHUNK).min(vocab);
            let w = c1 - c0;
            let chunk = self.output.slice_rows(c0, c1);
            let out = &mut buf[..m * w];
            cpu::matmul_wt(hidden, m, &chunk, out);
            for i in 0..m {
                let row = &mut out[i * w..(i + 1) * w];
                let t = targets[i] as usize;
                if (c0..c1).contains(&t) {
                    tgt[i] = row[t - c0];
                }
                let cmax = cpu::max(row);
                if cmax > max[i] {
                    sum[i] *= ((max[i] - cmax) as f64).exp();
                    max[i] = cmax;
                }
                sum[i] += cpu::exp_sub_inplace(row, max[i]) as f64;
            }
            c0 = c1;
        }
        (0..m)
            .map(|i| tgt[i] as f64 - max[i] as f64 - sum[i].ln())
            .collect()
    }
}
