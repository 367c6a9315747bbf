//! Where the trainer runs its micro-batches: on the CPU, or (feature `cuda`, `--device cuda`)
//! on the GPU through the same generic step ([`step_on`]). The optimizer, the checkpoints and
//! the held-out scoring stay on the host; the CUDA engine uploads the adapter once per
//! optimizer step and hands back the step's accumulated gradients after each micro-batch
//! (LoRA tensors: a few MB, against a step's GEMMs over the whole model).

use super::arena::Arena;
use super::batch::Batch;
use super::proj::Dropout;
use super::step::{step_on, StepOutput};
use crate::error::Result;
use crate::model::lora::LoraSet;
use crate::model::Model;

pub enum Engine<'m> {
    Cpu {
        be: super::backend::Cpu<'m>,
        arena: Box<Arena>,
    },
    #[cfg(feature = "cuda")]
    Cuda(Box<cuda::CudaEngine<'m>>),
}

impl<'m> Engine<'m> {
    /// Buffers for micro-batches of up to `t_max` tokens, on the GPU when `cuda`.
    pub fn new(
        model: &'m Model,
        cuda: bool,
        params: &LoraSet,
        t_max: usize,
        checkpoint: bool,
        dropout: bool,
    ) -> Result<Engine<'m>> {
        if cuda {
            #[cfg(feature = "cuda")]
            {
                let e = cuda::CudaEngine::new(model, params, t_max, checkpoint, dropout)?;
                return Ok(Engine::Cuda(Box::new(e)));
            }
            #[cfg(not(feature = "cuda"))]
            return Err(crate::Error::Usage(
                "this edge-sft was built without the `cuda` feature".into(),
            ));
        }
        let arena = Box::new(Arena::new(
            &model.config,
            params,
            t_max,
            checkpoint,
            dropout,
        ));
        let be = super::backend::Cpu::new(model);
        Ok(Engine::Cpu { be, arena })
    }

    /// Bytes of the activation arena (host or device).
    pub fn arena_bytes(&self) -> usize {
        match self {
            Engine::Cpu { arena, .. } => arena.bytes(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => e.arena.bytes(),
        }
    }

    /// One micro-batch of optimizer step `step` (whose parameters are `params`): adds
    /// `grad_scale · ∂(Σ nll)/∂θ` into `grads`, which must be zero at the step's first
    /// micro-batch (the trainer zeroes them; the GPU engine keeps the step's running sum on the
    /// device and writes it over `grads` after each micro-batch).
    #[allow(clippy::too_many_arguments)]
    pub fn micro_step(
        &mut self,
        step: usize,
        params: &LoraSet,
        batch: &Batch,
        grads: &mut LoraSet,
        grad_scale: f32,
        checkpoint: bool,
        dropout: Option<Dropout>,
    ) -> Result<StepOutput> {
        #[cfg(not(feature = "cuda"))]
        let _ = step; // only the GPU engine tracks which step's parameters it holds
        match self {
            Engine::Cpu { be, arena } => step_on(
                be, arena, params, batch, grads, grad_scale, checkpoint, dropout,
            ),
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                crate::device::cuda_backend::check_supported(dropout.as_ref())?;
                e.micro_step(step, params, batch, grads, grad_scale, checkpoint)
            }
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use crate::device::cuda_backend::{Cuda, CudaLora, Dev};
    use crate::train::backend::Backend;

    pub struct CudaEngine<'m> {
        be: Cuda<'m>,
        pub arena: Arena<Dev>,
        params: CudaLora,
        grads: CudaLora,
        /// The optimizer step whose parameters are on the device (its gradients accumulate
        /// there over its micro-batches).
        loaded: Option<usize>,
    }

    impl<'m> CudaEngine<'m> {
        pub fn new(
            model: &'m Model,
            params: &LoraSet,
            t_max: usize,
            checkpoint: bool,
            dropout: bool,
        ) -> Result<Self> {
            if dropout {
                return Err(crate::Error::Usage(
                    "--dropout is not supported with --device cuda in this version; use \
                     --dropout 0 (the default) or --device cpu"
                        .into(),
                ));
            }
            // The fused loss puts scored rows on the grid's y dimension (kernels/nll.cu).
            const MAX_ROWS: usize = 65535;
            if t_max > MAX_ROWS {
                return Err(crate::Error::Usage(format!(
                    "--device cuda takes micro-batches of at most {MAX_ROWS} tokens; this run \
                     packs up to {t_max} (lower --batch-tokens, or --max-seq)"
                )));
            }
            let be = Cuda::new(model)?;
            let c = &model.config;
            let (rank, targets) = (params.rank, &params.targets);
            let arena = Arena::new_in(be.mem(), c, rank, targets, t_max, checkpoint, false);
            let p = CudaLora::upload(&be, params)?;
            let mut grads = CudaLora::upload(&be, params)?;
            grads.zero()?;
            Ok(CudaEngine {
                be,
                arena,
                params: p,
                grads,
                loaded: None,
            })
        }

        pub fn micro_step(
            &mut self,
            step: usize,
            params: &LoraSet,
            batch: &Batch,
            grads: &mut LoraSet,
            grad_scale: f32,
            checkpoint: bool,
        ) -> Result<StepOutput> {
            if self.loaded != Some(step) {
                self.params = CudaLora::upload(&self.be, params)?;
                self.grads.zero()?;
                self.loaded = Some(step);
            }
            let (be, arena) = (&self.be, &mut self.arena);
            let out = step_on(
                be,
                arena,
                &self.params,
                batch,
                &mut self.grads,
                grad_scale,
                checkpoint,
                None,
            )?;
            // The device holds this step's sum so far; the host's copy is replaced by it.
            self.grads.download_into(grads)?;
            Ok(out)
        }
    }
}
