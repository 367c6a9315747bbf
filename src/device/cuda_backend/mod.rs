//! The training step on an NVIDIA GPU: [`Backend`] implemented with `kernels/*.cu` (compiled at
//! run time by NVRTC) and cuBLAS, on device memory ([`Dev`]).
//!
//! - Frozen weights are uploaded once in their GGUF blocks; each projection decodes its weight
//!   to f32 in a device scratch (dequant.cu) right before a cuBLAS SGEMM reads it. Norm and bias
//!   vectors and the output matrix are uploaded too; the embedding lookup runs on the host.
//! - All work goes to one stream, in call order: `join` runs its two closures one after the
//!   other, and the scratch buffers shared by operations (behind a mutex) are reused safely
//!   because the stream executes everything in submission order.
//! - LoRA dropout is not supported: [`check_supported`] says so before a run, and
//!   `proj_forward` panics if it is handed dropout anyway.
//!
//! A trainer uploads its LoRA parameters ([`CudaLora::upload`]), runs
//! [`crate::train::step::step_on`] with an arena from `Arena::new_in(cuda.mem(), ...)`,
//! downloads the gradients ([`CudaLora::download_into`]) and steps AdamW on the host.
//!
//! Files: `kernels` (NVRTC, the function table), `mem` (buffers, views, copies), `weights` (the
//! frozen model on the device), `gemm` (row-major cuBLAS), `lora` (adapters on the device),
//! `ops` (norms, RoPE, activations, adds, gathers), `attention`, `proj` (the projections),
//! `loss` (the fused NLL).

mod attention;
mod gemm;
mod kernels;
mod lora;
mod loss;
mod mem;
mod ops;
mod proj;
mod weights;

pub use lora::{CudaLora, CudaPair};
pub use mem::{DView, DViewMut, Dev, DevBuf, LossScratch};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::lora::Target;
use crate::model::Model;
use crate::train::backend::{Backend, LoraBuf, Mem, Norm};
use crate::train::batch::Batch;
use crate::train::proj::Dropout;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use kernels::Kernels;
use std::sync::{Arc, Mutex, MutexGuard};
use weights::DevModel;

/// Panics with the operation's name when a CUDA call fails inside an operation (operations
/// return `()`: a failed launch there is a broken device or a bug, not a user error).
pub(crate) fn check<T, E: std::fmt::Debug>(what: &str, r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("cuda backend: {what}: {e:?}"))
}

const NO_DROPOUT: &str = "cuda backend: LoRA dropout is not supported on CUDA (train with \
                          lora_dropout = 0 or on the CPU; check_supported refuses it up front)";

/// Whether a run with these settings can use the CUDA backend: LoRA dropout (p > 0) cannot.
pub fn check_supported(dropout: Option<&Dropout>) -> Result<()> {
    match dropout {
        Some(d) if d.p > 0.0 => Err(Error::Usage(NO_DROPOUT.into())),
        _ => Ok(()),
    }
}

/// Scratch shared by operations, grown on demand: the decoded f32 weight of a projection, a
/// throwaway 1/rms per row, attention's delta [heads, rows] and its head-padded copies.
struct Scratch {
    decode: CudaSlice<f32>,
    rows: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    /// q, k, v, o, do, dq, dk, dv with head_dim padded to a multiple of 32 (attention.cu's
    /// warp layout), used only when the model's head_dim is not one.
    pad: [CudaSlice<f32>; 8],
}

/// Replaces `b` with `n` zeros if it holds fewer.
fn grow(stream: &Arc<CudaStream>, b: &mut CudaSlice<f32>, n: usize) {
    if b.len() < n {
        *b = mem::zeros(stream, n);
    }
}

/// The CUDA backend for one model on GPU 0.
pub struct Cuda<'m> {
    model: &'m Model,
    ctx: Arc<CudaContext>,
    mem: Dev,
    blas: CudaBlas,
    k: Kernels,
    w: DevModel,
    scratch: Mutex<Scratch>,
}

/// A micro-batch on the device: each row's record and position (attention.cu's seg / pos) and
/// the RoPE cos/sin tables [T, head_dim / 2] of its positions, global then local.
pub struct CudaCtx {
    t: usize,
    seg: CudaSlice<i32>,
    pos: CudaSlice<i32>,
    cos: Vec<CudaSlice<f32>>,
    sin: Vec<CudaSlice<f32>>,
}

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Usage(format!("cuda backend: {what}: {e:?}"))
}

impl<'m> Cuda<'m> {
    /// Opens GPU 0, compiles the kernels for it and uploads the frozen weights of `model`.
    pub fn new(model: &'m Model) -> Result<Cuda<'m>> {
        let c = &model.config;
        let hd = c.head_dim;
        if hd == 0 || !hd.is_multiple_of(2) || hd.next_multiple_of(32) > 256 {
            return Err(Error::Usage(format!(
                "cuda backend: head_dim {hd} is not supported (even, at most 256)"
            )));
        }
        if c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
            return Err(Error::Usage(format!(
                "cuda backend: {} query heads over {} kv heads",
                c.n_heads, c.n_kv_heads
            )));
        }
        // SAFETY: only dlopens the libraries to see whether they exist; no symbol is called.
        let (driver, blas) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
            )
        };
        if !driver {
            return Err(Error::Usage(
                "cuda backend: no CUDA driver (libcuda.so) on this machine".into(),
            ));
        }
        if !blas {
            return Err(Error::Usage(
                "cuda backend: libcublas was not found; install the CUDA toolkit's cuBLAS \
                 (JetPack ships it) or put it on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(0).map_err(|e| err("opening GPU 0", e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("creating a cuBLAS handle", e))?;
        let k = Kernels::load(&ctx)?;
        let w = DevModel::upload(&stream, model)?;
        let scratch = Scratch {
            decode: mem::zeros(&stream, w.max_decode),
            rows: mem::zeros(&stream, 0),
            delta: mem::zeros(&stream, 0),
            pad: std::array::from_fn(|_| mem::zeros(&stream, 0)),
        };
        stream
            .synchronize()
            .map_err(|e| err("uploading the model", e))?;
        Ok(Cuda {
            model,
            ctx,
            mem: Dev { stream },
            blas,
            k,
            w,
            scratch: Mutex::new(scratch),
        })
    }

    /// The stream every operation runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.mem.stream
    }

    /// Waits for every operation submitted so far.
    pub fn synchronize(&self) -> Result<()> {
        self.mem
            .stream
            .synchronize()
            .map_err(|e| err("synchronizing", e))
    }

    /// Makes the context current on the calling thread (raw driver and cuBLAS calls need it).
    fn bind(&self) {
        check("binding the context", self.ctx.bind_to_thread());
    }

    fn scratch(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<'m> Backend for Cuda<'m> {
    type M = Dev;
    type Ctx = CudaCtx;
    type Lora = CudaLora;
    type Pair = CudaPair;

    fn mem(&self) -> &Dev {
        &self.mem
    }
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }
    fn batch_ctx(&self, batch: &Batch) -> Result<CudaCtx> {
        let t = batch.len();
        let mut seg: Vec<i32> = (0..t).map(|r| -1 - r as i32).collect();
        for (si, s) in batch.segments.iter().enumerate() {
            for v in &mut seg[s.start..s.start + s.len] {
                *v = si as i32;
            }
        }
        let pos: Vec<usize> = batch.positions.iter().map(|&p| p as usize).collect();
        let pos_i: Vec<i32> = batch.positions.iter().map(|&p| p as i32).collect();
        let s = self.stream();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for table in self.model.rope_tables(&pos) {
            let half = table.rope.half_dim();
            let (mut c, mut sn) = (vec![0f32; t * half], vec![0f32; t * half]);
            for (i, &p) in pos.iter().enumerate() {
                let r = i * half..(i + 1) * half;
                table.rope.angles(p, &mut c[r.clone()], &mut sn[r]);
            }
            cos.push(mem::upload_f32(s, &c));
            sin.push(mem::upload_f32(s, &sn));
        }
        Ok(CudaCtx {
            t,
            seg: mem::upload_i32(s, &seg),
            pos: mem::upload_i32(s, &pos_i),
            cos,
            sin,
        })
    }

    fn pair(l: &CudaLora, li: usize, tg: Target) -> Option<&CudaPair> {
        l.get(li, tg)
    }
    fn grad_slots(g: &mut CudaLora, li: usize) -> [Option<&mut CudaPair>; 7] {
        g.layers[li].each_mut().map(|o| o.as_mut())
    }
    fn lora_scale(l: &CudaLora) -> f32 {
        l.scale
    }
    fn lora_rank(l: &CudaLora) -> usize {
        l.rank
    }
    fn lora_targets(l: &CudaLora) -> &[Target] {
        &l.targets
    }

    /// One stream: `a`, then `b`.
    fn join<A, B>(&self, a: A, b: B)
    where
        A: FnOnce() + Send,
        B: FnOnce() + Send,
    {
        a();
        b();
    }

    fn embed(&self, tokens: &[u32], x: DViewMut<'_>) -> Result<()> {
        let mut host = vec![0f32; x.len];
        self.model.embed_into(tokens, &mut host)?;
        self.bind();
        mem::upload_to(self.stream(), &host, x);
        Ok(())
    }
    fn copy(&self, dst: DViewMut<'_>, src: DView<'_>) {
        self.bind();
        mem::copy_dtod(self.stream(), &dst, src);
    }
    fn zero(&self, dst: DViewMut<'_>) {
        self.bind();
        mem::memset_zero(self.stream(), &dst);
    }
    fn gather_rows(&self, src: DView<'_>, rows: &[usize], width: usize, dst: DViewMut<'_>) {
        self.rows_op(true, src, rows, width, dst);
    }
    fn scatter_rows(&self, src: DView<'_>, rows: &[usize], width: usize, dst: DViewMut<'_>) {
        self.rows_op(false, src, rows, width, dst);
    }

    fn rmsnorm_rows(&self, n: Norm, x: DView<'_>, h: DViewMut<'_>, r: DViewMut<'_>) {
        self.rms_forward(n, x, &h, Some(&r));
    }
    fn rmsnorm(&self, n: Norm, x: DView<'_>, h: DViewMut<'_>) {
        self.rms_forward(n, x, &h, None);
    }
    fn add_rmsnorm(
        &self,
        n: Norm,
        x: DView<'_>,
        o: DView<'_>,
        x_mid: DViewMut<'_>,
        r: DViewMut<'_>,
        h: DViewMut<'_>,
    ) {
        self.bind();
        mem::copy_dtod(self.stream(), &x_mid, x);
        self.axpy(o, 1.0, &x_mid);
        self.rms_forward(n, x_mid.as_view(), &h, Some(&r));
    }
    fn rmsnorm_backward(
        &self,
        n: Norm,
        x: DView<'_>,
        r: DView<'_>,
        dy: DView<'_>,
        dx: DViewMut<'_>,
    ) {
        self.rms_backward(n, x, r, dy.ptr, dy.len, &dx, true);
    }
    fn rmsnorm_backward_inplace(&self, n: Norm, x: DView<'_>, r: DView<'_>, g: DViewMut<'_>) {
        self.rms_backward(n, x, r, g.ptr, g.len, &g, false);
    }

    fn rotate(&self, ctx: &CudaCtx, li: usize, x: DViewMut<'_>, width: usize, inverse: bool) {
        self.rope(ctx, li, &x, width, inverse);
    }

    fn gated_act(&self, gate: DView<'_>, up: DView<'_>, act: DViewMut<'_>) {
        self.glu_forward(gate, up, &act);
    }
    fn gated_act_backward(
        &self,
        gate: DView<'_>,
        up: DView<'_>,
        d_act: DView<'_>,
        d_gate: DViewMut<'_>,
        d_up: DViewMut<'_>,
    ) {
        self.glu_backward(gate, up, d_act, &d_gate, &d_up);
    }

    fn attention_forward(
        &self,
        ctx: &CudaCtx,
        li: usize,
        q: DView<'_>,
        k: DView<'_>,
        v: DView<'_>,
        att: DViewMut<'_>,
        lse: DViewMut<'_>,
    ) {
        self.attn_forward(ctx, li, q, k, v, &att, &lse);
    }
    fn attention_backward(
        &self,
        ctx: &CudaCtx,
        li: usize,
        q: DView<'_>,
        k: DView<'_>,
        v: DView<'_>,
        att: DView<'_>,
        lse: DView<'_>,
        d_att: DView<'_>,
        dq: DViewMut<'_>,
        dk: DViewMut<'_>,
        dv: DViewMut<'_>,
    ) {
        let ins = attention::BwdIn {
            q,
            k,
            v,
            o: att,
            lse,
            d_o: d_att,
        };
        self.attn_backward(ctx, li, ins, &dq, &dk, &dv);
    }

    fn residual_add(&self, a: DView<'_>, b: DView<'_>, out: DViewMut<'_>) {
        self.bind();
        mem::copy_dtod(self.stream(), &out, a);
        self.axpy(b, 1.0, &out);
    }
    fn add_into(&self, dst: DViewMut<'_>, a: DView<'_>, b: Option<DView<'_>>) {
        self.axpy(a, 1.0, &dst);
        if let Some(b) = b {
            self.axpy(b, 1.0, &dst);
        }
    }

    fn proj_forward(
        &self,
        li: usize,
        tg: Target,
        x: DView<'_>,
        t: usize,
        pair: Option<&CudaPair>,
        scale: f32,
        dropout: &mut Option<Dropout>,
        y: DViewMut<'_>,
        lb: Option<&mut LoraBuf<Dev>>,
        _xd: Option<DViewMut<'_>>,
    ) {
        if dropout.as_ref().is_some_and(|d| d.p > 0.0) {
            panic!("{NO_DROPOUT}");
        }
        self.proj_fwd(li, tg, x, t, pair, scale, &y, lb.map(|b| &*b));
    }
    fn proj_backward(
        &self,
        li: usize,
        tg: Target,
        x: DView<'_>,
        t: usize,
        pair: Option<&CudaPair>,
        lb: Option<&LoraBuf<Dev>>,
        scale: f32,
        dy: DView<'_>,
        dx: DViewMut<'_>,
        accumulate: bool,
        grad: Option<&mut CudaPair>,
        du: DViewMut<'_>,
        _xd: Option<DViewMut<'_>>,
    ) {
        let lora = match (pair, lb, grad) {
            (Some(p), Some(lb), Some(g)) => Some((p, lb, g)),
            _ => None,
        };
        self.proj_bwd(li, tg, x, t, lora, scale, dy, &dx, accumulate, &du);
    }

    fn fused_nll(
        &self,
        sc: &mut LossScratch,
        hs: DView<'_>,
        targets: &[u32],
        grad_scale: f32,
        dhs: DViewMut<'_>,
    ) -> Vec<f64> {
        self.nll(sc, hs, targets, grad_scale, &dhs)
    }
}

impl Dev {
    /// Copies host values into the first `src.len()` values of a buffer of this memory.
    pub fn upload(&self, src: &[f32], dst: &mut DevBuf) {
        mem::upload_to(&self.stream, src, Dev::view_mut(dst, src.len()));
    }

    /// A buffer's first `n` values on the host.
    pub fn download(&self, src: &DevBuf, n: usize) -> Vec<f32> {
        mem::download(&self.stream, Dev::view(src, n))
    }
}
