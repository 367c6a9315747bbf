//! x86-64 SIMD paths. Every function here is an `unsafe fn` with `#[target_feature]`; the
//! dispatchers call them only after `dispatch::check` confirmed the CPU has the features.

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod f16c;
pub(crate) mod gemv_avx2;
pub(crate) mod narrow;
pub(crate) mod pack;
// AVX-512 intrinsics are stable since Rust 1.89 (the crate's declared MSRV is older).
#[clippy::msrv = "1.89"]
pub(crate) mod avx512;
#[clippy::msrv = "1.89"]
pub(crate) mod bf16;
#[clippy::msrv = "1.89"]
pub(crate) mod gemv_avx512;
#[clippy::msrv = "1.89"]
pub(crate) mod gemv_vnni;
#[clippy::msrv = "1.89"]
pub(crate) mod kquant;
#[clippy::msrv = "1.89"]
pub(crate) mod narrow512;
#[clippy::msrv = "1.89"]
pub(crate) mod pack512;
