//! Small element-wise pieces of the backward pass: RMSNorm and SwiGLU gradients.

/// 1 / sqrt(mean(x²) + eps) per row of x [n, d].
pub fn inv_rms(x: &[f32], d: usize, eps: f32) -> Vec<f32> {
    x.chunks_exact(d)
        .map(|row| {
            let ss: f32 = row.iter().map(|v| v * v).sum();
            1.0 / (ss / d as f32 + eps).sqrt()
        })
        .collect()
}

/// y = x · r · w  ⇒  dx += r · (dy⊙w) − x · r³ · (Σ (dy⊙w)⊙x) / d, per row.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], r: &[f32], dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    for (i, ((xr, dyr), dxr)) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .enumerate()
    {
        let ri = r[i];
        let dot: f32 = (0..d).map(|k| dyr[k] * w[k] * xr[k]).sum();
        let c = ri * ri * ri * dot / d as f32;
        for k in 0..d {
            dxr[k] += ri * dyr[k] * w[k] - xr[k] * c;
        }
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// act = silu(gate) · up  ⇒  d_gate = d_act · up · silu'(gate), d_up = d_act · silu(gate).
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    for i in 0..gate.len() {
        let g = gate[i];
        let s = sigmoid(g);
        let silu = g * s;
        d_up[i] = d_act[i] * silu;
        d_gate[i] = d_act[i] * up[i] * (s * (1.0 + g * (1.0 - s)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_and_swiglu_gradients_match_finite_differences() {
        let d = 5;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 3 % 5) as f32 - 2.0) * 0.7)
            .collect();
        let eps = 1e-5;
        let f = |x: &[f32]| -> f64 {
            let r = inv_rms(x, d, eps);
            (0..2 * d)
                .map(|i| (x[i] * r[i / d] * w[i % d] * dy[i]) as f64)
                .sum()
        };
        let r = inv_rms(&x, d, eps);
        let mut dx = vec![0.0; 2 * d];
        rmsnorm_backward(&x, &w, &r, &dy, &mut dx);
        for i in 0..2 * d {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += 1e-3;
            m[i] -= 1e-3;
            let fd = (f(&p) - f(&m)) / 2e-3;
            assert!(
                (fd - dx[i] as f64).abs() < 1e-3,
                "dx[{i}] {fd} vs {}",
                dx[i]
            );
        }
        let (g, u, da) = (
            [-2.0f32, 0.3, 1.7],
            [0.5f32, -1.0, 2.0],
            [1.0f32, 0.5, -0.25],
        );
        let (mut dg, mut du) = ([0.0; 3], [0.0; 3]);
        swiglu_backward(&g, &u, &da, &mut dg, &mut du);
        let act = |g: f32, u: f32| (g * sigmoid(g) * u) as f64;
        for i in 0..3 {
            let fd = (act(g[i] + 1e-3, u[i]) - act(g[i] - 1e-3, u[i])) / 2e-3 * da[i] as f64;
            assert!((fd - dg[i] as f64).abs() < 1e-3);
            let fu = (act(g[i], u[i] + 1e-3) - act(g[i], u[i] - 1e-3)) / 2e-3 * da[i] as f64;
            assert!((fu - du[i] as f64).abs() < 1e-3);
        }
    }
}
