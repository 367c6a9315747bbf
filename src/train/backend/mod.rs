//! The boundary between the training step and the hardware it runs on (issue 18).
//!
//! `layer.rs` and `step.rs` are written once against [`Backend`]: the operations a block's
//! forward and backward need, on buffers of the backend's own kind ([`Mem`]). The CPU backend
//! ([`Cpu`]) implements each operation with the SIMD kernels on host slices, so after
//! monomorphization its step is the code it was before the boundary existed; the CUDA backend
//! (`crate::device::cuda_backend`, feature `cuda`) implements them with `kernels/*.cu` on
//! device memory.
//!
//! Frozen weights are named, not passed: an operation says which block and which projection or
//! norm it wants ([`Norm`], [`Target`]), and the backend reads it from wherever it keeps the
//! model (the CPU: the memory-mapped GGUF; CUDA: its own device copy of the quantized blocks).

mod cpu;

pub use cpu::{Cpu, Host};

use super::batch::Batch;
use super::proj::Dropout;
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::lora::Target;

/// Where a step's f32 buffers live, and how they are cut into the first-`n`-values views the
/// operations take. A buffer is sized for the arena's longest batch; a batch of T rows uses
/// the first T rows of it.
pub trait Mem: Sync {
    type Buf: Send + Sync;
    type View<'a>: Copy + Send + Sync
    where
        Self: 'a;
    type ViewMut<'a>: Send
    where
        Self: 'a;
    /// The fused loss's scratch (grown to the largest call, then kept).
    type LossScratch: Send;

    /// `n` zeros.
    fn alloc(&self, n: usize) -> Self::Buf;
    fn len(b: &Self::Buf) -> usize;
    /// The first `n` values of `b`.
    fn view(b: &Self::Buf, n: usize) -> Self::View<'_>;
    fn view_mut(b: &mut Self::Buf, n: usize) -> Self::ViewMut<'_>;
    /// Values `[0, mid)` and `[mid, ..)` of one view, as two.
    fn split<'a>(v: Self::View<'a>, mid: usize) -> (Self::View<'a>, Self::View<'a>);
    fn split_mut<'a>(v: Self::ViewMut<'a>, mid: usize) -> (Self::ViewMut<'a>, Self::ViewMut<'a>);
    /// Scratch for the fused loss on up to `rows` rows of width `d` over `vocab` outputs.
    fn loss_scratch(&self, rows: usize, d: usize, vocab: usize) -> Self::LossScratch;
    /// Its size in f32 values (for the arena's memory report).
    fn loss_scratch_values(s: &Self::LossScratch) -> usize;
}

/// Which frozen norm weight an operation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Attn(usize),
    Ffn(usize),
    /// Per-head q / k norms (Gemma 3, Qwen 3): width head_dim.
    Q(usize),
    K(usize),
    /// Gemma 3's norms on the attention and MLP outputs.
    AttnPost(usize),
    FfnPost(usize),
    Final,
}

type V<'a, B> = <<B as Backend>::M as Mem>::View<'a>;
type VM<'a, B> = <<B as Backend>::M as Mem>::ViewMut<'a>;

/// What one adapted projection keeps for backward.
pub struct LoraBuf<M: Mem> {
    /// [T, in]: 0 or 1/(1−p) per input value; empty without dropout.
    pub keep: M::Buf,
    /// [T, rank] = scale · (dropout(x) · Aᵀ)
    pub us: M::Buf,
}

/// The operations of a training step. Shapes are given per operation; `t` is the batch's rows.
/// Views carry exactly the values an operation reads or writes (the first T rows).
pub trait Backend: Sync {
    type M: Mem;
    /// Per micro-batch: records, positions, RoPE tables.
    type Ctx: Sync;
    /// The LoRA parameters (and, with the same layout, their gradients).
    type Lora: Sync;
    type Pair: Send + Sync;

    fn mem(&self) -> &Self::M;
    fn config(&self) -> &ModelConfig;
    fn batch_ctx(&self, batch: &Batch) -> Result<Self::Ctx>;

    fn pair(l: &Self::Lora, li: usize, tg: Target) -> Option<&Self::Pair>;
    /// Block `li`'s gradient slots, indexed by `Target::index()`, each usable on its own.
    fn grad_slots(g: &mut Self::Lora, li: usize) -> [Option<&mut Self::Pair>; 7];
    /// alpha / rank.
    fn lora_scale(l: &Self::Lora) -> f32;
    fn lora_rank(l: &Self::Lora) -> usize;
    fn lora_targets(l: &Self::Lora) -> &[Target];

    /// Runs `a` and `b`, side by side where the backend gains from it (the CPU's pool).
    fn join<A, B>(&self, a: A, b: B)
    where
        A: FnOnce() + Send,
        B: FnOnce() + Send;

    /// x [T, d] = embedding rows of `tokens`.
    fn embed(&self, tokens: &[u32], x: VM<'_, Self>) -> Result<()>;
    /// dst = src (same length).
    fn copy(&self, dst: VM<'_, Self>, src: V<'_, Self>);
    fn zero(&self, dst: VM<'_, Self>);
    /// dst [rows.len(), width] = src rows `rows` of src [.., width].
    fn gather_rows(&self, src: V<'_, Self>, rows: &[usize], width: usize, dst: VM<'_, Self>);
    /// dst rows `rows` = src [rows.len(), width]; other rows of dst untouched.
    fn scatter_rows(&self, src: V<'_, Self>, rows: &[usize], width: usize, dst: VM<'_, Self>);

    /// h [n, w] = rmsnorm(x) · weight, r [n] = 1/rms per row (w = the norm's width).
    fn rmsnorm_rows(&self, n: Norm, x: V<'_, Self>, h: VM<'_, Self>, r: VM<'_, Self>);
    /// h = rmsnorm(x) · weight without keeping 1/rms (a recompute in backward).
    fn rmsnorm(&self, n: Norm, x: V<'_, Self>, h: VM<'_, Self>);
    /// x_mid = x + o; h = rmsnorm(x_mid) · weight; r = 1/rms(x_mid).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm(
        &self,
        n: Norm,
        x: V<'_, Self>,
        o: V<'_, Self>,
        x_mid: VM<'_, Self>,
        r: VM<'_, Self>,
        h: VM<'_, Self>,
    );
    /// dx = dy back through h = rmsnorm(x) · weight, added to dx (the residual's gradient).
    fn rmsnorm_backward(
        &self,
        n: Norm,
        x: V<'_, Self>,
        r: V<'_, Self>,
        dy: V<'_, Self>,
        dx: VM<'_, Self>,
    );
    /// g = g back through rmsnorm, in place (no residual).
    fn rmsnorm_backward_inplace(&self, n: Norm, x: V<'_, Self>, r: V<'_, Self>, g: VM<'_, Self>);

    /// RoPE of block `li` on every row of x [T, width] (inverse: its transpose, for gradients).
    fn rotate(&self, ctx: &Self::Ctx, li: usize, x: VM<'_, Self>, width: usize, inverse: bool);

    /// act [T, ffn] = f(gate) · up, f the model's gated activation.
    fn gated_act(&self, gate: V<'_, Self>, up: V<'_, Self>, act: VM<'_, Self>);
    fn gated_act_backward(
        &self,
        gate: V<'_, Self>,
        up: V<'_, Self>,
        d_act: V<'_, Self>,
        d_gate: VM<'_, Self>,
        d_up: VM<'_, Self>,
    );

    /// Causal attention of block `li` within each record: q [T, q_dim], k, v [T, kv_dim] →
    /// att [T, q_dim], lse [T, heads].
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        ctx: &Self::Ctx,
        li: usize,
        q: V<'_, Self>,
        k: V<'_, Self>,
        v: V<'_, Self>,
        att: VM<'_, Self>,
        lse: VM<'_, Self>,
    );
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        ctx: &Self::Ctx,
        li: usize,
        q: V<'_, Self>,
        k: V<'_, Self>,
        v: V<'_, Self>,
        att: V<'_, Self>,
        lse: V<'_, Self>,
        d_att: V<'_, Self>,
        dq: VM<'_, Self>,
        dk: VM<'_, Self>,
        dv: VM<'_, Self>,
    );

    /// out = a + b.
    fn residual_add(&self, a: V<'_, Self>, b: V<'_, Self>, out: VM<'_, Self>);
    /// dst += a (+ b).
    fn add_into(&self, dst: VM<'_, Self>, a: V<'_, Self>, b: Option<V<'_, Self>>);

    /// y [T, out] = x · Wᵀ (+ bias) (+ scale·B·A·dropout(x)) for projection `tg` of block `li`,
    /// keeping the LoRA activations in `lb`. `xd` [T, in] is scratch, given only with dropout.
    #[allow(clippy::too_many_arguments)]
    fn proj_forward(
        &self,
        li: usize,
        tg: Target,
        x: V<'_, Self>,
        t: usize,
        pair: Option<&Self::Pair>,
        scale: f32,
        dropout: &mut Option<Dropout>,
        y: VM<'_, Self>,
        lb: Option<&mut LoraBuf<Self::M>>,
        xd: Option<VM<'_, Self>>,
    );
    /// dx [T, in] (+)= dy · W (+ the LoRA path); LoRA gradients added into `grad`. `du`
    /// [T, rank] is scratch, and `xd` [T, in], given only with dropout.
    #[allow(clippy::too_many_arguments)]
    fn proj_backward(
        &self,
        li: usize,
        tg: Target,
        x: V<'_, Self>,
        t: usize,
        pair: Option<&Self::Pair>,
        lb: Option<&LoraBuf<Self::M>>,
        scale: f32,
        dy: V<'_, Self>,
        dx: VM<'_, Self>,
        accumulate: bool,
        grad: Option<&mut Self::Pair>,
        du: VM<'_, Self>,
        xd: Option<VM<'_, Self>>,
    );

    /// The fused response-masked NLL on hidden rows hs [m, d] (final-normed) against
    /// `targets` [m]: returns each row's NLL and writes dhs [m, d] = grad_scale · ∂Σnll/∂hs.
    fn fused_nll(
        &self,
        sc: &mut <Self::M as Mem>::LossScratch,
        hs: V<'_, Self>,
        targets: &[u32],
        grad_scale: f32,
        dhs: VM<'_, Self>,
    ) -> Vec<f64>;
}
