//! LoRA adapters as the model uses them: per layer, per target projection, a pair (A, B) in f32
//! computing `W·x + scale·B·(A·x)`, with `scale = α/r` (or `α/√r` for rsLoRA).

/// The seven projections LoRA can target, in PEFT module naming.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// PEFT / Hugging Face module name (`q_proj`, ...).
    pub fn hf_module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// Parent module in the HF layer (`self_attn` or `mlp`).
    pub fn hf_parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Short CLI name (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn short(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// Parse either the short or the PEFT name.
    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.short() == s || t.hf_module() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One adapted projection: A [rank, in], B [out, rank], both row-major f32.
/// `B` rows are in the *model's* row order (GGUF-permuted for Llama q/k when the base is a
/// Llama GGUF); readers and writers convert to and from Hugging Face order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// All adapters of a model. `layers[i][target.index()]` is `None` where not adapted.
#[derive(Debug, Clone)]
pub struct LoraSet {
    pub rank: usize,
    pub alpha: f32,
    pub scale: f32,
    pub targets: Vec<Target>,
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

impl LoraSet {
    pub fn get(&self, layer: usize, t: Target) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[t.index()].as_ref())
    }

    pub fn num_params(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .map(|p| p.a.len() + p.b.len())
            .sum()
    }
}

/// Permutation between Hugging Face and llama.cpp row order for Llama's Q and K projections.
/// HF rotates halves (i, i + d/2) of each head; GGUF stores the rows so that RoPE rotates
/// adjacent pairs (2i, 2i + 1). Row `h*d + 2i + j` of the GGUF matrix is HF row `h*d + j*d/2 + i`.
pub fn gguf_row_from_hf_row(hf_row: usize, head_dim: usize) -> usize {
    let head = hf_row / head_dim;
    let r = hf_row % head_dim;
    let half = head_dim / 2;
    let (j, i) = (r / half, r % half);
    head * head_dim + 2 * i + j
}

/// Reorder the rows of a [rows, cols] matrix from HF order to GGUF order (`to_gguf`) or back.
pub fn permute_rows(
    m: &[f32],
    rows: usize,
    cols: usize,
    head_dim: usize,
    to_gguf: bool,
) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for hf in 0..rows {
        let g = gguf_row_from_hf_row(hf, head_dim);
        let (src, dst) = if to_gguf { (hf, g) } else { (g, hf) };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&m[src * cols..(src + 1) * cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_convert_hf_to_gguf() {
        // convert_hf_to_gguf: w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols)
        // => new row (h, i, j) = old row (h, j, i), i.e. new[h*d + 2i + j] = old[h*d + j*d/2 + i].
        let (heads, d) = (3, 8);
        let rows = heads * d;
        let m: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        let g = permute_rows(&m, rows, 1, d, true);
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    assert_eq!(g[h * d + 2 * i + j], (h * d + j * d / 2 + i) as f32);
                }
            }
        }
        assert_eq!(permute_rows(&g, rows, 1, d, false), m);
    }
}
