//! The frozen model on the device: every projection in its GGUF blocks (decoded to f32 just
//! before a GEMM reads it), the norm and bias vectors and the output matrix.

use super::check;
use super::kernels::{per_value, Kernels};
use super::mem::{addr, F32};
use crate::error::{Error, Result};
use crate::model::lora::Target;
use crate::model::weights::QMatrix;
use crate::model::{LayerWeights, Model};
use crate::quant::GgmlType;
use crate::train::backend::Norm;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};
use std::sync::Arc;

/// How a matrix is stored on the device.
enum Storage {
    /// GGUF blocks decoded by `Kernels::dequant[kind]`.
    Blocks { bytes: CudaSlice<u8>, kind: usize },
    /// 16-bit floats: f16 (`bf16 == false`) or bf16.
    Half { bytes: CudaSlice<u8>, bf16: bool },
    /// Plain f32, read by GEMMs where it lies.
    F32(CudaSlice<f32>),
}

/// One frozen matrix W [rows, cols] on the device.
pub(crate) struct DevMatrix {
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    storage: Storage,
}

/// Index into `Kernels::dequant` of a block type, or None where dequant.cu has no decoder.
fn block_kind(t: GgmlType) -> Option<usize> {
    Some(match t {
        GgmlType::Q4_0 => 0,
        GgmlType::Q4_1 => 1,
        GgmlType::Q5_0 => 2,
        GgmlType::Q5_1 => 3,
        GgmlType::Q8_0 => 4,
        GgmlType::Q4_K => 5,
        GgmlType::Q5_K => 6,
        GgmlType::Q6_K => 7,
        _ => return None,
    })
}

fn upload_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Usage(format!("cuda backend: uploading {what}: {e:?}"))
}

impl DevMatrix {
    /// Copies `w` to the device as stored; types without a device decoder (Q8_K) are
    /// dequantized on the host once and kept as f32.
    pub(crate) fn upload(stream: &Arc<CudaStream>, w: &QMatrix) -> Result<DevMatrix> {
        let storage = match (w.dtype, block_kind(w.dtype)) {
            (_, Some(kind)) => Storage::Blocks {
                bytes: stream
                    .clone_htod(w.bytes())
                    .map_err(|e| upload_err(&w.name, e))?,
                kind,
            },
            (GgmlType::F16 | GgmlType::BF16, None) => Storage::Half {
                bytes: stream
                    .clone_htod(w.bytes())
                    .map_err(|e| upload_err(&w.name, e))?,
                bf16: w.dtype == GgmlType::BF16,
            },
            _ => {
                let mut f = vec![0f32; w.rows * w.cols];
                for (r, row) in f.chunks_exact_mut(w.cols.max(1)).enumerate() {
                    w.dequantize_row(r, row);
                }
                Storage::F32(stream.clone_htod(&f).map_err(|e| upload_err(&w.name, e))?)
            }
        };
        Ok(DevMatrix {
            rows: w.rows,
            cols: w.cols,
            row_bytes: w.row_bytes(),
            storage,
        })
    }

    /// f32 values a GEMM needs decoded into scratch for rows `r0..r1` (0 if read in place).
    pub(crate) fn scratch_values(&self, r0: usize, r1: usize) -> usize {
        match self.storage {
            Storage::F32(_) => 0,
            _ => (r1 - r0) * self.cols,
        }
    }

    /// The address of rows `r0..r1` as f32 [r1 - r0, cols]: decoded into `scratch` (which
    /// holds at least `scratch_values(r0, r1)` f32), or where they lie for f32 storage.
    pub(crate) fn f32_rows(
        &self,
        k: &Kernels,
        stream: &Arc<CudaStream>,
        r0: usize,
        r1: usize,
        scratch: CUdeviceptr,
    ) -> CUdeviceptr {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "weight rows {r0}..{r1} of {}",
            self.rows
        );
        let n = (r1 - r0) * self.cols;
        let (bytes, f) = match &self.storage {
            Storage::F32(v) => return addr(v) + (r0 * self.cols) as u64 * F32,
            Storage::Blocks { bytes, kind } => (bytes, &k.dequant[*kind]),
            Storage::Half { bytes, bf16 } => (
                bytes,
                if *bf16 {
                    &k.dequant_bf16
                } else {
                    &k.dequant_f16
                },
            ),
        };
        if n == 0 {
            return scratch;
        }
        let src = addr(bytes) + (r0 * self.row_bytes) as u64;
        let nn = n as i64;
        let mut b = stream.launch_builder(f);
        b.arg(&src).arg(&scratch).arg(&nn);
        // SAFETY: src points at rows r0..r1 of this matrix's bytes, whole rows of whole blocks
        // ((r1 - r0) * row_bytes bytes = n / QK blocks, or n 16-bit values); the caller's
        // scratch holds scratch_values(r0, r1) = n f32, one per thread that passes `i < n`.
        check("dequant", unsafe { b.launch(per_value(n)) });
        scratch
    }
}

/// The frozen weights of one block.
pub(crate) struct DevLayer {
    pub proj: [DevMatrix; 7],
    pub bias: [Option<CudaSlice<f32>>; 3],
    pub attn_norm: CudaSlice<f32>,
    pub ffn_norm: CudaSlice<f32>,
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    pub attn_post_norm: Option<CudaSlice<f32>>,
    pub ffn_post_norm: Option<CudaSlice<f32>>,
}

/// The whole frozen model on the device (the embedding stays on the host: a row lookup).
pub(crate) struct DevModel {
    pub layers: Vec<DevLayer>,
    pub final_norm: CudaSlice<f32>,
    pub output: DevMatrix,
    /// The most f32 values any projection needs decoded at once.
    pub max_decode: usize,
}

fn vec_up(stream: &Arc<CudaStream>, v: &[f32], what: &str) -> Result<CudaSlice<f32>> {
    stream.clone_htod(v).map_err(|e| upload_err(what, e))
}

fn opt_up(
    stream: &Arc<CudaStream>,
    v: &Option<Vec<f32>>,
    what: &str,
) -> Result<Option<CudaSlice<f32>>> {
    v.as_deref().map(|v| vec_up(stream, v, what)).transpose()
}

fn layer_up(stream: &Arc<CudaStream>, li: usize, l: &LayerWeights) -> Result<DevLayer> {
    let m = |w: &QMatrix| DevMatrix::upload(stream, w);
    let name = |what: &str| format!("layer {li} {what}");
    Ok(DevLayer {
        proj: [
            m(&l.wq)?,
            m(&l.wk)?,
            m(&l.wv)?,
            m(&l.wo)?,
            m(&l.w_gate)?,
            m(&l.w_up)?,
            m(&l.w_down)?,
        ],
        bias: [
            opt_up(stream, &l.bq, &name("q bias"))?,
            opt_up(stream, &l.bk, &name("k bias"))?,
            opt_up(stream, &l.bv, &name("v bias"))?,
        ],
        attn_norm: vec_up(stream, &l.attn_norm, &name("attention norm"))?,
        ffn_norm: vec_up(stream, &l.ffn_norm, &name("MLP norm"))?,
        q_norm: opt_up(stream, &l.q_norm, &name("q norm"))?,
        k_norm: opt_up(stream, &l.k_norm, &name("k norm"))?,
        attn_post_norm: opt_up(stream, &l.attn_post_norm, &name("attention post norm"))?,
        ffn_post_norm: opt_up(stream, &l.ffn_post_norm, &name("MLP post norm"))?,
    })
}

impl DevModel {
    pub(crate) fn upload(stream: &Arc<CudaStream>, model: &Model) -> Result<DevModel> {
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(li, l)| layer_up(stream, li, l))
            .collect::<Result<Vec<_>>>()?;
        let max_decode = layers
            .iter()
            .flat_map(|l| l.proj.iter())
            .map(|w| w.scratch_values(0, w.rows))
            .max()
            .unwrap_or(0);
        Ok(DevModel {
            layers,
            final_norm: vec_up(stream, &model.final_norm, "final norm")?,
            output: DevMatrix::upload(stream, &model.output)?,
            max_decode,
        })
    }

    /// Projection `tg` of block `li` and its bias.
    pub(crate) fn weight(&self, li: usize, tg: Target) -> (&DevMatrix, Option<&CudaSlice<f32>>) {
        let l = &self.layers[li];
        let bias = match tg {
            Target::Q => l.bias[0].as_ref(),
            Target::K => l.bias[1].as_ref(),
            Target::V => l.bias[2].as_ref(),
            _ => None,
        };
        (&l.proj[tg.index()], bias)
    }

    /// A norm's weight vector.
    pub(crate) fn norm(&self, n: Norm) -> &CudaSlice<f32> {
        fn opt<'a>(w: &'a Option<CudaSlice<f32>>, what: &str) -> &'a CudaSlice<f32> {
            w.as_ref()
                .unwrap_or_else(|| panic!("{what} norm asked of a model without one"))
        }
        match n {
            Norm::Attn(li) => &self.layers[li].attn_norm,
            Norm::Ffn(li) => &self.layers[li].ffn_norm,
            Norm::Q(li) => opt(&self.layers[li].q_norm, "q"),
            Norm::K(li) => opt(&self.layers[li].k_norm, "k"),
            Norm::AttnPost(li) => opt(&self.layers[li].attn_post_norm, "attention post"),
            Norm::FfnPost(li) => opt(&self.layers[li].ffn_post_norm, "MLP post"),
            Norm::Final => &self.final_norm,
        }
    }
}
