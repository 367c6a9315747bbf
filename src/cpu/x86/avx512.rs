//! TEMPORARY: delegates to the portable kernels until the SIMD code lands.
#![allow(clippy::missing_safety_doc)]

use crate::cpu::scalar;
use crate::quant::GgmlType;

pub(crate) const MR: usize = scalar::MR;
pub(crate) const NR: usize = scalar::NR;
pub(crate) use scalar::kernel;

pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    scalar::dot(a, b)
}
pub(crate) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    scalar::axpy(alpha, x, y)
}
pub(crate) unsafe fn scale(alpha: f32, x: &mut [f32]) {
    scalar::scale(alpha, x)
}
pub(crate) unsafe fn mul3(x: &[f32], s: f32, w: &[f32], out: &mut [f32]) {
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = v * s * wi;
    }
}
pub(crate) unsafe fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
    scalar::silu_mul(g, u, o)
}
pub(crate) unsafe fn max(x: &[f32]) -> f32 {
    scalar::max(x)
}
pub(crate) unsafe fn sum_exp(x: &[f32], m: f32) -> f32 {
    scalar::sum_exp(x, m)
}
pub(crate) unsafe fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
    scalar::exp_sub_inplace(x, m)
}
pub(crate) unsafe fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    crate::quant::dequantize_row(ty, src, dst)
}
