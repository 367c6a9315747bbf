//! CPU kernels. Each has a plain scalar reference (`reference`); the fast paths (portable
//! `Scalar`, `Avx2` = AVX2+FMA+F16C, `Avx512` = AVX-512F/BW/VL on top of that, `Neon` on
//! AArch64) are picked once at run time from the host's CPU features, so one x86-64 binary
//! runs on AVX2 and AVX-512 hosts alike.
//!
//! Every public kernel has a `*_with(isa, ..)` twin so tests can drive each path explicitly;
//! the plain function uses [`active_isa`]. Outputs are deterministic: the same inputs, ISA and
//! thread count give bit-identical results (each output element is reduced in a fixed order by
//! exactly one task, whatever rayon's scheduling).
//!
//! All activations are f32, row-major.
//!
//! Threads: products fan out over rayon's global pool. Run the model from inside the pool
//! (`rayon::scope(|_| ..)` moves a closure onto a pool thread; `ThreadPool::install` likewise)
//! so that each product forks and joins cheaply; called from outside, only big products go
//! parallel (a cold hand-off to the pool costs tens of microseconds, more than a small GEMV
//! takes), so generation from the main thread runs its per-layer GEMVs on one core.
//!
//! Layout: `dispatch` (ISA detection), `matmul` (public products with a weight) and
//! `matmul_f32` (of two f32 matrices) over `gemm` (tiled driver) and `tile` (what the drivers
//! share), `panel` (B panels: dequantize, transpose), `gemv` (few rows of x against W), `gemv_q8`
//! and `x86/gemv_vnni` (generation's int8-activation matrix-vector product, over `quant_x`), `small`
//! (few-row f32 products), `vecops` (vector kernels), `scalar` and `x86/*` (per-ISA code),
//! `reference` (f64 references for tests), `par` (when to go parallel), `arm/neon` (AArch64),
//! `gemm_bf16` + `x86/bf16` (the opt-in reduced-precision GEMM, `Isa::Avx512Bf16`),
//! `gemm_f16` + `arm/fp16` / `x86/f16c` (the opt-in f16-weight GEMM, `Isa::NeonFp16` /
//! `Isa::Avx2F16`).

#[cfg(target_arch = "aarch64")]
mod arm;
mod dispatch;
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_bf16;
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
mod gemm_f16;
mod gemv;
pub mod gemv_q8;
mod matmul;
mod matmul_f32;
mod panel;
mod par;
mod quant_x;
pub mod reference;
mod scalar;
mod small;
mod swiglu;
mod tile;
mod vecops;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{active_isa, available_isas, isa_name, Isa};
pub use matmul::{
    matmul_w, matmul_w_into, matmul_w_lora, matmul_w_with, matmul_wt, matmul_wt_lora,
    matmul_wt_range, matmul_wt_range_with, matmul_wt_with,
};
pub use matmul_f32::{
    matmul_f32_nn, matmul_f32_nn_with, matmul_f32_nt, matmul_f32_nt_with, matmul_f32_tn,
    matmul_f32_tn_with,
};
pub use swiglu::{swiglu_backward, swiglu_backward_with};
pub use vecops::{
    axpy, axpy_with, dequantize_row_with, dot, dot_with, exp_sub_inplace, exp_sub_inplace_with,
    logsumexp, logsumexp_with, max, max_with, rmsnorm, rmsnorm_with, scale, scale_with, silu_mul,
    silu_mul_with, softmax_inplace, softmax_inplace_with,
};
