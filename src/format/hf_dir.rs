//! Hugging Face model folder reader: config.json plus model.safetensors, or shards listed in
//! model.safetensors.index.json. Each shard is memory-mapped and tensors are used in place
//! (F32/F16/BF16 become QMatrix views of the mapped bytes; nothing is copied).
//!
//! A safetensors file is: u64 header length n, n bytes of JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the data; offsets are relative to
//! the data start, so a tensor's absolute offset is 8 + n + begin.

use crate::error::{Error, Result};
use crate::model::weights::{Backing, QMatrix};
use crate::quant::{dequantize_row, GgmlType};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
}

struct Entry {
    shard: usize,
    /// The safetensors dtype as written in the header (kept to name it in errors).
    st_dtype: Dtype,
    /// `[out, in]` for a matrix (row-major, last dim fastest).
    shape: Vec<usize>,
    /// Absolute byte offset in the shard (bounds-checked at open).
    offset: usize,
    size: usize,
}

pub struct HfDir {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

fn ggml_type(d: Dtype) -> Option<GgmlType> {
    match d {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

impl HfDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = read_json(&dir.join("config.json"))?;
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        // File names of the shards, and (for an index) which shard each tensor must be in.
        let (files, weight_map): (Vec<String>, Option<BTreeMap<String, String>>) =
            if single.exists() {
                (vec![SINGLE_FILE.to_string()], None)
            } else if index_path.exists() {
                let index = read_json(&index_path)?;
                let map = index["weight_map"].as_object().ok_or_else(|| {
                    Error::format(&index_path, "no \"weight_map\" object in the index")
                })?;
                let mut weight_map = BTreeMap::new();
                for (name, file) in map {
                    let file = file.as_str().ok_or_else(|| {
                        Error::format(
                            &index_path,
                            format!("weight_map entry for '{name}' is not a file name"),
                        )
                    })?;
                    if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                        return Err(Error::format(
                            &index_path,
                            format!("shard name '{file}' for '{name}' is not a plain file name"),
                        ));
                    }
                    weight_map.insert(name.clone(), file.to_string());
                }
                let files: BTreeSet<String> = weight_map.values().cloned().collect();
                (files.into_iter().collect(), Some(weight_map))
            } else {
                return Err(Error::format(
                    dir,
                    format!("no {SINGLE_FILE} or {INDEX_FILE} in this model folder"),
                ));
            };

        let mut hf = HfDir {
            dir: dir.to_path_buf(),
            config,
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for file in &files {
            hf.add_shard(&dir.join(file))?;
        }
        if let Some(weight_map) = weight_map {
            for (name, file) in &weight_map {
                let in_shard = hf
                    .tensors
                    .get(name)
                    .map(|e| hf.shards[e.shard].path.file_name() == Some(file.as_ref()));
                if in_shard != Some(true) {
                    return Err(Error::tensor(
                        dir.join(file),
                        name,
                        format!("listed in {INDEX_FILE} but not found in this shard"),
                    ));
                }
            }
        }
        Ok(hf)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // A shard truncated or rewritten while mapped: see `mapped` (a clear error and exit).
        let mmap = super::mapped::map_file(path, &file)?;
        let (n, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::format(path, format!("invalid safetensors file: {e}")))?;
        let data_start = 8usize
            .checked_add(n)
            .ok_or_else(|| Error::format(path, "header length overflows"))?;
        let shard = self.shards.len();
        for (name, info) in meta.tensors() {
            let (begin, end) = info.data_offsets;
            let range = data_start
                .checked_add(begin)
                .zip(data_start.checked_add(end));
            let (start, stop) = match range {
                Some((s, e)) if s <= e && e <= mmap.len() => (s, e),
                _ => {
                    return Err(Error::tensor(
                        path,
                        &name,
                        format!(
                            "data offsets [{begin}, {end}) lie beyond the end of the file \
                             ({} bytes)",
                            mmap.len()
                        ),
                    ))
                }
            };
            if self.tensors.contains_key(&name) {
                return Err(Error::tensor(path, &name, "appears in more than one shard"));
            }
            self.tensors.insert(
                name,
                Entry {
                    shard,
                    st_dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: start,
                    size: stop - start,
                },
            );
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed config.json.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// An integer config entry.
    pub fn config_usize(&self, key: &str) -> Option<usize> {
        self.config.get(key)?.as_u64().map(|v| v as usize)
    }

    /// A numeric config entry.
    pub fn config_f64(&self, key: &str) -> Option<f64> {
        self.config.get(key)?.as_f64()
    }

    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key)?.as_str()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Shape as stored (row-major, last dim fastest), e.g. `[out, in]` for a linear weight.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// The tensor's type, `None` if missing or not F32/F16/BF16.
    pub fn dtype(&self, name: &str) -> Option<GgmlType> {
        ggml_type(self.tensors.get(name)?.st_dtype)
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Entry and its ggml type, or an error naming the tensor (missing, or unsupported dtype).
    fn entry(&self, name: &str) -> Result<(&Entry, GgmlType)> {
        let e = self.tensors.get(name).ok_or_else(|| {
            Error::tensor(
                &self.dir,
                name,
                "not found in the model's safetensors files",
            )
        })?;
        let ty = ggml_type(e.st_dtype).ok_or_else(|| {
            Error::tensor(
                &self.shards[e.shard].path,
                name,
                format!(
                    "dtype {} is not supported (supported: F32, F16, BF16)",
                    e.st_dtype
                ),
            )
        })?;
        Ok((e, ty))
    }

    /// The raw little-endian bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let (e, _) = self.entry(name)?;
        Ok(&self.shards[e.shard].mmap[e.offset..e.offset + e.size])
    }

    /// A 2-D `[out, in]` tensor as a frozen matrix [rows = out, cols = in], used in place.
    /// A 1-D tensor is one row.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (e, ty) = self.entry(name)?;
        let path = &self.shards[e.shard].path;
        let (rows, cols) = match e.shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("has shape {:?}; expected a 1-D or 2-D tensor", e.shape),
                ))
            }
        };
        let mmap = self.shards[e.shard].mmap.clone();
        QMatrix::new(name, ty, rows, cols, Backing::Mapped(mmap), e.offset)
            .ok_or_else(|| Error::tensor(path, name, "data does not fit its shape"))
    }

    /// A 1-D tensor (norm weight, bias) as f32; leading dims of 1 are allowed.
    pub fn vector_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (e, _) = self.entry(name)?;
        let n = e.shape.last().copied().unwrap_or(1);
        if e.shape.iter().rev().skip(1).any(|&d| d != 1) {
            return Err(Error::tensor(
                &self.shards[e.shard].path,
                name,
                format!("has shape {:?}; expected a 1-D tensor", e.shape),
            ));
        }
        self.to_f32(name, n)
    }

    /// Any tensor as f32 values in stored order (export, tests). Allocates the whole tensor.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (e, _) = self.entry(name)?;
        self.to_f32(name, e.shape.iter().product())
    }

    fn to_f32(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let (_, ty) = self.entry(name)?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; n];
        // The header was validated: size = n * element size.
        dequantize_row(ty, bytes, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use safetensors::tensor::TensorView;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "edge_sft_hf_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.37).sin() * 3.0)
            .collect()
    }

    fn encode(dtype: Dtype, v: &[f32]) -> Vec<u8> {
        match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::I64 => v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
            _ => unreachable!(),
        }
    }

    /// What reading should give: the value rounded to the stored type.
    fn rounded(dtype: Dtype, v: &[f32]) -> Vec<f32> {
        match dtype {
            Dtype::F32 => v.to_vec(),
            Dtype::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            Dtype::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
            _ => unreachable!(),
        }
    }

    /// (name, dtype, shape, seed)
    type Spec = (&'static str, Dtype, Vec<usize>, f32);

    fn write_shard(path: &Path, specs: &[Spec]) {
        let bufs: Vec<Vec<u8>> = specs
            .iter()
            .map(|(_, d, s, seed)| encode(*d, &values(s.iter().product(), *seed)))
            .collect();
        let views: Vec<(String, TensorView)> = specs
            .iter()
            .zip(&bufs)
            .map(|((name, d, s, _), b)| {
                (name.to_string(), TensorView::new(*d, s.clone(), b).unwrap())
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn write_config(dir: &Path) {
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type": "llama", "hidden_size": 8, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap();
    }

    fn specs() -> Vec<Spec> {
        vec![
            (
                "model.layers.0.self_attn.q_proj.weight",
                Dtype::F32,
                vec![6, 8],
                1.0,
            ),
            (
                "model.layers.0.mlp.up_proj.weight",
                Dtype::F16,
                vec![5, 8],
                2.0,
            ),
            ("model.embed_tokens.weight", Dtype::BF16, vec![10, 8], 3.0),
            ("model.norm.weight", Dtype::BF16, vec![8], 4.0),
            (
                "model.layers.0.input_layernorm.weight",
                Dtype::F16,
                vec![8],
                5.0,
            ),
            ("model.rotary.inv_freq_count", Dtype::I64, vec![2], 6.0),
        ]
    }

    fn check_values(h: &HfDir, specs: &[Spec]) {
        for (name, dtype, shape, seed) in specs {
            assert!(h.has(name));
            assert_eq!(h.shape(name), Some(shape.as_slice()));
            if *dtype == Dtype::I64 {
                let e = h.matrix(name).err().unwrap().to_string();
                assert!(e.contains(name) && e.contains("I64"), "{e}");
                continue;
            }
            let want = rounded(*dtype, &values(shape.iter().product(), *seed));
            assert_eq!(h.tensor_f32(name).unwrap(), want, "{name}");
            let m = h.matrix(name).unwrap();
            let (rows, cols) = if shape.len() == 2 {
                (shape[0], shape[1])
            } else {
                (1, shape[0])
            };
            assert_eq!((m.rows, m.cols), (rows, cols));
            assert_eq!(Some(m.dtype), h.dtype(name));
            let mut row = vec![0f32; cols];
            m.dequantize_row(rows - 1, &mut row);
            assert_eq!(row, want[(rows - 1) * cols..], "{name} last row");
            if shape.len() == 1 {
                assert_eq!(h.vector_f32(name).unwrap(), want);
            } else {
                let e = h.vector_f32(name).err().unwrap().to_string();
                assert!(e.contains("expected a 1-D tensor"), "{e}");
            }
        }
    }

    #[test]
    fn single_file_f32_f16_bf16() {
        let dir = temp_dir("single");
        write_config(&dir);
        write_shard(&dir.join(SINGLE_FILE), &specs());
        let h = HfDir::open(&dir).unwrap();
        assert_eq!(h.dir(), dir.as_path());
        assert_eq!(h.config_str("model_type"), Some("llama"));
        assert_eq!(h.config_usize("hidden_size"), Some(8));
        assert_eq!(h.config()["rms_norm_eps"].as_f64(), Some(1e-5));
        assert_eq!(h.tensor_names().len(), 6);
        check_values(&h, &specs());
        let e = h.matrix("lm_head.weight").err().unwrap().to_string();
        assert!(
            e.contains("lm_head.weight") && e.contains("not found"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn write_sharded(dir: &Path) -> Vec<Spec> {
        write_config(dir);
        let all = specs();
        let (a, b) = all.split_at(3);
        write_shard(&dir.join("model-00001-of-00002.safetensors"), a);
        write_shard(&dir.join("model-00002-of-00002.safetensors"), b);
        let mut map = serde_json::Map::new();
        for (i, part) in [a, b].iter().enumerate() {
            for (name, ..) in part.iter() {
                let file = format!("model-0000{}-of-00002.safetensors", i + 1);
                map.insert(name.to_string(), serde_json::Value::String(file));
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
        all
    }

    #[test]
    fn sharded_folder() {
        let dir = temp_dir("sharded");
        let all = write_sharded(&dir);
        let h = HfDir::open(&dir).unwrap();
        assert_eq!(h.shards.len(), 2);
        check_values(&h, &all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_shard_or_tensor_is_named() {
        let dir = temp_dir("missing");
        write_sharded(&dir);
        // A tensor the index puts in shard 2 but shard 2 does not hold.
        let mut index = read_json(&dir.join(INDEX_FILE)).unwrap();
        index["weight_map"]["model.layers.9.mlp.down_proj.weight"] =
            "model-00002-of-00002.safetensors".into();
        std::fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
        let e = HfDir::open(&dir).err().unwrap().to_string();
        assert!(e.contains("model.layers.9.mlp.down_proj.weight"), "{e}");
        assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");

        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
        let e = HfDir::open(&dir).err().unwrap().to_string();
        assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");

        std::fs::remove_file(dir.join(INDEX_FILE)).unwrap();
        let e = HfDir::open(&dir).err().unwrap().to_string();
        assert!(e.contains(SINGLE_FILE) && e.contains(INDEX_FILE), "{e}");

        std::fs::remove_file(dir.join("config.json")).unwrap();
        let e = HfDir::open(&dir).err().unwrap().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_safetensors_is_an_error() {
        let dir = temp_dir("corrupt");
        write_config(&dir);
        let path = dir.join(SINGLE_FILE);
        write_shard(&path, &specs());
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 7, 8, 100, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let e = HfDir::open(&dir).err().unwrap().to_string();
            assert!(e.contains(SINGLE_FILE), "cut {cut}: {e}");
        }
        let mut lying = bytes.clone();
        lying[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&path, &lying).unwrap();
        assert!(HfDir::open(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
