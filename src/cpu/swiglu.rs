//! SwiGLU's gradient, the element-wise half of the MLP backward:
//! act = silu(g)·u  ⇒  d_g = d_act · u · s·(1 + g·(1 − s)),  d_u = d_act · g·s,  s = σ(g).
//! One SIMD pass per ISA (the exp is the same polynomial the ISA's `silu_mul` uses).

use super::dispatch::{active_isa, check, Isa};

/// d_gate, d_up from gate, up, d_act (all the same length).
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    swiglu_backward_with(active_isa(), gate, up, d_act, d_gate, d_up)
}

pub fn swiglu_backward_with(
    isa: Isa,
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    check(isa);
    let n = gate.len();
    assert!(
        up.len() == n && d_act.len() == n && d_gate.len() == n && d_up.len() == n,
        "swiglu_backward: length mismatch"
    );
    match isa.f32_isa() {
        // SAFETY: check(isa) verified the CPU features; all slices hold n values.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86_512(gate, up, d_act, d_gate, d_up) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86_256(gate, up, d_act, d_gate, d_up) },
        _ => scalar(gate, up, d_act, d_gate, d_up, 0),
    }
}

fn scalar(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32], from: usize) {
    for i in from..g.len() {
        let s = 1.0 / (1.0 + (-g[i]).exp());
        du[i] = da[i] * g[i] * s;
        dg[i] = da[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn x86_512(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    use super::x86::avx512::exp;
    use std::arch::x86_64::*;
    let n = g.len();
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i + 16 <= n {
        let gv = _mm512_loadu_ps(g.as_ptr().add(i));
        let uv = _mm512_loadu_ps(u.as_ptr().add(i));
        let dav = _mm512_loadu_ps(da.as_ptr().add(i));
        let s = _mm512_div_ps(
            one,
            _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), gv))),
        );
        _mm512_storeu_ps(
            du.as_mut_ptr().add(i),
            _mm512_mul_ps(dav, _mm512_mul_ps(gv, s)),
        );
        // s·(1 + g·(1 − s))
        let ds = _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one));
        _mm512_storeu_ps(
            dg.as_mut_ptr().add(i),
            _mm512_mul_ps(_mm512_mul_ps(dav, uv), ds),
        );
        i += 16;
    }
    scalar(g, u, da, dg, du, i);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn x86_256(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    use super::x86::avx2::exp;
    use std::arch::x86_64::*;
    let n = g.len();
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i + 8 <= n {
        let gv = _mm256_loadu_ps(g.as_ptr().add(i));
        let uv = _mm256_loadu_ps(u.as_ptr().add(i));
        let dav = _mm256_loadu_ps(da.as_ptr().add(i));
        let s = _mm256_div_ps(
            one,
            _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), gv))),
        );
        _mm256_storeu_ps(
            du.as_mut_ptr().add(i),
            _mm256_mul_ps(dav, _mm256_mul_ps(gv, s)),
        );
        let ds = _mm256_mul_ps(s, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one));
        _mm256_storeu_ps(
            dg.as_mut_ptr().add(i),
            _mm256_mul_ps(_mm256_mul_ps(dav, uv), ds),
        );
        i += 8;
    }
    scalar(g, u, da, dg, du, i);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::available_isas;

    /// Every path against the scalar formula in f64, over a length with a SIMD tail and
    /// gates from −20 to 20 (saturated sigmoid on both sides).
    #[test]
    fn every_path_matches_the_f64_formula() {
        let n = 16 * 7 + 5;
        let g: Vec<f32> = (0..n).map(|i| -20.0 + 40.0 * i as f32 / n as f32).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.3).collect();
        let da: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
        for isa in available_isas() {
            let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
            swiglu_backward_with(isa, &g, &u, &da, &mut dg, &mut du);
            for i in 0..n {
                let (gi, ui, di) = (g[i] as f64, u[i] as f64, da[i] as f64);
                let s = 1.0 / (1.0 + (-gi).exp());
                let want_du = di * gi * s;
                let want_dg = di * ui * s * (1.0 + gi * (1.0 - s));
                // The SIMD exp is accurate to a few ulp: 1e-5 relative (plus 1e-6 absolute
                // where the value underflows toward 0) is far below the f32 golden tolerance.
                for (got, want) in [(du[i], want_du), (dg[i], want_dg)] {
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * want.abs() + 1e-6,
                        "{isa:?} i={i}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
