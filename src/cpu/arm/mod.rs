//! AArch64 SIMD paths. Every function here is an `unsafe fn` with `#[target_feature]`; the
//! dispatchers call them only after `dispatch::check` confirmed the CPU has the features.

pub(crate) mod fp16;
pub(crate) mod gemv_neon;
pub(crate) mod kquant_neon;
pub(crate) mod neon;
pub(crate) mod q5_neon;
