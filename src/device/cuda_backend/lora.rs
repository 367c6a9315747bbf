//! LoRA parameters (and their gradients, same layout) on the device: a copy of a host
//! [`LoraSet`] that a trainer uploads, steps with, and downloads gradients from.

use super::mem::{addr, DViewMut};
use super::Cuda;
use crate::error::{Error, Result};
use crate::model::lora::{LoraPair, LoraSet, Target};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// One adapted projection: A [rank, in], B [out, rank], row-major f32, as [`LoraPair`].
pub struct CudaPair {
    pub a: CudaSlice<f32>,
    pub b: CudaSlice<f32>,
    pub rank: usize,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// All adapters of a model on the device, as [`LoraSet`].
pub struct CudaLora {
    pub rank: usize,
    pub alpha: f32,
    pub scale: f32,
    pub targets: Vec<Target>,
    pub layers: Vec<[Option<CudaPair>; 7]>,
}

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Usage(format!("cuda backend: {what}: {e:?}"))
}

fn pair_up(stream: &Arc<CudaStream>, p: &LoraPair) -> Result<CudaPair> {
    Ok(CudaPair {
        a: up(stream, &p.a)?,
        b: up(stream, &p.b)?,
        rank: p.rank,
        in_dim: p.in_dim,
        out_dim: p.out_dim,
    })
}

fn up(stream: &Arc<CudaStream>, v: &[f32]) -> Result<CudaSlice<f32>> {
    if v.is_empty() {
        return Ok(super::mem::zeros(stream, 0));
    }
    stream
        .clone_htod(v)
        .map_err(|e| err("uploading LoRA tensor", e))
}

fn down(s: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if out.len() != s.len() {
        return Err(Error::Usage(format!(
            "cuda backend: LoRA tensor of {} values downloaded into {}",
            s.len(),
            out.len()
        )));
    }
    s.stream()
        .memcpy_dtoh(s, out)
        .and_then(|_| s.stream().synchronize())
        .map_err(|e| err("downloading LoRA tensor", e))
}

impl CudaLora {
    /// A device copy of `set` (parameters, or zeros for gradients) on `be`'s stream.
    pub fn upload(be: &Cuda<'_>, set: &LoraSet) -> Result<CudaLora> {
        let stream = be.stream();
        let layers = set
            .layers
            .iter()
            .map(|l| {
                let mut out: [Option<CudaPair>; 7] = Default::default();
                for (o, p) in out.iter_mut().zip(l) {
                    *o = p.as_ref().map(|p| pair_up(stream, p)).transpose()?;
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaLora {
            rank: set.rank,
            alpha: set.alpha,
            scale: set.scale,
            targets: set.targets.clone(),
            layers,
        })
    }

    /// Copies every tensor into `set`, which must have the same layout (as it was uploaded
    /// from, or `zeros_like` of it).
    pub fn download_into(&self, set: &mut LoraSet) -> Result<()> {
        if set.layers.len() != self.layers.len() {
            return Err(Error::Usage(format!(
                "cuda backend: LoRA set of {} layers downloaded into one of {}",
                self.layers.len(),
                set.layers.len()
            )));
        }
        for (li, (dl, hl)) in self.layers.iter().zip(set.layers.iter_mut()).enumerate() {
            for (i, (d, h)) in dl.iter().zip(hl.iter_mut()).enumerate() {
                match (d, h) {
                    (Some(d), Some(h)) => {
                        down(&d.a, &mut h.a)?;
                        down(&d.b, &mut h.b)?;
                    }
                    (None, None) => {}
                    _ => {
                        return Err(Error::Usage(format!(
                            "cuda backend: LoRA layer {li} target {:?}: adapted on one side only",
                            Target::ALL[i]
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets every tensor to zero (gradients before a step).
    pub fn zero(&mut self) -> Result<()> {
        for p in self.layers.iter_mut().flatten().flatten() {
            for s in [&mut p.a, &mut p.b] {
                let stream = s.stream().clone();
                stream
                    .memset_zeros(s)
                    .map_err(|e| err("zeroing LoRA tensor", e))?;
            }
        }
        Ok(())
    }

    pub fn get(&self, layer: usize, t: Target) -> Option<&CudaPair> {
        self.layers.get(layer).and_then(|l| l[t.index()].as_ref())
    }
}

impl CudaPair {
    /// Device addresses of A and B.
    pub(crate) fn addrs(&self) -> (u64, u64) {
        (addr(&self.a), addr(&self.b))
    }

    /// Write views of A and B (gradient accumulation).
    pub(crate) fn views_mut(&mut self) -> (DViewMut<'_>, DViewMut<'_>) {
        (
            super::mem::whole_mut(&mut self.a),
            super::mem::whole_mut(&mut self.b),
        )
    }
}
