//! Choosing the next token from logits: greedy at temperature 0, else temperature + top-p.

/// A small deterministic PRNG (splitmix64) so `--seed` reproduces a sample exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax does).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Sample with temperature and nucleus (top-p) filtering; temperature ≤ 0 means greedy.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> usize {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // Keep the smallest prefix whose mass reaches top_p.
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p as f64 {
            cut = i + 1;
            break;
        }
    }
    let probs = &probs[..cut];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.next_f64() * mass;
    for &(i, p) in probs {
        if u < p {
            return i;
        }
        u -= p;
    }
    probs[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 3.0];
        assert_eq!(argmax(&logits), 1);
        let mut rng = Rng::new(1);
        assert_eq!(sample(&logits, 0.0, 1.0, &mut rng), 1);
        // A tiny top_p keeps only the single most likely token.
        for _ in 0..20 {
            assert_eq!(sample(&[0.0, 5.0, 1.0], 1.0, 0.01, &mut rng), 1);
        }
        // Full nucleus at high temperature eventually picks every token.
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[sample(&[0.0, 0.5, 1.0], 5.0, 1.0, &mut rng)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
