//! GeGLU with the tanh-approximated GELU (Gemma's `gelu_pytorch_tanh`): act = gelu(gate) · up,
//! and its gradient. f32 throughout, rows spread over the rayon pool like SwiGLU's.

use rayon::prelude::*;

const PIECE: usize = 16384;
/// √(2/π)
const C: f32 = 0.797_884_6;
const A: f32 = 0.044_715;

/// e^x, branch-free so that loops over it vectorize (libm's `expf`/`tanhf` are calls the
/// compiler cannot vectorize; in a Gemma 3 step they took about a tenth of the time). Range
/// reduction x = n·ln 2 + r with |r| ≤ ½ ln 2 (ln 2 split in two parts so n·ln 2 is exact), a
/// degree-6 Taylor polynomial for e^r (relative error < 2e-7 there), and 2^n built in the
/// exponent bits. Inputs are clamped to [−87, 88], where 2^n stays a normal float.
#[inline(always)]
fn exp_vectorizable(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// tanh(z) = 1 − 2 / (e^{2z} + 1): its absolute error is a few 1e-8, which is what GELU needs
/// (it adds tanh to 1); the relative error near 0 is larger, and nothing here divides by it.
#[inline(always)]
fn tanh_vectorizable(z: f32) -> f32 {
    1.0 - 2.0 / (exp_vectorizable(2.0 * z) + 1.0)
}

/// gelu_tanh(x) = ½ · x · (1 + tanh(√(2/π) · (x + 0.044715 x³))).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_vectorizable(C * (x + A * x * x * x)))
}

/// (gelu_tanh(x), gelu_tanh'(x)).
#[inline]
fn gelu_tanh_grad(x: f32) -> (f32, f32) {
    let t = tanh_vectorizable(C * (x + A * x * x * x));
    let g = 0.5 * x * (1.0 + t);
    let dg = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x);
    (g, dg)
}

/// act = gelu_tanh(gate) · up (one thread).
pub fn gelu_mul(gate: &[f32], up: &[f32], act: &mut [f32]) {
    for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
        *a = gelu_tanh(g) * u;
    }
}

/// act = gelu_tanh(gate) · up, in pieces over the pool.
pub fn gelu_mul_par(gate: &[f32], up: &[f32], act: &mut [f32]) {
    act.par_chunks_mut(PIECE)
        .zip(gate.par_chunks(PIECE).zip(up.par_chunks(PIECE)))
        .for_each(|(a, (g, u))| gelu_mul(g, u, a));
}

/// act = gelu(gate) · up  ⇒  d_gate = d_act · up · gelu'(gate), d_up = d_act · gelu(gate).
pub fn geglu_backward(
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    d_gate
        .par_chunks_mut(PIECE)
        .zip(d_up.par_chunks_mut(PIECE))
        .zip(gate.par_chunks(PIECE))
        .zip(up.par_chunks(PIECE).zip(d_act.par_chunks(PIECE)))
        .for_each(|(((dg, du), g), (u, da))| {
            for i in 0..dg.len() {
                let (gv, dgv) = gelu_tanh_grad(g[i]);
                dg[i] = da[i] * u[i] * dgv;
                du[i] = da[i] * gv;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorizable_tanh_and_exp_match_libm() {
        let mut worst_tanh = 0.0f64;
        let mut worst_exp = 0.0f64;
        for i in -200_000..=200_000 {
            let z = i as f32 * 1e-4; // −20 … 20
            let t = tanh_vectorizable(z) as f64;
            worst_tanh = worst_tanh.max((t - (z as f64).tanh()).abs());
            let x = i as f32 * 4.3e-4; // −86 … 86
            let e = exp_vectorizable(x) as f64;
            worst_exp = worst_exp.max(((e - (x as f64).exp()) / (x as f64).exp()).abs());
        }
        assert!(
            worst_tanh < 2e-7,
            "tanh: worst absolute error {worst_tanh:e}"
        );
        assert!(worst_exp < 5e-7, "exp: worst relative error {worst_exp:e}");
        assert_eq!(tanh_vectorizable(200.0), 1.0);
        assert_eq!(tanh_vectorizable(-200.0), -1.0);
        assert_eq!(tanh_vectorizable(0.0), 0.0);
    }

    #[test]
    fn gelu_matches_known_values_and_gradient_matches_finite_differences() {
        // torch.nn.functional.gelu(x, approximate="tanh") at 1, −0.5, 3.
        for (x, want) in [(1.0f32, 0.841_192), (-0.5, -0.154_286), (3.0, 2.996_363)] {
            assert!((gelu_tanh(x) - want).abs() < 1e-5, "gelu({x})");
        }
        let gate = [-3.0f32, -0.7, 0.0, 0.4, 2.5];
        let up = [0.5f32, -1.0, 2.0, 1.5, -0.3];
        let da = [1.0f32, 0.5, -0.25, 2.0, 1.0];
        let (mut dg, mut du) = ([0.0; 5], [0.0; 5]);
        geglu_backward(&gate, &up, &da, &mut dg, &mut du);
        let f = |g: f64, u: f64| {
            0.5 * g
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
                * u
        };
        for i in 0..5 {
            let (g, u, h) = (gate[i] as f64, up[i] as f64, 1e-4);
            let fd = (f(g + h, u) - f(g - h, u)) / (2.0 * h) * da[i] as f64;
            assert!(
                (fd - dg[i] as f64).abs() < 1e-4,
                "d_gate[{i}] {fd} vs {}",
                dg[i]
            );
            let fu = (f(g, u + h) - f(g, u - h)) / (2.0 * h) * da[i] as f64;
            assert!((fu - du[i] as f64).abs() < 1e-4, "d_up[{i}]");
        }
    }
}
