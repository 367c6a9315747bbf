//! Element-wise pieces of a block: RMSNorm (fused with the residual add) and its gradient,
//! SwiGLU's gradient. Rows are spread over the rayon pool when there are enough of them.

use crate::cpu;
use rayon::prelude::*;

/// Rows per parallel piece: enough work (a few thousand values) to beat the fork cost.
fn rows_per_piece(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

fn row_inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss = cpu::dot(row, row);
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// h [n, d] = rmsnorm(x) · w and r [n] = 1/rms of each row of x [n, d].
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, h: &mut [f32], r: &mut [f32]) {
    let d = w.len();
    let rp = rows_per_piece(d);
    h.par_chunks_mut(rp * d)
        .zip(r.par_chunks_mut(rp))
        .zip(x.par_chunks(rp * d))
        .for_each(|((hc, rc), xc)| {
            for (ri, xr) in rc.iter_mut().zip(xc.chunks_exact(d)) {
                *ri = row_inv_rms(xr, eps);
            }
            cpu::rmsnorm(xc, w, eps, d, hc);
        });
}

/// h [n, d] = rmsnorm(x) · w, rows spread over the pool.
pub fn rmsnorm_par(x: &[f32], w: &[f32], eps: f32, h: &mut [f32]) {
    let d = w.len();
    let rp = rows_per_piece(d);
    h.par_chunks_mut(rp * d)
        .zip(x.par_chunks(rp * d))
        .for_each(|(hc, xc)| cpu::rmsnorm(xc, w, eps, d, hc));
}

/// act = silu(gate) · up, in pieces over the pool.
pub fn silu_mul_par(gate: &[f32], up: &[f32], act: &mut [f32]) {
    const PIECE: usize = 16384;
    act.par_chunks_mut(PIECE)
        .zip(gate.par_chunks(PIECE).zip(up.par_chunks(PIECE)))
        .for_each(|(a, (g, u))| cpu::silu_mul(g, u, a));
}

/// x_mid = x + o, then h = rmsnorm(x_mid) · w and r = 1/rms(x_mid), in one pass over rows.
pub fn add_rmsnorm(
    x: &[f32],
    o: &[f32],
    w: &[f32],
    eps: f32,
    x_mid: &mut [f32],
    r: &mut [f32],
    h: &mut [f32],
) {
    let d = w.len();
    let rp = rows_per_piece(d);
    x_mid
        .par_chunks_mut(rp * d)
        .zip(h.par_chunks_mut(rp * d))
        .zip(r.par_chunks_mut(rp))
        .zip(x.par_chunks(rp * d).zip(o.par_chunks(rp * d)))
        .for_each(|(((mc, hc), rc), (xc, oc))| {
            for ((m, &a), &b) in mc.iter_mut().zip(xc).zip(oc) {
                *m = a + b;
            }
            for (ri, mr) in rc.iter_mut().zip(mc.chunks_exact(d)) {
                *ri = row_inv_rms(mr, eps);
            }
            cpu::rmsnorm(mc, w, eps, d, hc);
        });
}

/// out = a + b.
pub fn residual_add(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(16384)
        .zip(a.par_chunks(16384).zip(b.par_chunks(16384)))
        .for_each(|(oc, (ac, bc))| {
            for ((o, &x), &y) in oc.iter_mut().zip(ac).zip(bc) {
                *o = x + y;
            }
        });
}

/// dst += a (+ b): partial input gradients of projections that ran side by side.
pub fn add_into(dst: &mut [f32], a: &[f32], b: Option<&[f32]>) {
    dst.par_chunks_mut(16384).enumerate().for_each(|(i, dc)| {
        let r = i * 16384..i * 16384 + dc.len();
        for (o, &x) in dc.iter_mut().zip(&a[r.clone()]) {
            *o += x;
        }
        if let Some(b) = b {
            for (o, &x) in dc.iter_mut().zip(&b[r]) {
                *o += x;
            }
        }
    });
}

/// y = x · r · w  ⇒  dx += r · (dy⊙w) − x · r³ · (Σ (dy⊙w)⊙x) / d, per row.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], r: &[f32], dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    let rp = rows_per_piece(d);
    dx.par_chunks_mut(rp * d)
        .zip(r.par_chunks(rp))
        .zip(x.par_chunks(rp * d).zip(dy.par_chunks(rp * d)))
        .for_each(|((dxc, rc), (xc, dyc))| {
            for (((xr, dyr), dxr), &ri) in xc
                .chunks_exact(d)
                .zip(dyc.chunks_exact(d))
                .zip(dxc.chunks_exact_mut(d))
                .zip(rc)
            {
                let dot: f32 = (0..d).map(|k| dyr[k] * w[k] * xr[k]).sum();
                let c = ri * ri * ri * dot / d as f32;
                for k in 0..d {
                    dxr[k] += ri * dyr[k] * w[k] - xr[k] * c;
                }
            }
        });
}

/// As `rmsnorm_backward`, but g holds dy on entry and dx on return (dx overwritten, not added).
pub fn rmsnorm_backward_inplace(x: &[f32], w: &[f32], r: &[f32], g: &mut [f32]) {
    let d = w.len();
    let rp = rows_per_piece(d);
    let n = r.len();
    g[..n * d]
        .par_chunks_mut(rp * d)
        .zip(r.par_chunks(rp))
        .zip(x[..n * d].par_chunks(rp * d))
        .for_each(|((gc, rc), xc)| {
            for ((xr, gr), &ri) in xc.chunks_exact(d).zip(gc.chunks_exact_mut(d)).zip(rc) {
                let dot: f32 = (0..d).map(|k| gr[k] * w[k] * xr[k]).sum();
                let c = ri * ri * ri * dot / d as f32;
                for k in 0..d {
                    gr[k] = ri * gr[k] * w[k] - xr[k] * c;
                }
            }
        });
}

#[cfg(test)]
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
    const PIECE: usize = 16384;
    d_gate
        .par_chunks_mut(PIECE)
        .zip(d_up.par_chunks_mut(PIECE))
        .zip(gate.par_chunks(PIECE))
        .zip(up.par_chunks(PIECE).zip(d_act.par_chunks(PIECE)))
        .for_each(|(((dg, du), g), (u, da))| cpu::swiglu_backward(g, u, da, dg, du));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 / sqrt(mean(x²) + eps) per row of x [n, d].
    fn inv_rms(x: &[f32], d: usize, eps: f32) -> Vec<f32> {
        x.chunks_exact(d).map(|row| row_inv_rms(row, eps)).collect()
    }

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
        let mut g = dy.clone();
        rmsnorm_backward_inplace(&x, &w, &r, &mut g);
        assert!(g.iter().zip(&dx).all(|(a, b)| (a - b).abs() < 1e-6));
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
