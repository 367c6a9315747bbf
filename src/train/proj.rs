//! One adapted projection of a block: the frozen weight's GEMM with the LoRA term folded
//! into its output tiles (forward), and the input gradient plus the LoRA parameter gradients
//! (backward), with PEFT's optional dropout on the adapter input.

use super::backend::{Host, LoraBuf};
use crate::cpu;
use crate::infer::sampling::Rng;
use crate::model::lora::LoraPair;
use crate::model::weights::QMatrix;

/// LoRA dropout on the adapter input (PEFT's `lora_dropout`), reproducible from a seed.
#[derive(Clone)]
pub struct Dropout {
    pub p: f32,
    pub rng: Rng,
}

/// A projection with optional bias and LoRA, for inference (no dropout, nothing kept).
pub fn proj_forward_infer(
    x: &[f32],
    t: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    pair: Option<&LoraPair>,
    scale: f32,
) -> Vec<f32> {
    let mut y = vec![0.0f32; t * w.rows];
    let mut lb = pair.map(|p| LoraBuf::<Host> {
        keep: Vec::new(),
        us: vec![0.0; t * p.rank],
    });
    proj_forward(
        x,
        t,
        w,
        bias,
        pair,
        scale,
        &mut None,
        &mut y,
        lb.as_mut(),
        &mut [],
    );
    y
}

/// y [T, w.rows] = x · Wᵀ (+ b) (+ scale·B·A·dropout(x)), keeping the LoRA activations in `lb`.
/// `xd` is [T, in] scratch, used only with dropout.
#[allow(clippy::too_many_arguments)]
pub(crate) fn proj_forward(
    x: &[f32],
    t: usize,
    w: &QMatrix,
    bias: Option<&[f32]>,
    pair: Option<&LoraPair>,
    scale: f32,
    dropout: &mut Option<Dropout>,
    y: &mut [f32],
    lb: Option<&mut LoraBuf<Host>>,
    xd: &mut [f32],
) {
    let add_bias = |y: &mut [f32]| {
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(w.rows) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    };
    let (Some(p), Some(lb)) = (pair, lb) else {
        cpu::matmul_wt(x, t, w, y);
        add_bias(y);
        return;
    };
    let n_in = t * p.in_dim;
    let xin: &[f32] = match dropout.as_mut().filter(|d| d.p > 0.0) {
        Some(dr) => {
            let f = 1.0 / (1.0 - dr.p);
            let (keep, xd) = (&mut lb.keep[..n_in], &mut xd[..n_in]);
            for ((k, o), &v) in keep.iter_mut().zip(xd.iter_mut()).zip(x) {
                *k = if dr.rng.next_f64() < dr.p as f64 {
                    0.0
                } else {
                    f
                };
                *o = v * *k;
            }
            xd
        }
        None => x,
    };
    let us = &mut lb.us[..t * p.rank]; // [T, rank]
    cpu::matmul_f32_nt(xin, &p.a, us, t, p.in_dim, p.rank, false);
    cpu::scale(scale, us);
    // y = x·Wᵀ + us·Bᵀ, the LoRA term added inside the GEMM's output tiles.
    cpu::matmul_wt_lora(x, t, w, y, us, &p.b);
    add_bias(y);
}

/// dx [T, in] (+)= dy · W (+ the LoRA path), and LoRA gradients into `grad`. `du` is
/// [T, rank] scratch, `xd` [T, in] scratch (dropout only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn proj_backward(
    x: &[f32],
    t: usize,
    w: &QMatrix,
    pair: Option<&LoraPair>,
    lb: Option<&LoraBuf<Host>>,
    scale: f32,
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    grad: Option<&mut LoraPair>,
    du: &mut [f32],
    xd: &mut [f32],
) {
    let (Some(p), Some(lb), Some(g)) = (pair, lb, grad) else {
        cpu::matmul_w_into(dy, t, w, dx, accumulate);
        return;
    };
    let us = &lb.us[..t * p.rank];
    // dB [out, rank] += dyᵀ · us
    cpu::matmul_f32_tn(dy, us, &mut g.b, p.out_dim, t, p.rank, true);
    // du [T, rank] = scale · dy · B
    let du = &mut du[..t * p.rank];
    cpu::matmul_f32_nn(dy, &p.b, du, t, p.out_dim, p.rank, false);
    cpu::scale(scale, du);
    let n_in = t * p.in_dim;
    if lb.keep.is_empty() {
        // dA [rank, in] += duᵀ · x ; dx (+)= dy·W + du·A, the LoRA term fused in the GEMM.
        cpu::matmul_f32_tn(du, x, &mut g.a, p.rank, t, p.in_dim, true);
        cpu::matmul_w_lora(dy, t, w, dx, accumulate, du, &p.a);
    } else {
        cpu::matmul_w_into(dy, t, w, dx, accumulate);
        let (keep, xd) = (&lb.keep[..n_in], &mut xd[..n_in]);
        for ((o, &v), &k) in xd.iter_mut().zip(x).zip(keep) {
            *o = v * k;
        }
        cpu::matmul_f32_tn(du, xd, &mut g.a, p.rank, t, p.in_dim, true);
        cpu::matmul_f32_nn(du, &p.a, xd, t, p.rank, p.in_dim, false);
        for ((o, &v), &k) in dx.iter_mut().zip(xd.iter()).zip(keep) {
            *o += v * k;
        }
    }
}
