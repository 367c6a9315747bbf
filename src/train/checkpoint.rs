//! Training checkpoints in `OUT/checkpoint/`: `train-{step}.safetensors` (LoRA parameters,
//! AdamW moments and, when the run keeps its best held-out step, that step's parameters; flat
//! f32) and `state.json` (step, data order, config). Each file is written
//! atomically (temp, fsync, rename) and `state.json` goes last, so a kill at any instant leaves
//! the previous complete checkpoint in force.

use super::optim::AdamW;
use super::params::{for_each_tensor, unflatten};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::format::gguf_write::write_atomic;
use crate::format::safetensors_write::{write_f32_safetensors, F32Tensor};
use crate::model::lora::LoraSet;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DIR: &str = "checkpoint";
pub const STATE: &str = "state.json";
/// The tensor holding the kept (best held-out) step's parameters.
const KEPT: &str = "kept_params";

/// Everything but the tensors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub format: u32,
    /// Optimizer updates done.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Example order of the current epoch and the index of the next micro-batch in it.
    pub epoch_order: Vec<usize>,
    pub cursor: usize,
    pub seed: u64,
    /// Fingerprint of the training set (ids of every example) so a resume on other data fails.
    pub data_fingerprint: String,
    pub adam_t: u64,
    pub tensors_file: String,
    /// The tune options the run was started with (JSON), compared on resume.
    pub options: serde_json::Value,
    /// Lowest held-out mean NLL seen so far, and the step it was seen at.
    pub best_eval: Option<f64>,
    #[serde(default)]
    pub best_step: Option<usize>,
    /// The step whose adapter `Keep::Best` keeps (see `heldout::within_noise`) and its NLL.
    #[serde(default)]
    pub kept_step: Option<usize>,
    #[serde(default)]
    pub kept_eval: Option<f64>,
    /// Early stopping: the held-out NLL of the last scoring that made progress (beat the one
    /// before it by more than noise; the base model's score to begin with), and the scorings
    /// since then that did not.
    #[serde(default)]
    pub progress_eval: Option<f64>,
    #[serde(default)]
    pub stalled_evals: usize,
    /// Per-record held-out NLL of the progress reference and of the lowest scoring, for the
    /// paired comparisons of `heldout::record`.
    #[serde(default)]
    pub progress_records: Vec<f64>,
    #[serde(default)]
    pub lowest_records: Vec<f64>,
    /// The base model's held-out mean NLL, scored before the first step (for `report`).
    #[serde(default)]
    pub base_eval: Option<f64>,
}

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join(DIR)
}

/// Save parameters, moments, the kept step's parameters (if any) and state. The kept
/// parameters travel in the checkpoint so a resumed run can always rewrite the adapter files:
/// a kill between the checkpoint and the adapter writes must not leave an older step's adapter
/// in force.
pub fn save(
    out: &Path,
    state: &State,
    params: &LoraSet,
    opt: &AdamW,
    kept: Option<&LoraSet>,
) -> Result<()> {
    let dir = checkpoint_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // Streamed from the live buffers: no flattened copy of the parameters or moments.
    let mut pieces: Vec<&[f32]> = Vec::new();
    for_each_tensor(params, |v| pieces.push(v));
    let n = params.num_params();
    let mut tensors = vec![
        F32Tensor {
            name: "params".into(),
            shape: vec![n],
            pieces,
        },
        F32Tensor {
            name: "adam_m".into(),
            shape: vec![n],
            pieces: vec![&opt.m],
        },
        F32Tensor {
            name: "adam_v".into(),
            shape: vec![n],
            pieces: vec![&opt.v],
        },
    ];
    if let Some(kept) = kept {
        let mut pieces: Vec<&[f32]> = Vec::new();
        for_each_tensor(kept, |v| pieces.push(v));
        tensors.push(F32Tensor {
            name: KEPT.into(),
            shape: vec![n],
            pieces,
        });
    }
    let file = format!("train-{}.safetensors", state.step);
    write_atomic(&dir.join(&file), |f| write_f32_safetensors(f, &tensors))?;
    let mut st = state.clone();
    st.tensors_file = file.clone();
    st.adam_t = opt.t;
    let text = serde_json::to_string_pretty(&st).expect("state serializes");
    write_atomic(&dir.join(STATE), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?;
    // Only now is the older generation unreferenced.
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("train-") && name.ends_with(".safetensors") && name != file {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Whether `out` holds a checkpoint.
pub fn exists(out: &Path) -> bool {
    checkpoint_dir(out).join(STATE).is_file()
}

pub fn load_state(out: &Path) -> Result<State> {
    let path = checkpoint_dir(out).join(STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::format(&path, format!("invalid checkpoint state: {e}")))
}

/// Restore parameters (into a set of the right layout) and optimizer moments; returns the kept
/// step's parameters in the same layout when the checkpoint holds them.
pub fn load_tensors(
    out: &Path,
    state: &State,
    params: &mut LoraSet,
    opt: &mut AdamW,
) -> Result<Option<LoraSet>> {
    let path = checkpoint_dir(out).join(&state.tensors_file);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("invalid safetensors: {e}")))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .map_err(|_| Error::tensor(&path, name, "missing from checkpoint"))?;
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let p = get("params")?;
    if !unflatten(params, &p) {
        return Err(Error::tensor(
            &path,
            "params",
            format!(
                "{} values, but this LoRA layout has {}",
                p.len(),
                params.num_params()
            ),
        ));
    }
    let (m, v) = (get("adam_m")?, get("adam_v")?);
    if m.len() != p.len() || v.len() != p.len() {
        return Err(Error::tensor(
            &path,
            "adam_m",
            "moment length differs from params",
        ));
    }
    opt.m = m;
    opt.v = v;
    opt.t = state.adam_t;
    if st.tensor(KEPT).is_err() {
        return Ok(None);
    }
    let k = get(KEPT)?;
    let mut kept = params.clone();
    if !unflatten(&mut kept, &k) {
        return Err(Error::tensor(
            &path,
            KEPT,
            format!("{} values, but params has {}", k.len(), p.len()),
        ));
    }
    Ok(Some(kept))
}

/// A fingerprint of the training set (every id and mask bit of every example) so a resume on
/// other data, another tokenizer or another template is refused.
pub fn fingerprint(examples: &[Example]) -> String {
    // FNV-1a over every id and mask bit: cheap and stable.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ex in examples {
        for (&id, &m) in ex.ids.iter().zip(&ex.mask) {
            for b in id.to_le_bytes().into_iter().chain([m as u8, 0xff]) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    format!("{h:016x}:{}", examples.len())
}
