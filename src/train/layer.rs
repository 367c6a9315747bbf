//! One transformer block for training, written once against the [`Backend`] operations:
//! forward keeping what backward needs, and backward computing activation gradients through
//! the frozen weights plus LoRA parameter gradients. Every buffer comes from the step's
//! [`Arena`](super::arena::Arena); nothing is allocated here.

use super::arena::{LayerActs, Scratch};
use super::backend::{Backend, Mem, Norm};
use super::proj::Dropout;
use crate::model::lora::Target;

type Buf<B> = <<B as Backend>::M as Mem>::Buf;

/// The first `n` values of a buffer, read-only (`r!`) or writable (`w!`), in the backend's
/// memory. Views are taken where they are used, so borrows stay per field.
macro_rules! r {
    ($b:expr, $n:expr) => {
        <B::M as Mem>::view(&$b, $n)
    };
}
macro_rules! w {
    ($b:expr, $n:expr) => {
        <B::M as Mem>::view_mut(&mut $b, $n)
    };
}
pub(crate) use {r, w};

/// Forward of block `li` on T rows: x_in [T, d] → x_out [T, d], keeping what backward needs
/// in `a`.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward<B: Backend>(
    be: &B,
    li: usize,
    lora: &B::Lora,
    ctx: &B::Ctx,
    t: usize,
    x_in: &Buf<B>,
    a: &mut LayerActs<B::M>,
    sc: &mut Scratch<B::M>,
    x_out: &mut Buf<B>,
    dropout: &mut Option<Dropout>,
) {
    let c = be.config();
    let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let (nh, nkv) = (c.n_heads, c.n_kv_heads);
    let (qk_norm, post_norms) = (c.block.qk_norm, c.block.post_norms);
    let s = B::lora_scale(lora);
    // Without dropout the projections of one input are independent: run them side by side,
    // so a thread that finishes its share of one GEMM picks up work of the next instead of
    // waiting at its join. (Dropout draws from one RNG in a fixed order: sequential.)
    let concurrent = dropout.as_ref().is_none_or(|d| d.p <= 0.0);
    let xd_len = <B::M as Mem>::len(&sc.xd);
    // One projection in sequence, with this block's adapter, its saved buffers and dropout.
    macro_rules! pf {
        ($x:expr, $tg:expr, $y:expr) => {{
            let tg: Target = $tg;
            let xd = (xd_len > 0).then(|| w!(sc.xd, xd_len));
            let lb = a.lora[tg.index()].as_mut();
            be.proj_forward(li, tg, $x, t, B::pair(lora, li, tg), s, dropout, $y, lb, xd);
        }};
    }

    be.rmsnorm_rows(
        Norm::Attn(li),
        r!(*x_in, t * d),
        w!(sc.h1, t * d),
        w!(a.r1, t),
    );
    // With q/k norm the projections land in q_raw, k_raw and are normed into q, k below.
    {
        let h1 = r!(sc.h1, t * d);
        let LayerActs {
            q,
            k,
            v,
            q_raw,
            k_raw,
            lora: lbs,
            ..
        } = &mut *a;
        let (qo, ko) = if qk_norm { (q_raw, k_raw) } else { (q, k) };
        if concurrent {
            let [lq, lk, lv, ..] = lbs;
            let one = |tg: Target, y, lb: Option<&mut _>| {
                let p = B::pair(lora, li, tg);
                be.proj_forward(li, tg, h1, t, p, s, &mut None, y, lb, None);
            };
            let (yq, yk, yv) = (w!(*qo, t * qd), w!(*ko, t * kvd), w!(*v, t * kvd));
            let (lq, lk, lv) = (lq.as_mut(), lk.as_mut(), lv.as_mut());
            be.join(
                || one(Target::Q, yq, lq),
                || be.join(|| one(Target::K, yk, lk), || one(Target::V, yv, lv)),
            );
        } else {
            for (tg, y, n) in [
                (Target::Q, qo, qd),
                (Target::K, ko, kvd),
                (Target::V, v, kvd),
            ] {
                let xd = (xd_len > 0).then(|| w!(sc.xd, xd_len));
                let lb = lbs[tg.index()].as_mut();
                let p = B::pair(lora, li, tg);
                be.proj_forward(li, tg, h1, t, p, s, dropout, w!(*y, t * n), lb, xd);
            }
        }
    }
    if qk_norm {
        let (q, rq) = (w!(a.q, t * qd), w!(a.rq, t * nh));
        be.rmsnorm_rows(Norm::Q(li), r!(a.q_raw, t * qd), q, rq);
        let (k, rk) = (w!(a.k, t * kvd), w!(a.rk, t * nkv));
        be.rmsnorm_rows(Norm::K(li), r!(a.k_raw, t * kvd), k, rk);
    }
    be.rotate(ctx, li, w!(a.q, t * qd), qd, false);
    be.rotate(ctx, li, w!(a.k, t * kvd), kvd, false);
    let (q, k, v) = (r!(a.q, t * qd), r!(a.k, t * kvd), r!(a.v, t * kvd));
    be.attention_forward(ctx, li, q, k, v, w!(a.att, t * qd), w!(a.lse, t * nh));
    if post_norms {
        pf!(r!(a.att, t * qd), Target::O, w!(a.o_pre, t * d));
        let (o, r_po) = (w!(sc.o, t * d), w!(a.r_po, t));
        be.rmsnorm_rows(Norm::AttnPost(li), r!(a.o_pre, t * d), o, r_po);
    } else {
        pf!(r!(a.att, t * qd), Target::O, w!(sc.o, t * d));
    }
    let (x_mid, r2, h2) = (w!(a.x_mid, t * d), w!(a.r2, t), w!(sc.h2, t * d));
    be.add_rmsnorm(
        Norm::Ffn(li),
        r!(*x_in, t * d),
        r!(sc.o, t * d),
        x_mid,
        r2,
        h2,
    );

    {
        let h2 = r!(sc.h2, t * d);
        let LayerActs {
            gate,
            up,
            lora: lbs,
            ..
        } = &mut *a;
        if concurrent {
            let [.., lg, lu, _] = lbs;
            let one = |tg: Target, y, lb: Option<&mut _>| {
                let p = B::pair(lora, li, tg);
                be.proj_forward(li, tg, h2, t, p, s, &mut None, y, lb, None);
            };
            let (yg, yu) = (w!(*gate, t * ffn), w!(*up, t * ffn));
            let (lg, lu) = (lg.as_mut(), lu.as_mut());
            be.join(|| one(Target::Gate, yg, lg), || one(Target::Up, yu, lu));
        } else {
            for (tg, y) in [(Target::Gate, gate), (Target::Up, up)] {
                let xd = (xd_len > 0).then(|| w!(sc.xd, xd_len));
                let lb = lbs[tg.index()].as_mut();
                let p = B::pair(lora, li, tg);
                be.proj_forward(li, tg, h2, t, p, s, dropout, w!(*y, t * ffn), lb, xd);
            }
        }
    }
    be.gated_act(r!(a.gate, t * ffn), r!(a.up, t * ffn), w!(sc.act, t * ffn));
    if post_norms {
        pf!(r!(sc.act, t * ffn), Target::Down, w!(a.down_pre, t * d));
        let (o, r_pf) = (w!(sc.o, t * d), w!(a.r_pf, t));
        be.rmsnorm_rows(Norm::FfnPost(li), r!(a.down_pre, t * d), o, r_pf);
    } else {
        pf!(r!(sc.act, t * ffn), Target::Down, w!(sc.o, t * d));
    }
    be.residual_add(r!(a.x_mid, t * d), r!(sc.o, t * d), w!(*x_out, t * d));
}

/// Backward of block `li` on T rows: `grad` holds ∂L/∂x_out [T, d] on entry and ∂L/∂x_in on
/// return; LoRA gradients are added into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward<B: Backend>(
    be: &B,
    li: usize,
    lora: &B::Lora,
    ctx: &B::Ctx,
    t: usize,
    x_in: &Buf<B>,
    a: &LayerActs<B::M>,
    sc: &mut Scratch<B::M>,
    grad: &mut Buf<B>,
    grads: &mut B::Lora,
) {
    let c = be.config();
    let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let (nh, nkv) = (c.n_heads, c.n_kv_heads);
    let (qk_norm, post_norms) = (c.block.qk_norm, c.block.post_norms);
    let (s, rank) = (B::lora_scale(lora), B::lora_rank(lora));
    let mut g_slots = B::grad_slots(grads, li);
    let (du_len, xd_len) = (<B::M as Mem>::len(&sc.du), <B::M as Mem>::len(&sc.xd));
    // Without dropout, projections of one input run side by side (as in forward), each into
    // its own input-gradient buffer, summed afterwards.
    let concurrent = xd_len == 0;
    // One projection's backward in sequence, with this block's pair, buffers and grad slot.
    macro_rules! pb {
        ($x:expr, $tg:expr, $dy:expr, $dx:expr, $acc:expr) => {{
            let tg: Target = $tg;
            let (pair, lb) = (B::pair(lora, li, tg), a.lora[tg.index()].as_ref());
            let g = g_slots[tg.index()].take();
            let xd = (xd_len > 0).then(|| w!(sc.xd, xd_len));
            let du = w!(sc.du, du_len);
            be.proj_backward(li, tg, $x, t, pair, lb, s, $dy, $dx, $acc, g, du, xd);
        }};
    }

    // Recomputed (cheaper than keeping them): h1 = rmsnorm(x_in), h2 = rmsnorm(x_mid),
    // act = f(gate) · up.
    be.rmsnorm(Norm::Attn(li), r!(*x_in, t * d), w!(sc.h1, t * d));
    be.rmsnorm(Norm::Ffn(li), r!(a.x_mid, t * d), w!(sc.h2, t * d));
    let (gate, up) = (r!(a.gate, t * ffn), r!(a.up, t * ffn));
    be.gated_act(gate, up, w!(sc.act, t * ffn));

    // MLP: x_out = x_mid + [post_norm](down(f(gate) · up))
    if post_norms {
        be.copy(w!(sc.o, t * d), r!(*grad, t * d));
        let (x, r_pf) = (r!(a.down_pre, t * d), r!(a.r_pf, t));
        be.rmsnorm_backward_inplace(Norm::FfnPost(li), x, r_pf, w!(sc.o, t * d));
        let (act, d_down) = (r!(sc.act, t * ffn), r!(sc.o, t * d));
        pb!(act, Target::Down, d_down, w!(sc.d_act, t * ffn), false);
    } else {
        let (act, dy) = (r!(sc.act, t * ffn), r!(*grad, t * d));
        pb!(act, Target::Down, dy, w!(sc.d_act, t * ffn), false);
    }
    let (d_gate, d_up) = (w!(sc.d_gate, t * ffn), w!(sc.d_up, t * ffn));
    be.gated_act_backward(gate, up, r!(sc.d_act, t * ffn), d_gate, d_up);
    let h2 = r!(sc.h2, t * d);
    let (d_gate, d_up) = (r!(sc.d_gate, t * ffn), r!(sc.d_up, t * ffn));
    if concurrent {
        let [.., gg, gu, _] = &mut g_slots;
        let (du0, du1) = <B::M as Mem>::split_mut(w!(sc.du, du_len), t * rank);
        let (dh, dh_up) = (w!(sc.dh, t * d), w!(sc.o, t * d));
        let (lbg, lbu) = (
            a.lora[Target::Gate.index()].as_ref(),
            a.lora[Target::Up.index()].as_ref(),
        );
        let (pg, pu) = (
            B::pair(lora, li, Target::Gate),
            B::pair(lora, li, Target::Up),
        );
        let (gg, gu) = (gg.take(), gu.take());
        be.join(
            || {
                be.proj_backward(
                    li,
                    Target::Gate,
                    h2,
                    t,
                    pg,
                    lbg,
                    s,
                    d_gate,
                    dh,
                    false,
                    gg,
                    du0,
                    None,
                )
            },
            || {
                be.proj_backward(
                    li,
                    Target::Up,
                    h2,
                    t,
                    pu,
                    lbu,
                    s,
                    d_up,
                    dh_up,
                    false,
                    gu,
                    du1,
                    None,
                )
            },
        );
        be.add_into(w!(sc.dh, t * d), r!(sc.o, t * d), None);
    } else {
        pb!(h2, Target::Gate, d_gate, w!(sc.dh, t * d), false);
        pb!(h2, Target::Up, d_up, w!(sc.dh, t * d), true);
    }
    // grad becomes ∂L/∂x_mid: the residual plus the path through the ffn norm.
    let (x_mid, r2) = (r!(a.x_mid, t * d), r!(a.r2, t));
    be.rmsnorm_backward(Norm::Ffn(li), x_mid, r2, r!(sc.dh, t * d), w!(*grad, t * d));

    // Attention: x_mid = x_in + [post_norm](o(attn(rope(qn(q)), rope(kn(k)), v)))
    let att = r!(a.att, t * qd);
    if post_norms {
        be.copy(w!(sc.o, t * d), r!(*grad, t * d));
        let (x, r_po) = (r!(a.o_pre, t * d), r!(a.r_po, t));
        be.rmsnorm_backward_inplace(Norm::AttnPost(li), x, r_po, w!(sc.o, t * d));
        pb!(att, Target::O, r!(sc.o, t * d), w!(sc.d_att, t * qd), false);
    } else {
        pb!(
            att,
            Target::O,
            r!(*grad, t * d),
            w!(sc.d_att, t * qd),
            false
        );
    }
    let (dq, dk, dv) = (w!(sc.dq, t * qd), w!(sc.dk, t * kvd), w!(sc.dv, t * kvd));
    let (q, k, v) = (r!(a.q, t * qd), r!(a.k, t * kvd), r!(a.v, t * kvd));
    let (lse, d_att) = (r!(a.lse, t * nh), r!(sc.d_att, t * qd));
    be.attention_backward(ctx, li, q, k, v, att, lse, d_att, dq, dk, dv);
    be.rotate(ctx, li, w!(sc.dq, t * qd), qd, true);
    be.rotate(ctx, li, w!(sc.dk, t * kvd), kvd, true);
    if qk_norm {
        let (x, r) = (r!(a.q_raw, t * qd), r!(a.rq, t * nh));
        be.rmsnorm_backward_inplace(Norm::Q(li), x, r, w!(sc.dq, t * qd));
        let (x, r) = (r!(a.k_raw, t * kvd), r!(a.rk, t * nkv));
        be.rmsnorm_backward_inplace(Norm::K(li), x, r, w!(sc.dk, t * kvd));
    }
    let h1 = r!(sc.h1, t * d);
    let (dq, dk, dv) = (r!(sc.dq, t * qd), r!(sc.dk, t * kvd), r!(sc.dv, t * kvd));
    if concurrent {
        let [gq, gk, gv, ..] = &mut g_slots;
        let (du0, rest) = <B::M as Mem>::split_mut(w!(sc.du, du_len), t * rank);
        let (du1, du2) = <B::M as Mem>::split_mut(rest, t * rank);
        let (dh_k, dh_v) = <B::M as Mem>::split_mut(w!(sc.o, 2 * t * d), t * d);
        let dh = w!(sc.dh, t * d);
        let one = |tg: Target, dy, dx, g, du| {
            let (p, lb) = (B::pair(lora, li, tg), a.lora[tg.index()].as_ref());
            be.proj_backward(li, tg, h1, t, p, lb, s, dy, dx, false, g, du, None);
        };
        let (gq, gk, gv) = (gq.take(), gk.take(), gv.take());
        be.join(
            || one(Target::Q, dq, dh, gq, du0),
            || {
                be.join(
                    || one(Target::K, dk, dh_k, gk, du1),
                    || one(Target::V, dv, dh_v, gv, du2),
                )
            },
        );
        let (ok, ov) = <B::M as Mem>::split(r!(sc.o, 2 * t * d), t * d);
        be.add_into(w!(sc.dh, t * d), ok, Some(ov));
    } else {
        pb!(h1, Target::Q, dq, w!(sc.dh, t * d), false);
        pb!(h1, Target::K, dk, w!(sc.dh, t * d), true);
        pb!(h1, Target::V, dv, w!(sc.dh, t * d), true);
    }
    let (x, r1) = (r!(*x_in, t * d), r!(a.r1, t));
    be.rmsnorm_backward(Norm::Attn(li), x, r1, r!(sc.dh, t * d), w!(*grad, t * d));
}
