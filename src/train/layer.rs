//! One transformer block for training: forward keeping what backward needs, and backward
//! computing activation gradients through the frozen weights plus LoRA parameter gradients.

use super::attention::{attention_backward, attention_forward, AttnShape};
use super::batch::Segment;
use super::ops::{inv_rms, rmsnorm_backward, swiglu_backward};
use crate::cpu;
use crate::infer::sampling::Rng;
use crate::model::lora::{LoraPair, LoraSet, Target};
use crate::model::rope::Rope;
use crate::model::weights::QMatrix;
use crate::model::{LayerWeights, Model};

/// Per-batch constants shared by all layers.
pub struct BatchCtx<'a> {
    pub segs: &'a [Segment],
    pub t: usize,
    pub rope: Rope,
    cos: Vec<f32>, // [T, head_dim / 2]
    sin: Vec<f32>, // [T, head_dim / 2]
}

impl<'a> BatchCtx<'a> {
    pub fn new(model: &Model, segs: &'a [Segment], positions: &[u32]) -> Self {
        let rope = model.rope();
        let half = rope.half_dim();
        let t = positions.len();
        let mut cos = vec![0.0; t * half];
        let mut sin = vec![0.0; t * half];
        for (i, &p) in positions.iter().enumerate() {
            rope.angles(
                p as usize,
                &mut cos[i * half..(i + 1) * half],
                &mut sin[i * half..(i + 1) * half],
            );
        }
        BatchCtx {
            segs,
            t,
            rope,
            cos,
            sin,
        }
    }

    fn rotate(&self, x: &mut [f32], width: usize, inverse: bool) {
        let half = self.rope.half_dim();
        for i in 0..self.t {
            self.rope.apply(
                &mut x[i * width..(i + 1) * width],
                &self.cos[i * half..(i + 1) * half],
                &self.sin[i * half..(i + 1) * half],
                inverse,
            );
        }
    }
}

/// LoRA dropout on the adapter input (PEFT's `lora_dropout`), reproducible from a seed.
pub struct Dropout {
    pub p: f32,
    pub rng: Rng,
}

/// What one adapted projection keeps for backward.
pub struct LoraActs {
    keep: Option<Vec<f32>>, // [T, in] 0 or 1/(1−p), only with dropout
    us: Vec<f32>,           // [T, rank] = scale · (dropout(x) · Aᵀ)
}

/// Saved activations of one block. Shapes: T tokens.
pub struct Acts {
    x_in: Vec<f32>,  // [T, d]
    r1: Vec<f32>,    // [T]
    q: Vec<f32>,     // [T, q_dim] after RoPE
    k: Vec<f32>,     // [T, kv_dim] after RoPE
    v: Vec<f32>,     // [T, kv_dim]
    lse: Vec<f32>,   // [T, heads]
    att: Vec<f32>,   // [T, q_dim]
    x_mid: Vec<f32>, // [T, d]
    r2: Vec<f32>,    // [T]
    gate: Vec<f32>,  // [T, ffn]
    up: Vec<f32>,    // [T, ffn]
    // The normed inputs h1, h2 and silu(gate)·up are cheap to recompute, so backward does
    // (saves 2·d + ffn floats per token per layer).
    lora: [Option<LoraActs>; 7],
}

/// A projection with optional bias and LoRA: y [T, w.rows] = x · Wᵀ (+ b) (+ scale·B·A·x).
/// Inference calls it too, with no dropout, and drops the saved LoRA activations.
pub fn proj_forward(
    x: &[f32],
    t: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    pair: Option<&LoraPair>,
    scale: f32,
    dropout: &mut Option<Dropout>,
) -> (Vec<f32>, Option<LoraActs>) {
    let mut y = vec![0.0f32; t * w.rows]; // [T, out]
    cpu::matmul_wt(x, t, w, &mut y);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(w.rows) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    let Some(p) = pair else { return (y, None) };
    let mut keep = None;
    let mut dropped = None;
    if let Some(dr) = dropout.as_mut().filter(|d| d.p > 0.0) {
        let f = 1.0 / (1.0 - dr.p);
        let k: Vec<f32> = (0..x.len())
            .map(|_| {
                if dr.rng.next_f64() < dr.p as f64 {
                    0.0
                } else {
                    f
                }
            })
            .collect();
        dropped = Some(x.iter().zip(&k).map(|(a, b)| a * b).collect::<Vec<f32>>());
        keep = Some(k);
    }
    let xin = dropped.as_deref().unwrap_or(x);
    let mut us = vec![0.0f32; t * p.rank]; // [T, rank]
    cpu::matmul_f32_nt(xin, &p.a, &mut us, t, p.in_dim, p.rank, false);
    cpu::scale(scale, &mut us);
    cpu::matmul_f32_nt(&us, &p.b, &mut y, t, p.rank, p.out_dim, true);
    (y, Some(LoraActs { keep, us }))
}

/// dx [T, in] += dy · W (+ LoRA path), and LoRA gradients into `grad`.
#[allow(clippy::too_many_arguments)]
fn proj_backward(
    x: &[f32],
    t: usize,
    w: &QMatrix,
    pair: Option<&LoraPair>,
    la: Option<&LoraActs>,
    scale: f32,
    dy: &[f32],
    dx: &mut [f32],
    grad: Option<&mut LoraPair>,
) {
    let mut tmp = vec![0.0f32; t * w.cols]; // [T, in]
    cpu::matmul_w(dy, t, w, &mut tmp);
    if let (Some(p), Some(la), Some(g)) = (pair, la, grad) {
        // dB [out, rank] += dyᵀ · us
        cpu::matmul_f32_tn(dy, &la.us, &mut g.b, p.out_dim, t, p.rank, true);
        // du [T, rank] = scale · dy · B
        let mut du = vec![0.0f32; t * p.rank];
        cpu::matmul_f32_nn(dy, &p.b, &mut du, t, p.out_dim, p.rank, false);
        cpu::scale(scale, &mut du);
        // dA [rank, in] += duᵀ · dropout(x)
        let mut dxl = vec![0.0f32; t * p.in_dim]; // [T, in]
        match &la.keep {
            Some(keep) => {
                let xd: Vec<f32> = x.iter().zip(keep).map(|(a, b)| a * b).collect();
                cpu::matmul_f32_tn(&du, &xd, &mut g.a, p.rank, t, p.in_dim, true);
                cpu::matmul_f32_nn(&du, &p.a, &mut dxl, t, p.rank, p.in_dim, false);
                for (v, k) in dxl.iter_mut().zip(keep) {
                    *v *= k;
                }
            }
            None => {
                cpu::matmul_f32_tn(&du, x, &mut g.a, p.rank, t, p.in_dim, true);
                cpu::matmul_f32_nn(&du, &p.a, &mut dxl, t, p.rank, p.in_dim, false);
            }
        }
        for (a, b) in tmp.iter_mut().zip(&dxl) {
            *a += b;
        }
    }
    for (a, b) in dx.iter_mut().zip(&tmp) {
        *a += b;
    }
}

fn shape(model: &Model) -> AttnShape {
    let c = &model.config;
    AttnShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    }
}

/// Forward of block `li` on x_in [T, d]; returns x_out [T, d] and the saved activations.
pub fn layer_forward(
    model: &Model,
    li: usize,
    lora: &LoraSet,
    ctx: &BatchCtx,
    x_in: Vec<f32>,
    dropout: &mut Option<Dropout>,
) -> (Vec<f32>, Acts) {
    let c = &model.config;
    let l: &LayerWeights = &model.layers[li];
    let (t, d) = (ctx.t, c.d_model);
    let s = lora.scale;
    let mut lora_acts: [Option<LoraActs>; 7] = Default::default();
    let mut pf =
        |x: &[f32], w: &QMatrix, b: Option<&[f32]>, tg: Target, dropout: &mut Option<Dropout>| {
            let (y, la) = proj_forward(x, t, w, b, lora.get(li, tg), s, dropout);
            lora_acts[tg.index()] = la;
            y
        };

    let r1 = inv_rms(&x_in, d, c.rms_eps);
    let mut h1 = vec![0.0f32; t * d];
    cpu::rmsnorm(&x_in, &l.attn_norm, c.rms_eps, d, &mut h1);
    let mut q = pf(&h1, &l.wq, l.bq.as_deref(), Target::Q, dropout);
    let mut k = pf(&h1, &l.wk, l.bk.as_deref(), Target::K, dropout);
    let v = pf(&h1, &l.wv, l.bv.as_deref(), Target::V, dropout);
    ctx.rotate(&mut q, c.q_dim(), false);
    ctx.rotate(&mut k, c.kv_dim(), false);
    let mut att = vec![0.0f32; t * c.q_dim()];
    let mut lse = vec![0.0f32; t * c.n_heads];
    attention_forward(shape(model), ctx.segs, &q, &k, &v, &mut att, &mut lse);
    let o = pf(&att, &l.wo, None, Target::O, dropout);
    let x_mid: Vec<f32> = x_in.iter().zip(&o).map(|(a, b)| a + b).collect();

    let r2 = inv_rms(&x_mid, d, c.rms_eps);
    let mut h2 = vec![0.0f32; t * d];
    cpu::rmsnorm(&x_mid, &l.ffn_norm, c.rms_eps, d, &mut h2);
    let gate = pf(&h2, &l.w_gate, None, Target::Gate, dropout);
    let up = pf(&h2, &l.w_up, None, Target::Up, dropout);
    let mut act = vec![0.0f32; gate.len()];
    cpu::silu_mul(&gate, &up, &mut act);
    let down = pf(&act, &l.w_down, None, Target::Down, dropout);
    let x_out: Vec<f32> = x_mid.iter().zip(&down).map(|(a, b)| a + b).collect();
    drop((h1, h2, act));
    let acts = Acts {
        x_in,
        r1,
        q,
        k,
        v,
        lse,
        att,
        x_mid,
        r2,
        gate,
        up,
        lora: lora_acts,
    };
    (x_out, acts)
}

/// The block's input, for gradient checkpointing (everything else is recomputed).
pub fn into_input(a: Acts) -> Vec<f32> {
    a.x_in
}

/// Backward of block `li`: from dy = ∂L/∂x_out [T, d] return ∂L/∂x_in, adding LoRA gradients
/// into `grads`.
pub fn layer_backward(
    model: &Model,
    li: usize,
    lora: &LoraSet,
    ctx: &BatchCtx,
    a: &Acts,
    dy: &[f32],
    grads: &mut LoraSet,
) -> Vec<f32> {
    let c = &model.config;
    let l = &model.layers[li];
    let (t, d) = (ctx.t, c.d_model);
    let s = lora.scale;
    let la = |tg: Target| a.lora[tg.index()].as_ref();
    let mut g_slots = grads.layers[li].each_mut().map(|o| o.as_mut());
    let mut pb = |x: &[f32], w: &QMatrix, tg: Target, dyv: &[f32], dx: &mut [f32]| {
        proj_backward(
            x,
            t,
            w,
            lora.get(li, tg),
            la(tg),
            s,
            dyv,
            dx,
            g_slots[tg.index()].take(),
        );
    };

    // Recomputed: h1 = rmsnorm(x_in), h2 = rmsnorm(x_mid), act = silu(gate) · up.
    let mut h1 = vec![0.0f32; t * d];
    cpu::rmsnorm(&a.x_in, &l.attn_norm, c.rms_eps, d, &mut h1);
    let mut h2 = vec![0.0f32; t * d];
    cpu::rmsnorm(&a.x_mid, &l.ffn_norm, c.rms_eps, d, &mut h2);
    let mut act = vec![0.0f32; t * c.ffn_dim];
    cpu::silu_mul(&a.gate, &a.up, &mut act);

    // MLP: x_out = x_mid + down(silu(gate) · up)
    let mut d_act = vec![0.0f32; t * c.ffn_dim];
    pb(&act, &l.w_down, Target::Down, dy, &mut d_act);
    drop(act);
    let mut d_gate = vec![0.0f32; d_act.len()];
    let mut d_up = vec![0.0f32; d_act.len()];
    swiglu_backward(&a.gate, &a.up, &d_act, &mut d_gate, &mut d_up);
    let mut dh2 = vec![0.0f32; t * d];
    pb(&h2, &l.w_gate, Target::Gate, &d_gate, &mut dh2);
    pb(&h2, &l.w_up, Target::Up, &d_up, &mut dh2);
    let mut d_mid = dy.to_vec();
    rmsnorm_backward(&a.x_mid, &l.ffn_norm, &a.r2, &dh2, &mut d_mid);

    // Attention: x_mid = x_in + o(attn(rope(q), rope(k), v))
    let mut d_att = vec![0.0f32; t * c.q_dim()];
    pb(&a.att, &l.wo, Target::O, &d_mid, &mut d_att);
    let mut dq = vec![0.0f32; t * c.q_dim()];
    let mut dk = vec![0.0f32; t * c.kv_dim()];
    let mut dv = vec![0.0f32; t * c.kv_dim()];
    attention_backward(
        shape(model),
        ctx.segs,
        &a.q,
        &a.k,
        &a.v,
        &a.att,
        &a.lse,
        &d_att,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    ctx.rotate(&mut dq, c.q_dim(), true);
    ctx.rotate(&mut dk, c.kv_dim(), true);
    let mut dh1 = vec![0.0f32; t * d];
    pb(&h1, &l.wq, Target::Q, &dq, &mut dh1);
    pb(&h1, &l.wk, Target::K, &dk, &mut dh1);
    pb(&h1, &l.wv, Target::V, &dv, &mut dh1);
    let mut dx = d_mid;
    rmsnorm_backward(&a.x_in, &l.attn_norm, &a.r1, &dh1, &mut dx);
    dx
}
