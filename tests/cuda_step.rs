//! The training step on the CUDA backend against the CPU one (issue 18): on the tiny golden
//! models (every architecture feature: q/k norms, post norms, sliding windows, GeGLU, biases;
//! F32, F16, BF16, Q4_0, Q8_0 and K-quant weights), `step_on` with `Cuda` and with `Cpu` must
//! give the same loss, per-record losses and LoRA gradients. Built only with `--features cuda`.
//! Without a GPU each test says it was skipped, unless `EDGE_SFT_REQUIRE_GPU=1` (as
//! `scripts/gpu_check.sh` sets), where that is a failure.
#![cfg(feature = "cuda")]

mod common;

use common::peft_step::{self, setup};

use edge_sft::device::cuda_backend::{Cuda, CudaLora};
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::{LoraSet, Target};
use edge_sft::train::arena::Arena;
use edge_sft::train::backend::{Backend, Cpu};
use edge_sft::train::batch::Batch;
use edge_sft::train::params::zeros_like;
use edge_sft::train::step::{step_on, StepOutput};

/// True if a GPU can be used; otherwise says the test was skipped (or fails when one is
/// required).
fn have_gpu() -> bool {
    let required = std::env::var("EDGE_SFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    // SAFETY: only dlopens libcuda to see whether it exists.
    let present = unsafe { cudarc::driver::sys::is_culib_present() }
        && cudarc::driver::CudaContext::new(0).is_ok();
    if !present {
        assert!(
            !required,
            "EDGE_SFT_REQUIRE_GPU=1 but no CUDA device could be opened"
        );
        eprintln!("skipped: no CUDA device");
    }
    present
}

/// ‖a − b‖₂ / max(‖b‖₂, tiny).
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    diff.sqrt() / norm.sqrt().max(1e-12)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// (tensor tolerance, loss tolerance): 1e-3 where the CPU computes in f32, the golden tests'
/// bounds where it rounds GEMM operands (the GPU side is f32 either way).
fn tolerances() -> (f64, f64) {
    let t = common::tol();
    (t.grad_l2.max(1e-3), t.loss.max(1e-3))
}

fn compare(arch: &str, variant: &str, checkpoint: bool) {
    if !have_gpu() {
        return;
    }
    let (lm, exs, lora) = setup(arch, variant);
    let model = &lm.model;
    // Every record packed into one batch: attention must stay inside each one.
    let batch = Batch::from_examples(exs.iter());
    let scale = 1.0 / batch.scored.len() as f32;
    let what = format!("{arch}/{variant} (checkpoint {checkpoint})");

    let cpu = Cpu::new(model);
    let mut cpu_arena = Arena::new(&model.config, &lora, batch.len(), checkpoint, false);
    let mut g_cpu = zeros_like(&lora);
    let want: StepOutput = step_on(
        &cpu,
        &mut cpu_arena,
        &lora,
        &batch,
        &mut g_cpu,
        scale,
        checkpoint,
        None,
    )
    .unwrap();

    let gpu = Cuda::new(model).unwrap_or_else(|e| panic!("{what}: {e}"));
    let d_lora = CudaLora::upload(&gpu, &lora).unwrap();
    let mut d_grads = CudaLora::upload(&gpu, &zeros_like(&lora)).unwrap();
    let mut arena = Arena::new_in(
        gpu.mem(),
        &model.config,
        lora.rank,
        &lora.targets,
        batch.len(),
        checkpoint,
        false,
    );
    // Twice, zeroing in between: the second step reuses the arena and scratch.
    let mut got = None;
    for _ in 0..2 {
        d_grads.zero().unwrap();
        let out = step_on(
            &gpu,
            &mut arena,
            &d_lora,
            &batch,
            &mut d_grads,
            scale,
            checkpoint,
            None,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        got = Some(out);
    }
    let got = got.unwrap();
    let mut g_gpu = zeros_like(&lora);
    d_grads.download_into(&mut g_gpu).unwrap();

    let (tol_g, tol_loss) = tolerances();
    assert_eq!(got.scored, want.scored, "{what}: scored tokens");
    let e = rel(got.nll_sum, want.nll_sum);
    assert!(
        e <= tol_loss,
        "{what}: loss {} (cuda) vs {} (cpu), rel {e:e}",
        got.nll_sum,
        want.nll_sum
    );
    for (i, (a, b)) in got.segment_nll.iter().zip(&want.segment_nll).enumerate() {
        let e = rel(*a, *b);
        assert!(
            e <= tol_loss,
            "{what}: record {i} loss {a} vs {b}, rel {e:e}"
        );
    }
    let mut worst = 0f64;
    for (li, (gl, cl)) in g_gpu.layers.iter().zip(&g_cpu.layers).enumerate() {
        for (ti, (gp, cp)) in gl.iter().zip(cl).enumerate() {
            let (Some(gp), Some(cp)) = (gp, cp) else {
                assert!(gp.is_none() && cp.is_none(), "{what}: layout");
                continue;
            };
            let tg = Target::ALL[ti];
            for (name, g, c) in [("A", &gp.a, &cp.a), ("B", &gp.b, &cp.b)] {
                let e = rel_l2(g, c);
                worst = worst.max(e);
                assert!(
                    e <= tol_g,
                    "{what}: layer {li} {tg:?} d{name}: rel L2 error {e:e} > {tol_g:e}"
                );
            }
        }
    }
    eprintln!(
        "{what}: loss rel {:e}, worst gradient rel L2 {worst:e}",
        rel(got.nll_sum, want.nll_sum)
    );
}

#[test]
fn cuda_step_matches_cpu_llama() {
    compare("llama", "hf_f32", false);
    compare("llama", "q8_0", false);
    compare("llama", "q4_0", true);
    compare("llama", "hf_bf16", false);
    compare("llama", "hf_f16", false);
}

#[test]
fn cuda_step_matches_cpu_llama3() {
    compare("llama3", "q4_0", false);
}

#[test]
fn cuda_step_matches_cpu_qwen() {
    compare("qwen2", "hf_f32", false);
    compare("qwen2", "q4_1", false);
    compare("qwen3", "hf_f32", false);
    compare("qwen3_kquant", "q4_k_m", false);
}

#[test]
fn cuda_step_matches_cpu_gemma3() {
    compare("gemma3", "hf_f32", false);
    compare("gemma3", "q8_0", true);
    compare("gemma3_kquant", "q4_k_m", false);
}

/// The CUDA step through the same PyTorch + PEFT one-step check the CPU passes
/// (tests/train_golden.rs): loss and every LoRA gradient, F32 folder and Q8_0 base, response-masked
/// and joint objectives, at the f32 tolerances (the GPU computes in f32 whatever the CPU path).
fn peft_golden(arch: &str) {
    if !have_gpu() {
        return;
    }
    let step = |lm: &LoadedModel, lora: &LoraSet, b: &Batch, g: &mut LoraSet, scale: f32| {
        let gpu = Cuda::new(&lm.model).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let d_lora = CudaLora::upload(&gpu, lora).unwrap();
        let mut d_grads = CudaLora::upload(&gpu, &zeros_like(lora)).unwrap();
        let c = &lm.model.config;
        let mut arena = Arena::new_in(
            gpu.mem(),
            c,
            lora.rank,
            &lora.targets,
            b.len(),
            false,
            false,
        );
        let out = step_on(
            &gpu,
            &mut arena,
            &d_lora,
            b,
            &mut d_grads,
            scale,
            false,
            None,
        )
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
        d_grads.download_into(g).unwrap();
        out
    };
    let worst = peft_step::one_step(arch, &step, common::F32, "cuda");
    worst.print(&format!("cuda one_step {arch}"));
}

#[test]
fn cuda_step_matches_pytorch_peft() {
    for arch in ["llama", "llama3", "qwen2", "qwen3", "gemma3"] {
        peft_golden(arch);
    }
}

#[test]
fn dropout_is_refused_up_front() {
    use edge_sft::device::cuda_backend::check_supported;
    use edge_sft::infer::sampling::Rng;
    use edge_sft::train::proj::Dropout;
    let d = Dropout {
        p: 0.1,
        rng: Rng::new(1),
    };
    assert!(check_supported(Some(&d)).is_err());
    assert!(check_supported(None).is_ok());
}
