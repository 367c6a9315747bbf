//! The shapes of one attention call.

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Score scale (1/√head_dim unless the model says otherwise).
    pub scale: f32,
    /// Sliding window: query i sees keys i − window + 1 ..= i; 0: all keys up to i.
    pub window: usize,
}

impl AttnShape {
    pub fn qd(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kvd(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Plain causal attention scaled by 1/√head_dim.
    pub fn causal(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttnShape {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
        }
    }
}
