//! The CPU backend: every operation is the SIMD kernel it always was, on host slices. Views are
//! plain `&[f32]` / `&mut [f32]`, so the generic step compiles to the same calls as before.

use super::{Backend, LoraBuf, Mem, Norm};
use crate::error::Result;
use crate::model::config::{Activation, ModelConfig};
use crate::model::lora::{LoraPair, LoraSet, Target};
use crate::model::rope::RopeTable;
use crate::model::weights::QMatrix;
use crate::model::Model;
use crate::train::attention::{attention_backward, attention_forward, AttnShape};
use crate::train::batch::{Batch, Segment};
use crate::train::geglu::{geglu_backward, gelu_mul_par};
use crate::train::loss::{fused_nll_in, NllScratch};
use crate::train::ops;
use crate::train::proj::{proj_backward, proj_forward, Dropout};

/// Host memory: buffers are `Vec<f32>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

impl Mem for Host {
    type Buf = Vec<f32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];
    type LossScratch = NllScratch;

    fn alloc(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn len(b: &Vec<f32>) -> usize {
        b.len()
    }
    fn view(b: &Vec<f32>, n: usize) -> &[f32] {
        &b[..n]
    }
    fn view_mut(b: &mut Vec<f32>, n: usize) -> &mut [f32] {
        &mut b[..n]
    }
    fn split<'a>(v: Self::View<'a>, mid: usize) -> (Self::View<'a>, Self::View<'a>) {
        v.split_at(mid)
    }
    fn split_mut<'a>(v: Self::ViewMut<'a>, mid: usize) -> (Self::ViewMut<'a>, Self::ViewMut<'a>) {
        v.split_at_mut(mid)
    }
    fn loss_scratch(&self, rows: usize, d: usize, vocab: usize) -> NllScratch {
        NllScratch::for_rows(rows, d, vocab)
    }
    fn loss_scratch_values(s: &NllScratch) -> usize {
        s.values()
    }
}

/// The model as the CPU reads it: straight from the memory-mapped file.
pub struct Cpu<'m> {
    pub model: &'m Model,
    mem: Host,
}

impl<'m> Cpu<'m> {
    pub fn new(model: &'m Model) -> Self {
        Cpu { model, mem: Host }
    }

    fn norm(&self, n: Norm) -> &'m [f32] {
        let m = self.model;
        let opt = |w: &'m Option<Vec<f32>>, what: &str| -> &'m [f32] {
            w.as_deref()
                .unwrap_or_else(|| panic!("{what} norm asked of a model without one"))
        };
        match n {
            Norm::Attn(li) => &m.layers[li].attn_norm,
            Norm::Ffn(li) => &m.layers[li].ffn_norm,
            Norm::Q(li) => opt(&m.layers[li].q_norm, "q"),
            Norm::K(li) => opt(&m.layers[li].k_norm, "k"),
            Norm::AttnPost(li) => opt(&m.layers[li].attn_post_norm, "attention post"),
            Norm::FfnPost(li) => opt(&m.layers[li].ffn_post_norm, "MLP post"),
            Norm::Final => &m.final_norm,
        }
    }

    fn weight(&self, li: usize, tg: Target) -> (&'m QMatrix, Option<&'m [f32]>) {
        let l = &self.model.layers[li];
        match tg {
            Target::Q => (&l.wq, l.bq.as_deref()),
            Target::K => (&l.wk, l.bk.as_deref()),
            Target::V => (&l.wv, l.bv.as_deref()),
            Target::O => (&l.wo, None),
            Target::Gate => (&l.w_gate, None),
            Target::Up => (&l.w_up, None),
            Target::Down => (&l.w_down, None),
        }
    }

    fn attn_shape(&self, li: usize) -> AttnShape {
        let c = &self.model.config;
        AttnShape {
            scale: c.attn_scale(),
            window: c.window(li),
            ..AttnShape::causal(c.n_heads, c.n_kv_heads, c.head_dim)
        }
    }
}

/// A micro-batch on the CPU: its records and the RoPE tables of its positions.
pub struct CpuCtx {
    segs: Vec<Segment>,
    t: usize,
    /// cos/sin per position: global layers' RoPE, then local layers' if the model has them.
    ropes: Vec<RopeTable>,
}

impl<'m> Backend for Cpu<'m> {
    type M = Host;
    type Ctx = CpuCtx;
    type Lora = LoraSet;
    type Pair = LoraPair;

    fn mem(&self) -> &Host {
        &self.mem
    }
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }
    fn batch_ctx(&self, batch: &Batch) -> Result<CpuCtx> {
        let pos: Vec<usize> = batch.positions.iter().map(|&p| p as usize).collect();
        Ok(CpuCtx {
            segs: batch.segments.clone(),
            t: batch.positions.len(),
            ropes: self.model.rope_tables(&pos),
        })
    }

    fn pair(l: &LoraSet, li: usize, tg: Target) -> Option<&LoraPair> {
        l.get(li, tg)
    }
    fn grad_slots(g: &mut LoraSet, li: usize) -> [Option<&mut LoraPair>; 7] {
        g.layers[li].each_mut().map(|o| o.as_mut())
    }
    fn lora_scale(l: &LoraSet) -> f32 {
        l.scale
    }
    fn lora_rank(l: &LoraSet) -> usize {
        l.rank
    }
    fn lora_targets(l: &LoraSet) -> &[Target] {
        &l.targets
    }

    fn join<A, B>(&self, a: A, b: B)
    where
        A: FnOnce() + Send,
        B: FnOnce() + Send,
    {
        rayon::join(a, b);
    }

    fn embed(&self, tokens: &[u32], x: &mut [f32]) -> Result<()> {
        self.model.embed_into(tokens, x)
    }
    fn copy(&self, dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn zero(&self, dst: &mut [f32]) {
        dst.fill(0.0);
    }
    fn gather_rows(&self, src: &[f32], rows: &[usize], w: usize, dst: &mut [f32]) {
        for (k, &row) in rows.iter().enumerate() {
            dst[k * w..(k + 1) * w].copy_from_slice(&src[row * w..(row + 1) * w]);
        }
    }
    fn scatter_rows(&self, src: &[f32], rows: &[usize], w: usize, dst: &mut [f32]) {
        for (k, &row) in rows.iter().enumerate() {
            dst[row * w..(row + 1) * w].copy_from_slice(&src[k * w..(k + 1) * w]);
        }
    }

    fn rmsnorm_rows(&self, n: Norm, x: &[f32], h: &mut [f32], r: &mut [f32]) {
        ops::rmsnorm_rows(x, self.norm(n), self.model.config.rms_eps, h, r);
    }
    fn rmsnorm(&self, n: Norm, x: &[f32], h: &mut [f32]) {
        ops::rmsnorm_par(x, self.norm(n), self.model.config.rms_eps, h);
    }
    fn add_rmsnorm(
        &self,
        n: Norm,
        x: &[f32],
        o: &[f32],
        x_mid: &mut [f32],
        r: &mut [f32],
        h: &mut [f32],
    ) {
        let eps = self.model.config.rms_eps;
        ops::add_rmsnorm(x, o, self.norm(n), eps, x_mid, r, h);
    }
    fn rmsnorm_backward(&self, n: Norm, x: &[f32], r: &[f32], dy: &[f32], dx: &mut [f32]) {
        ops::rmsnorm_backward(x, self.norm(n), r, dy, dx);
    }
    fn rmsnorm_backward_inplace(&self, n: Norm, x: &[f32], r: &[f32], g: &mut [f32]) {
        ops::rmsnorm_backward_inplace(x, self.norm(n), r, g);
    }

    fn rotate(&self, ctx: &CpuCtx, li: usize, x: &mut [f32], width: usize, inverse: bool) {
        ctx.ropes[self.model.rope_index(li)].rotate(x, ctx.t, width, inverse);
    }

    fn gated_act(&self, gate: &[f32], up: &[f32], act: &mut [f32]) {
        match self.model.config.block.activation {
            Activation::SwiGlu => ops::silu_mul_par(gate, up, act),
            Activation::GeGluTanh => gelu_mul_par(gate, up, act),
        }
    }
    fn gated_act_backward(
        &self,
        gate: &[f32],
        up: &[f32],
        d_act: &[f32],
        d_gate: &mut [f32],
        d_up: &mut [f32],
    ) {
        match self.model.config.block.activation {
            Activation::SwiGlu => ops::swiglu_backward(gate, up, d_act, d_gate, d_up),
            Activation::GeGluTanh => geglu_backward(gate, up, d_act, d_gate, d_up),
        }
    }

    fn attention_forward(
        &self,
        ctx: &CpuCtx,
        li: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        att: &mut [f32],
        lse: &mut [f32],
    ) {
        attention_forward(self.attn_shape(li), &ctx.segs, q, k, v, att, lse);
    }
    fn attention_backward(
        &self,
        ctx: &CpuCtx,
        li: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        att: &[f32],
        lse: &[f32],
        d_att: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let s = self.attn_shape(li);
        attention_backward(s, &ctx.segs, q, k, v, att, lse, d_att, dq, dk, dv);
    }

    fn residual_add(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        ops::residual_add(a, b, out);
    }
    fn add_into(&self, dst: &mut [f32], a: &[f32], b: Option<&[f32]>) {
        ops::add_into(dst, a, b);
    }

    fn proj_forward(
        &self,
        li: usize,
        tg: Target,
        x: &[f32],
        t: usize,
        pair: Option<&LoraPair>,
        scale: f32,
        dropout: &mut Option<Dropout>,
        y: &mut [f32],
        lb: Option<&mut LoraBuf<Host>>,
        xd: Option<&mut [f32]>,
    ) {
        let (w, bias) = self.weight(li, tg);
        let xd = xd.unwrap_or_default();
        proj_forward(x, t, w, bias, pair, scale, dropout, y, lb, xd);
    }
    fn proj_backward(
        &self,
        li: usize,
        tg: Target,
        x: &[f32],
        t: usize,
        pair: Option<&LoraPair>,
        lb: Option<&LoraBuf<Host>>,
        scale: f32,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
        grad: Option<&mut LoraPair>,
        du: &mut [f32],
        xd: Option<&mut [f32]>,
    ) {
        let (w, _) = self.weight(li, tg);
        let xd = xd.unwrap_or_default();
        proj_backward(x, t, w, pair, lb, scale, dy, dx, accumulate, grad, du, xd);
    }

    fn fused_nll(
        &self,
        sc: &mut NllScratch,
        hs: &[f32],
        targets: &[u32],
        grad_scale: f32,
        dhs: &mut [f32],
    ) -> Vec<f64> {
        fused_nll_in(sc, hs, targets, &self.model.output, grad_scale, dhs).nll
    }
}
