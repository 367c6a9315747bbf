//! Folding a LoRA adapter into its base model: for every adapted projection,
//! `W' = W + scale·B·A` (scale = α/r, or α/√r for rsLoRA), written as a new GGUF file that any
//! GGUF runtime loads without an adapter.
//!
//! The adapter must be in the base's row order, as [`crate::format::gguf_adapter::read_any_adapter`]
//! returns it for a GGUF base (llama.cpp's RoPE-permuted q/k rows for Llama), so `B·A` adds to
//! the stored rows directly.
//!
//! The output keeps every metadata key of the base (tokenizer, chat template, ...) and every
//! tensor in the base's order. Tensors the adapter does not touch are copied byte for byte (a
//! tied output projection stays tied: no `output.weight` appears). Touched tensors are
//! dequantized, the delta is added in f32, and the result is quantized again with ggml's
//! reference quantizers, in [`default_merge_type`] of the base tensor's type or in
//! [`MergeOptions::dtype`].
//!
//! Memory: the header and tensor table are written first, then one tensor at a time, read with
//! plain file reads (not through the memory map), so the peak is about one tensor in its stored
//! and its output type plus the adapter, whatever the model's size.

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, TensorInfo, Value};
use crate::format::gguf_adapter::gguf_base_name;
use crate::format::gguf_stream::{GgufStreamWriter, TensorSpec};
use crate::model::lora::{LoraPair, LoraSet, Target};
use crate::quant::dequant::quantize_row;
use crate::quant::{dequantize_row, GgmlType};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How to merge.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Type of the merged (adapted) tensors; `None`: [`default_merge_type`] of each base
    /// tensor's type.
    /// Untouched tensors are always copied as they are.
    pub dtype: Option<GgmlType>,
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    /// Tensors in the output (the same as in the base).
    pub tensors: usize,
    /// Tensors that received a LoRA delta.
    pub merged: usize,
    /// Size of the output file in bytes.
    pub file_bytes: u64,
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a model mostly in `ty`; `None` for
/// types that are only ever one part of a mix (Q8_K).
pub fn ftype_of(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 15, // Q4_K_M
        GgmlType::Q5_K => 17, // Q5_K_M
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        GgmlType::Q8_K => return None,
    })
}

/// The type most of a file's matrices are in, counted by tensor as llama.cpp's loader does when
/// it guesses a missing `general.file_type`, but over tensors of 2 or more dims only: the
/// vectors (norms, biases) are F32 in every quantized GGUF and would outnumber the rest. A tie
/// goes to the type that reached the count first, in file order.
pub fn dominant_matrix_type<'a>(
    tensors: impl IntoIterator<Item = (&'a [u64], GgmlType)>,
) -> Option<GgmlType> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    let mut best: Option<(GgmlType, usize)> = None;
    for (dims, ty) in tensors {
        if dims.iter().filter(|&&d| d > 1).count() < 2 {
            continue;
        }
        let n = match counts.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counts.push((ty, 1));
                1
            }
        };
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((ty, n));
        }
    }
    best.map(|(ty, _)| ty)
}

/// The `general.file_type` a merge writes, or `None` to keep the base's. The base's value
/// stays while the output's matrices are mostly in the type the base's are mostly in (it may
/// say more than [`ftype_of`] can, e.g. Q4_K_S rather than Q4_K_M); once the merge moves most
/// of them to another type (the default Q8_0 projections of a 4-bit base, or a `--dtype`), it
/// names that type, so `llama-cli` and ollama do not report a Q8_0 model as Q4_1.
pub fn merged_file_type(g: &GgufFile, out: &[TensorSpec]) -> Option<u32> {
    let base = dominant_matrix_type(g.tensors.iter().map(|t| (t.dims.as_slice(), t.dtype)));
    let merged = dominant_matrix_type(out.iter().map(|t| (t.dims.as_slice(), t.dtype)))?;
    if base == Some(merged) {
        return None;
    }
    ftype_of(merged)
}

/// The type a merged tensor is written in when no `--dtype` is given. Float and 8-bit bases keep
/// their type. Coarser ones (4/5-bit, K-quants) get Q8_0: their base weights sit exactly on the
/// coarse grid and a LoRA update is mostly smaller than one grid step, so rounding W + ΔW back
/// onto that grid returns W (measured on SmolLM2 Q4_1: the merged model lost ~93% of the
/// adapter's effect; in Q8_0 it kept all but 0.003 nats, docs/merge.md). F16 when a row is
/// not a whole number of 32-value blocks.
pub fn default_merge_type(base: GgmlType, cols: usize) -> GgmlType {
    match base {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => base,
        _ if cols.is_multiple_of(32) => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// One tensor the adapter changes.
pub(crate) struct Touched<'a> {
    pub pair: &'a LoraPair,
    pub out_type: GgmlType,
}

/// Check the adapter against the base tensors and list what it touches, by base tensor name.
/// Every error names the tensor: a pair for a tensor the base lacks, or of another shape (an
/// adapter made for another model), or an output type the row length cannot be stored in.
pub(crate) fn plan<'a>(
    g: &GgufFile,
    lora: &'a LoraSet,
    opts: &MergeOptions,
) -> Result<HashMap<String, Touched<'a>>> {
    let mut touched = HashMap::new();
    for (layer, slots) in lora.layers.iter().enumerate() {
        for t in Target::ALL {
            let Some(pair) = &slots[t.index()] else {
                continue;
            };
            let name = gguf_base_name(layer, t);
            let err = |msg: String| Error::tensor(&g.path, &name, msg);
            let info = g.tensor(&name).ok_or_else(|| {
                err("the adapter has a LoRA pair for this tensor, but the base model has no such tensor (adapter made for another model?)".into())
            })?;
            let (cols, rows) = matrix_dims(info)
                .ok_or_else(|| err(format!("dims {:?}: not a matrix", info.dims)))?;
            if (cols, rows) != (pair.in_dim, pair.out_dim) {
                return Err(err(format!(
                    "the base tensor is [out {rows}, in {cols}] but the adapter's pair is for \
                     [out {}, in {}]: the adapter was made for another model",
                    pair.out_dim, pair.in_dim
                )));
            }
            if pair.a.len() != pair.rank * cols || pair.b.len() != rows * pair.rank {
                return Err(err(format!(
                    "adapter pair of rank {} has {} + {} values, expected {} + {}",
                    pair.rank,
                    pair.a.len(),
                    pair.b.len(),
                    pair.rank * cols,
                    rows * pair.rank
                )));
            }
            let out_type = opts
                .dtype
                .unwrap_or_else(|| default_merge_type(info.dtype, cols));
            if out_type.row_bytes(cols).is_none() {
                return Err(err(format!(
                    "rows of {cols} values cannot be stored as {} (blocks of {}); choose \
                     --dtype f32, f16 or bf16",
                    out_type.name(),
                    out_type.block_size()
                )));
            }
            touched.insert(name, Touched { pair, out_type });
        }
    }
    Ok(touched)
}

/// (cols, rows) of a 2-D tensor (trailing dims of 1 allowed).
fn matrix_dims(t: &TensorInfo) -> Option<(usize, usize)> {
    if t.dims.len() < 2 || t.dims[2..].iter().any(|&d| d != 1) {
        return None;
    }
    Some((t.dims[0] as usize, t.dims[1] as usize))
}

/// Merge `lora` into the GGUF base `g` and write the result to `out` (atomically, streaming).
/// `progress(done, total, name)` is called after each tensor.
pub fn merge_gguf(
    g: &GgufFile,
    lora: &LoraSet,
    out: &Path,
    opts: &MergeOptions,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<MergeReport> {
    if let (Ok(a), Ok(b)) = (out.canonicalize(), g.path.canonicalize()) {
        if a == b {
            return Err(Error::Usage(format!(
                "{}: the output would overwrite the base model it is read from; choose another --out",
                out.display()
            )));
        }
    }
    let touched = plan(g, lora, opts)?;
    let specs: Vec<TensorSpec> = g
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype: touched.get(&t.name).map_or(t.dtype, |x| x.out_type),
        })
        .collect();
    let mut metadata: Vec<(String, Value)> = g
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let (Some(slot), Some(ft)) = (
        metadata.iter_mut().find(|(k, _)| k == "general.file_type"),
        merged_file_type(g, &specs),
    ) {
        slot.1 = Value::U32(ft);
    }
    let mut w = GgufStreamWriter::create(out, &metadata, &specs)?;
    let mut file = std::fs::File::open(&g.path).map_err(|e| Error::io(&g.path, e))?;
    let n = g.tensors.len();
    for (i, t) in g.tensors.iter().enumerate() {
        match touched.get(&t.name) {
            None => copy_tensor(&mut file, g, t, &mut w)?,
            Some(x) => {
                let src = read_at(&mut file, &g.path, t.offset as u64, t.size)?;
                let bytes = merge_tensor(g, t, &src, x.pair, lora.scale, x.out_type)?;
                drop(src);
                w.write(&bytes)?;
            }
        }
        progress(i + 1, n, &t.name);
    }
    w.finish()?;
    let file_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(MergeReport {
        tensors: n,
        merged: touched.len(),
        file_bytes,
    })
}

pub(crate) fn read_at(
    file: &mut std::fs::File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Copy a tensor's bytes unchanged, a few MiB at a time.
fn copy_tensor(
    file: &mut std::fs::File,
    g: &GgufFile,
    t: &TensorInfo,
    w: &mut GgufStreamWriter,
) -> Result<()> {
    const CHUNK: usize = 4 << 20;
    let mut done = 0;
    while done < t.size {
        let len = CHUNK.min(t.size - done);
        w.write(&read_at(file, &g.path, (t.offset + done) as u64, len)?)?;
        done += len;
    }
    Ok(())
}

/// `src` (the base tensor's bytes) dequantized, plus `scale·B·A`, quantized as `out_type`.
fn merge_tensor(
    g: &GgufFile,
    t: &TensorInfo,
    src: &[u8],
    p: &LoraPair,
    scale: f32,
    out_type: GgmlType,
) -> Result<Vec<u8>> {
    let (cols, rows) = (p.in_dim, p.out_dim);
    // Checked when planning; a mismatch here would be a bug in the plan.
    let in_row = t.dtype.row_bytes(cols).unwrap_or(0);
    let out_row = out_type.row_bytes(cols).unwrap_or(0);
    assert!(
        in_row * rows == src.len() && out_row > 0,
        "merge plan out of date"
    );
    let mut out = vec![0u8; out_row * rows];
    out.par_chunks_mut(out_row)
        .zip(src.par_chunks(in_row))
        .enumerate()
        .try_for_each_init(
            || {
                (
                    vec![0f32; cols],
                    vec![0f32; cols],
                    Vec::with_capacity(out_row),
                )
            },
            |(w, delta, q), (i, (dst, s))| {
                dequantize_row(t.dtype, s, w);
                add_delta(g, t, w, delta, p, i, scale)?;
                q.clear();
                quantize_row(out_type, w, q);
                dst.copy_from_slice(q);
                Ok(())
            },
        )?;
    Ok(out)
}

/// Add row `i` of `scale·B·A` to the dequantized base row `w` (`delta` is scratch of the row's
/// length); a non-finite result is an error naming the tensor, row and column.
pub(crate) fn add_delta(
    g: &GgufFile,
    t: &TensorInfo,
    w: &mut [f32],
    delta: &mut [f32],
    p: &LoraPair,
    i: usize,
    scale: f32,
) -> Result<()> {
    let (r, cols) = (p.rank, p.in_dim);
    // delta = B[i, :] · A, summed in f32 over the rank, then scaled once.
    delta.fill(0.0);
    for (k, &b) in p.b[i * r..(i + 1) * r].iter().enumerate() {
        for (d, &a) in delta.iter_mut().zip(&p.a[k * cols..(k + 1) * cols]) {
            *d += b * a;
        }
    }
    for (x, d) in w.iter_mut().zip(delta.iter()) {
        *x += scale * d;
    }
    match w.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(j) => Err(Error::tensor(
            &g.path,
            &t.name,
            format!(
                "merged value at row {i}, column {j} is {} (non-finite)",
                w[j]
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_bases_merge_into_q8_0() {
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
        ] {
            assert_eq!(default_merge_type(t, 576), GgmlType::Q8_0, "{}", t.name());
        }
        assert_eq!(default_merge_type(GgmlType::Q6_K, 40), GgmlType::F16);
        for t in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            assert_eq!(default_merge_type(t, 576), t);
        }
    }

    #[test]
    fn dominant_type_counts_matrices_not_vectors() {
        let (m, v, col): (&[u64], &[u64], &[u64]) = (&[64, 32], &[64], &[64, 1]);
        let f32s = [(v, GgmlType::F32); 10];
        let mut ts: Vec<(&[u64], GgmlType)> = f32s.to_vec();
        ts.push((col, GgmlType::F32));
        ts.extend([
            (m, GgmlType::Q4_K),
            (m, GgmlType::Q8_0),
            (m, GgmlType::Q8_0),
        ]);
        assert_eq!(
            dominant_matrix_type(ts.iter().copied()),
            Some(GgmlType::Q8_0)
        );
        // A tie goes to the type that got there first.
        let tie = [(m, GgmlType::Q4_K), (m, GgmlType::Q8_0)];
        assert_eq!(dominant_matrix_type(tie), Some(GgmlType::Q4_K));
        assert_eq!(dominant_matrix_type(f32s), None);
    }
}
