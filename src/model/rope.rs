//! Rotary position embeddings, computed in f32 the way Hugging Face does
//! (inv_freq = 1 / θ^(2i/d), angle = pos · inv_freq).

use super::config::RopeStyle;

/// inv_freq[i] = 1 / θ^(2i/d), in f32 as transformers computes it.
fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Llama 3's RoPE scaling as frequency divisors: transformers' `_compute_llama3_parameters`
/// (the same per-frequency rule llama.cpp's converter writes into `rope_freqs.weight`):
/// wavelengths shorter than original/high_freq_factor keep their frequency, longer than
/// original/low_freq_factor are slowed by `factor`, and those between are interpolated.
pub fn llama3_factors(
    head_dim: usize,
    theta: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_positions: f32,
) -> Vec<f32> {
    let low_wavelen = original_max_positions / low_freq_factor;
    let high_wavelen = original_max_positions / high_freq_factor;
    inv_freq(head_dim, theta)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original_max_positions / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// Precomputed inverse frequencies for one head size.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>, // [head_dim / 2]
    head_dim: usize,
    style: RopeStyle,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32, style: RopeStyle) -> Self {
        Rope {
            inv_freq: inv_freq(head_dim, theta),
            head_dim,
            style,
        }
    }

    /// As `new`, each inverse frequency divided by its factor (Llama 3 RoPE scaling as
    /// llama.cpp applies `rope_freqs.weight`); no factors: `new`.
    pub fn with_factors(head_dim: usize, theta: f32, style: RopeStyle, factors: &[f32]) -> Self {
        let mut r = Self::new(head_dim, theta, style);
        if factors.len() == r.inv_freq.len() {
            r.inv_freq
                .iter_mut()
                .zip(factors)
                .for_each(|(f, k)| *f /= k);
        }
        r
    }

    /// Fill `cos`/`sin` ([head_dim / 2]) for one position.
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let a = pos as f32 * f;
            cos[i] = a.cos();
            sin[i] = a.sin();
        }
    }

    /// Rotate every head of one row `x` ([n_heads * head_dim]) for the given angles.
    /// `inverse` applies the transpose rotation (used by backward).
    pub fn apply(&self, x: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
        let d = self.head_dim;
        let half = d / 2;
        let sgn = if inverse { -1.0 } else { 1.0 };
        for head in x.chunks_exact_mut(d) {
            for i in 0..half {
                let (a, b) = match self.style {
                    RopeStyle::Half => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                let (c, s) = (cos[i], sgn * sin[i]);
                head[a] = x0 * c - x1 * s;
                head[b] = x1 * c + x0 * s;
            }
        }
    }

    pub fn half_dim(&self) -> usize {
        self.head_dim / 2
    }
}

/// cos/sin of one RoPE for a list of positions: [n, head_dim / 2] each.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub rope: Rope,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(rope: Rope, positions: impl Iterator<Item = usize>) -> Self {
        let half = rope.half_dim();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions {
            let at = cos.len();
            cos.resize(at + half, 0.0);
            sin.resize(at + half, 0.0);
            rope.angles(p, &mut cos[at..], &mut sin[at..]);
        }
        RopeTable { rope, cos, sin }
    }

    /// Rotate row `i` (one position, any number of heads).
    pub fn apply_row(&self, i: usize, row: &mut [f32], inverse: bool) {
        let half = self.rope.half_dim();
        let (c, s) = (&self.cos[i * half..][..half], &self.sin[i * half..][..half]);
        self.rope.apply(row, c, s, inverse);
    }

    /// Rotate the first `t` rows of x [t, width], rows spread over the pool.
    pub fn rotate(&self, x: &mut [f32], t: usize, width: usize, inverse: bool) {
        use rayon::prelude::*;
        let rows = (8192 / width.max(1)).max(1);
        x[..t * width]
            .par_chunks_mut(rows * width)
            .enumerate()
            .for_each(|(c, piece)| {
                for (r, row) in piece.chunks_exact_mut(width).enumerate() {
                    self.apply_row(c * rows + r, row, inverse);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_rotation_and_styles_agree_under_permutation() {
        let d = 8;
        let r_half = Rope::new(d, 10000.0, RopeStyle::Half);
        let r_int = Rope::new(d, 10000.0, RopeStyle::Interleaved);
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut c, mut s) = (vec![0.0; d / 2], vec![0.0; d / 2]);
        r_half.angles(7, &mut c, &mut s);
        let mut y = x.clone();
        r_half.apply(&mut y, &c, &s, false);
        let mut z = y.clone();
        r_half.apply(&mut z, &c, &s, true);
        for (a, b) in x.iter().zip(&z) {
            assert!((a - b).abs() < 1e-6);
        }
        // Interleaved RoPE on GGUF-permuted rows equals half RoPE on HF rows, permuted.
        let perm = crate::model::lora::permute_rows(&x, 2 * d, 1, d, true);
        let mut yi = perm.clone();
        r_int.apply(&mut yi, &c, &s, false);
        let back = crate::model::lora::permute_rows(&yi, 2 * d, 1, d, false);
        for (a, b) in y.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
