//! One transformer block for training: forward keeping what backward needs, and backward
//! computing activation gradients through the frozen weights plus LoRA parameter gradients.
//! Every buffer comes from the step's [`Arena`](super::arena::Arena); nothing is allocated here.

use super::arena::{LayerActs, LoraBuf, Scratch};
use super::attention::{attention_backward, attention_forward, AttnShape};
use super::batch::Segment;
use super::geglu::{geglu_backward, gelu_mul_par};
use super::ops::{
    add_into, add_rmsnorm, residual_add, rmsnorm_backward, rmsnorm_backward_inplace, rmsnorm_par,
    rmsnorm_rows, silu_mul_par, swiglu_backward,
};
use super::proj::{proj_backward, proj_forward, Dropout};
use crate::model::config::Activation;
use crate::model::lora::{LoraPair, LoraSet, Target};
use crate::model::rope::RopeTable;
use crate::model::weights::QMatrix;
use crate::model::{LayerWeights, Model};

/// Per-batch constants shared by all layers.
pub struct BatchCtx<'a> {
    pub segs: &'a [Segment],
    pub t: usize,
    /// cos/sin per position: global layers' RoPE, then local layers' if the model has them.
    ropes: Vec<RopeTable>,
}

impl<'a> BatchCtx<'a> {
    pub fn new(model: &Model, segs: &'a [Segment], positions: &[u32]) -> Self {
        let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        BatchCtx {
            segs,
            t: positions.len(),
            ropes: model.rope_tables(&pos),
        }
    }

    /// RoPE of block `li` on every row of x [T, width], rows spread over the pool.
    fn rotate(&self, model: &Model, li: usize, x: &mut [f32], width: usize, inverse: bool) {
        self.ropes[model.rope_index(li)].rotate(x, self.t, width, inverse);
    }
}

fn shape(model: &Model, li: usize) -> AttnShape {
    let c = &model.config;
    AttnShape {
        scale: c.attn_scale(),
        window: c.window(li),
        ..AttnShape::causal(c.n_heads, c.n_kv_heads, c.head_dim)
    }
}

/// act = f(gate) · up for the model's gated activation.
fn gated_act(model: &Model, gate: &[f32], up: &[f32], act: &mut [f32]) {
    match model.config.block.activation {
        Activation::SwiGlu => silu_mul_par(gate, up, act),
        Activation::GeGluTanh => gelu_mul_par(gate, up, act),
    }
}

/// Forward of block `li`: x_in [T, d] → x_out [T, d], keeping what backward needs in `a`.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    model: &Model,
    li: usize,
    lora: &LoraSet,
    ctx: &BatchCtx,
    x_in: &[f32],
    a: &mut LayerActs,
    sc: &mut Scratch,
    x_out: &mut [f32],
    dropout: &mut Option<Dropout>,
) {
    let c = &model.config;
    let l: &LayerWeights = &model.layers[li];
    let (t, d, qd, kvd, ffn) = (ctx.t, c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let s = lora.scale;
    let (h1, h2) = (&mut sc.h1[..t * d], &mut sc.h2[..t * d]);
    let xd = &mut sc.xd[..];
    let mut pf = |x: &[f32],
                  w: &QMatrix,
                  b: Option<&[f32]>,
                  tg: Target,
                  y: &mut [f32],
                  lb: &mut [Option<LoraBuf>; 7],
                  dropout: &mut Option<Dropout>| {
        let lb = lb[tg.index()].as_mut();
        proj_forward(x, t, w, b, lora.get(li, tg), s, dropout, y, lb, xd);
    };

    rmsnorm_rows(x_in, &l.attn_norm, c.rms_eps, h1, &mut a.r1[..t]);
    // With q/k norm the projections land in q_raw, k_raw and are normed into q, k below.
    let qk_norm = l.q_norm.as_deref().zip(l.k_norm.as_deref());
    let (q, k, v) = if qk_norm.is_some() {
        (
            &mut a.q_raw[..t * qd],
            &mut a.k_raw[..t * kvd],
            &mut a.v[..t * kvd],
        )
    } else {
        (&mut a.q[..t * qd], &mut a.k[..t * kvd], &mut a.v[..t * kvd])
    };
    // Without dropout the projections of one input are independent: run them side by side,
    // so a thread that finishes its share of one GEMM picks up work of the next instead of
    // waiting at its join. (Dropout draws from one RNG in a fixed order: sequential.)
    let concurrent = dropout.as_ref().is_none_or(|d| d.p <= 0.0);
    if concurrent {
        let [lq, lk, lv, ..] = &mut a.lora;
        let one = |w: &QMatrix,
                   b: Option<&[f32]>,
                   tg: Target,
                   y: &mut [f32],
                   lb: &mut Option<LoraBuf>| {
            proj_forward(
                h1,
                t,
                w,
                b,
                lora.get(li, tg),
                s,
                &mut None,
                y,
                lb.as_mut(),
                &mut [],
            );
        };
        rayon::join(
            || one(&l.wq, l.bq.as_deref(), Target::Q, q, lq),
            || {
                rayon::join(
                    || one(&l.wk, l.bk.as_deref(), Target::K, k, lk),
                    || one(&l.wv, l.bv.as_deref(), Target::V, v, lv),
                )
            },
        );
    } else {
        pf(
            h1,
            &l.wq,
            l.bq.as_deref(),
            Target::Q,
            q,
            &mut a.lora,
            dropout,
        );
        pf(
            h1,
            &l.wk,
            l.bk.as_deref(),
            Target::K,
            k,
            &mut a.lora,
            dropout,
        );
        pf(
            h1,
            &l.wv,
            l.bv.as_deref(),
            Target::V,
            v,
            &mut a.lora,
            dropout,
        );
    }
    if let Some((qn, kn)) = qk_norm {
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        rmsnorm_rows(
            &a.q_raw[..t * qd],
            qn,
            c.rms_eps,
            &mut a.q[..t * qd],
            &mut a.rq[..t * nh],
        );
        let (kr, rk) = (&a.k_raw[..t * kvd], &mut a.rk[..t * nkv]);
        rmsnorm_rows(kr, kn, c.rms_eps, &mut a.k[..t * kvd], rk);
    }
    let (q, k, v) = (&mut a.q[..t * qd], &mut a.k[..t * kvd], &a.v[..t * kvd]);
    ctx.rotate(model, li, q, qd, false);
    ctx.rotate(model, li, k, kvd, false);
    let att = &mut a.att[..t * qd];
    let lse = &mut a.lse[..t * c.n_heads];
    attention_forward(shape(model, li), ctx.segs, q, k, v, att, lse);
    let o = &mut sc.o[..t * d];
    if let Some(pn) = &l.attn_post_norm {
        let o_pre = &mut a.o_pre[..t * d];
        pf(att, &l.wo, None, Target::O, o_pre, &mut a.lora, dropout);
        rmsnorm_rows(o_pre, pn, c.rms_eps, o, &mut a.r_po[..t]);
    } else {
        pf(att, &l.wo, None, Target::O, o, &mut a.lora, dropout);
    }
    let x_mid = &mut a.x_mid[..t * d];
    add_rmsnorm(x_in, o, &l.ffn_norm, c.rms_eps, x_mid, &mut a.r2[..t], h2);

    let (gate, up) = (&mut a.gate[..t * ffn], &mut a.up[..t * ffn]);
    if concurrent {
        let [.., lg, lu, _] = &mut a.lora;
        let one = |w: &QMatrix, tg: Target, y: &mut [f32], lb: &mut Option<LoraBuf>| {
            proj_forward(
                h2,
                t,
                w,
                None,
                lora.get(li, tg),
                s,
                &mut None,
                y,
                lb.as_mut(),
                &mut [],
            );
        };
        rayon::join(
            || one(&l.w_gate, Target::Gate, gate, lg),
            || one(&l.w_up, Target::Up, up, lu),
        );
    } else {
        pf(
            h2,
            &l.w_gate,
            None,
            Target::Gate,
            gate,
            &mut a.lora,
            dropout,
        );
        pf(h2, &l.w_up, None, Target::Up, up, &mut a.lora, dropout);
    }
    let act = &mut sc.act[..t * ffn];
    gated_act(model, gate, up, act);
    let down = &mut sc.o[..t * d];
    if let Some(pn) = &l.ffn_post_norm {
        let pre = &mut a.down_pre[..t * d];
        pf(
            act,
            &l.w_down,
            None,
            Target::Down,
            pre,
            &mut a.lora,
            dropout,
        );
        rmsnorm_rows(pre, pn, c.rms_eps, down, &mut a.r_pf[..t]);
    } else {
        pf(
            act,
            &l.w_down,
            None,
            Target::Down,
            down,
            &mut a.lora,
            dropout,
        );
    }
    residual_add(x_mid, down, x_out);
}

/// Backward of block `li`: `grad` holds ∂L/∂x_out [T, d] on entry and ∂L/∂x_in on return;
/// LoRA gradients are added into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    model: &Model,
    li: usize,
    lora: &LoraSet,
    ctx: &BatchCtx,
    x_in: &[f32],
    a: &LayerActs,
    sc: &mut Scratch,
    grad: &mut [f32],
    grads: &mut LoraSet,
) {
    let c = &model.config;
    let l = &model.layers[li];
    let (t, d, qd, kvd, ffn) = (ctx.t, c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let s = lora.scale;
    let mut g_slots = grads.layers[li].each_mut().map(|o| o.as_mut());
    let (du, xd) = (&mut sc.du[..], &mut sc.xd[..]);
    // One projection's backward, with this block's LoRA pair, buffers and gradient slot.
    macro_rules! pb {
        ($x:expr, $w:expr, $tg:expr, $dy:expr, $dx:expr, $acc:expr) => {{
            let tg: Target = $tg;
            let (pair, lb) = (lora.get(li, tg), a.lora[tg.index()].as_ref());
            let g = g_slots[tg.index()].take();
            proj_backward(
                $x, t, $w, pair, lb, s, $dy, $dx, $acc, g, &mut *du, &mut *xd,
            );
        }};
    }

    // Recomputed (cheaper than keeping them): h1 = rmsnorm(x_in), h2 = rmsnorm(x_mid),
    // act = silu(gate) · up.
    let (h1, h2) = (&mut sc.h1[..t * d], &mut sc.h2[..t * d]);
    let x_mid = &a.x_mid[..t * d];
    rmsnorm_par(x_in, &l.attn_norm, c.rms_eps, h1);
    rmsnorm_par(x_mid, &l.ffn_norm, c.rms_eps, h2);
    let (gate, up) = (&a.gate[..t * ffn], &a.up[..t * ffn]);
    let act = &mut sc.act[..t * ffn];
    gated_act(model, gate, up, act);

    // MLP: x_out = x_mid + [post_norm](down(f(gate) · up))
    let d_act = &mut sc.d_act[..t * ffn];
    if let Some(pn) = &l.ffn_post_norm {
        let d_down = &mut sc.o[..t * d];
        d_down.copy_from_slice(grad);
        rmsnorm_backward_inplace(&a.down_pre[..t * d], pn, &a.r_pf[..t], d_down);
        pb!(act, &l.w_down, Target::Down, d_down, d_act, false);
    } else {
        pb!(act, &l.w_down, Target::Down, grad, d_act, false);
    }
    let (d_gate, d_up) = (&mut sc.d_gate[..t * ffn], &mut sc.d_up[..t * ffn]);
    match c.block.activation {
        Activation::SwiGlu => swiglu_backward(gate, up, d_act, d_gate, d_up),
        Activation::GeGluTanh => geglu_backward(gate, up, d_act, d_gate, d_up),
    }
    let dh = &mut sc.dh[..t * d];
    // Without dropout, projections of one input run side by side (as in forward), each into
    // its own input-gradient buffer, summed afterwards.
    let concurrent = xd.is_empty();
    if concurrent {
        let [.., gg, gu, _] = &mut g_slots;
        let (du0, du1) = du.split_at_mut(t * lora.rank);
        let dh_up = &mut sc.o[..t * d];
        let (lbg, lbu) = (
            a.lora[Target::Gate.index()].as_ref(),
            a.lora[Target::Up.index()].as_ref(),
        );
        rayon::join(
            || {
                let p = lora.get(li, Target::Gate);
                proj_backward(
                    h2,
                    t,
                    &l.w_gate,
                    p,
                    lbg,
                    s,
                    d_gate,
                    dh,
                    false,
                    gg.take(),
                    du0,
                    &mut [],
                )
            },
            || {
                let p = lora.get(li, Target::Up);
                proj_backward(
                    h2,
                    t,
                    &l.w_up,
                    p,
                    lbu,
                    s,
                    d_up,
                    dh_up,
                    false,
                    gu.take(),
                    du1,
                    &mut [],
                )
            },
        );
        add_into(dh, dh_up, None);
    } else {
        pb!(h2, &l.w_gate, Target::Gate, d_gate, dh, false);
        pb!(h2, &l.w_up, Target::Up, d_up, dh, true);
    }
    // grad becomes ∂L/∂x_mid: the residual plus the path through the ffn norm.
    rmsnorm_backward(x_mid, &l.ffn_norm, &a.r2[..t], dh, grad);

    // Attention: x_mid = x_in + [post_norm](o(attn(rope(qn(q)), rope(kn(k)), v)))
    let d_att = &mut sc.d_att[..t * qd];
    if let Some(pn) = &l.attn_post_norm {
        let d_o = &mut sc.o[..t * d];
        d_o.copy_from_slice(grad);
        rmsnorm_backward_inplace(&a.o_pre[..t * d], pn, &a.r_po[..t], d_o);
        pb!(&a.att[..t * qd], &l.wo, Target::O, d_o, d_att, false);
    } else {
        pb!(&a.att[..t * qd], &l.wo, Target::O, grad, d_att, false);
    }
    let (dq, dk, dv) = (
        &mut sc.dq[..t * qd],
        &mut sc.dk[..t * kvd],
        &mut sc.dv[..t * kvd],
    );
    attention_backward(
        shape(model, li),
        ctx.segs,
        &a.q[..t * qd],
        &a.k[..t * kvd],
        &a.v[..t * kvd],
        &a.att[..t * qd],
        &a.lse[..t * c.n_heads],
        d_att,
        dq,
        dk,
        dv,
    );
    ctx.rotate(model, li, dq, qd, true);
    ctx.rotate(model, li, dk, kvd, true);
    if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        rmsnorm_backward_inplace(&a.q_raw[..t * qd], qn, &a.rq[..t * nh], dq);
        rmsnorm_backward_inplace(&a.k_raw[..t * kvd], kn, &a.rk[..t * nkv], dk);
    }
    if concurrent {
        let [gq, gk, gv, ..] = &mut g_slots;
        let (du0, rest) = du.split_at_mut(t * lora.rank);
        let (du1, du2) = rest.split_at_mut(t * lora.rank);
        let (dh_k, dh_v) = sc.o[..2 * t * d].split_at_mut(t * d);
        let lb = |tg: Target| a.lora[tg.index()].as_ref();
        let one = |w: &QMatrix,
                   tg: Target,
                   dy: &[f32],
                   dx: &mut [f32],
                   g: Option<&mut LoraPair>,
                   du: &mut [f32]| {
            proj_backward(
                h1,
                t,
                w,
                lora.get(li, tg),
                lb(tg),
                s,
                dy,
                dx,
                false,
                g,
                du,
                &mut [],
            );
        };
        rayon::join(
            || one(&l.wq, Target::Q, dq, dh, gq.take(), du0),
            || {
                rayon::join(
                    || one(&l.wk, Target::K, dk, dh_k, gk.take(), du1),
                    || one(&l.wv, Target::V, dv, dh_v, gv.take(), du2),
                )
            },
        );
        add_into(dh, dh_k, Some(dh_v));
    } else {
        pb!(h1, &l.wq, Target::Q, dq, dh, false);
        pb!(h1, &l.wk, Target::K, dk, dh, true);
        pb!(h1, &l.wv, Target::V, dv, dh, true);
    }
    rmsnorm_backward(x_in, &l.attn_norm, &a.r1[..t], dh, grad);
}
