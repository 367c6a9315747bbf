//! `kernels/*.cu` compiled at run time with NVRTC for the device's compute capability, and the
//! functions the backend launches.
//!
//! The sources are built into the binary (`include_str!`), so nothing is read from disk and no
//! CUDA toolkit is needed at run time, only the driver and libnvrtc. `common.cuh` is pasted in
//! place of its `#include`, with its two toolkit headers (`cuda_fp16.h`, `cuda_bf16.h`)
//! replaced by the few declarations the kernels use ([`FP16_STANDIN`]).

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig};
use cudarc::nvrtc::{self, CompileError, CompileOptions, Ptx};
use std::sync::{Arc, Mutex};

const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// (file name, source) of every kernel file the backend uses.
const SOURCES: [(&str, &str); 8] = [
    ("dequant.cu", include_str!("../../../kernels/dequant.cu")),
    ("rmsnorm.cu", include_str!("../../../kernels/rmsnorm.cu")),
    ("rope.cu", include_str!("../../../kernels/rope.cu")),
    ("glu.cu", include_str!("../../../kernels/glu.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("lora.cu", include_str!("../../../kernels/lora.cu")),
    ("nll.cu", include_str!("../../../kernels/nll.cu")),
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
];

/// What the kernels take from `cuda_fp16.h` / `cuda_bf16.h`: the two 16-bit storage types and
/// their conversions (PTX `cvt` for f16, which every target has; bf16 rounding by bits, since
/// `cvt.rn.bf16.f32` needs sm_80).
const FP16_STANDIN: &str = r#"
struct __half { unsigned short x; };
struct __nv_bfloat16 { unsigned short x; };
__device__ __forceinline__ __half __ushort_as_half(unsigned short b) {
    __half h;
    h.x = b;
    return h;
}
__device__ __forceinline__ float __half2float(__half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.x));
    return f;
}
__device__ __forceinline__ __half __float2half_rn(float f) {
    __half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.x) : "f"(f));
    return h;
}
__device__ __forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned int u = __float_as_uint(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.x = (unsigned short)((u >> 16) | 0x40u);
        return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.x = (unsigned short)(u >> 16);
    return b;
}
"#;

/// `file` with `common.cuh` pasted in (toolkit headers replaced), ready for NVRTC.
pub(crate) fn resolved_source(file: &str) -> String {
    let common = COMMON
        .replace("#pragma once", "")
        .replace("#include <cuda_fp16.h>", FP16_STANDIN)
        .replace("#include <cuda_bf16.h>", "");
    file.replace("#include \"common.cuh\"", &common)
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Usage(format!("cuda backend: {what}: {e:?}"))
}

/// Every function the backend launches.
pub(crate) struct Kernels {
    /// One per GGUF block type, in [`DEQUANT_NAMES`] order (`weights::block_kind` maps a
    /// type to its index).
    pub dequant: [CudaFunction; 8],
    pub dequant_f16: CudaFunction,
    pub dequant_bf16: CudaFunction,
    pub rmsnorm_fwd: CudaFunction,
    pub rmsnorm_bwd_acc: CudaFunction,
    pub rope_table: CudaFunction,
    pub swiglu_fwd: CudaFunction,
    pub swiglu_bwd: CudaFunction,
    pub geglu_fwd: CudaFunction,
    pub geglu_bwd: CudaFunction,
    pub attn_fwd: CudaFunction,
    pub attn_bwd_dq: CudaFunction,
    pub attn_bwd_dkdv: CudaFunction,
    pub lora_axpy: CudaFunction,
    pub nll_chunk_stats: CudaFunction,
    pub nll_finalize: CudaFunction,
    pub nll_chunk_grad: CudaFunction,
    pub add_bias_rows: CudaFunction,
    pub gather_rows: CudaFunction,
    pub scatter_rows: CudaFunction,
    pub copy_cols: CudaFunction,
}

/// The dequant kernel names, in [`Kernels::dequant`] order.
pub(crate) const DEQUANT_NAMES: [&str; 8] = [
    "dequant_q4_0_f32",
    "dequant_q4_1_f32",
    "dequant_q5_0_f32",
    "dequant_q5_1_f32",
    "dequant_q8_0_f32",
    "dequant_q4_k_f32",
    "dequant_q5_k_f32",
    "dequant_q6_k_f32",
];

impl Kernels {
    /// Compiles every file for the device of `ctx` (once per process) and loads its functions.
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        // SAFETY: only dlopens libnvrtc to see whether it exists; no symbol is called.
        if !unsafe { nvrtc::sys::is_culib_present() } {
            return Err(Error::Usage(
                "cuda backend: libnvrtc (the CUDA runtime compiler) was not found; install it \
                 (JetPack / the CUDA toolkit's nvrtc package) or put it on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("reading the compute capability", e))?;
        let arch = format!(
            "--gpu-architecture=compute_{}",
            target_arch(major * 10 + minor)?
        );
        let modules: Vec<(&str, Arc<CudaModule>)> = SOURCES
            .iter()
            .zip(compiled(&arch)?)
            .map(|(&(name, _), ptx)| {
                let module = ctx.load_module(ptx).map_err(|e| {
                    cuda_err(
                        &format!(
                            "loading {name} (PTX from NVRTC for {arch}; a driver older than \
                             libnvrtc refuses it)"
                        ),
                        e,
                    )
                })?;
                Ok((name, module))
            })
            .collect::<Result<_>>()?;
        let f = |file: &str, name: &str| -> Result<CudaFunction> {
            let m = &modules
                .iter()
                .find(|(n, _)| *n == file)
                .expect("every file is compiled")
                .1;
            m.load_function(name)
                .map_err(|e| cuda_err(&format!("{file}: function {name}"), e))
        };
        let dequant = [
            f("dequant.cu", DEQUANT_NAMES[0])?,
            f("dequant.cu", DEQUANT_NAMES[1])?,
            f("dequant.cu", DEQUANT_NAMES[2])?,
            f("dequant.cu", DEQUANT_NAMES[3])?,
            f("dequant.cu", DEQUANT_NAMES[4])?,
            f("dequant.cu", DEQUANT_NAMES[5])?,
            f("dequant.cu", DEQUANT_NAMES[6])?,
            f("dequant.cu", DEQUANT_NAMES[7])?,
        ];
        Ok(Kernels {
            dequant,
            dequant_f16: f("elementwise.cu", "dequant_f16_to_f32")?,
            dequant_bf16: f("elementwise.cu", "dequant_bf16_to_f32")?,
            rmsnorm_fwd: f("rmsnorm.cu", "rmsnorm_fwd")?,
            rmsnorm_bwd_acc: f("elementwise.cu", "rmsnorm_bwd_acc")?,
            rope_table: f("elementwise.cu", "rope_table")?,
            swiglu_fwd: f("glu.cu", "swiglu_fwd")?,
            swiglu_bwd: f("glu.cu", "swiglu_bwd")?,
            geglu_fwd: f("glu.cu", "geglu_fwd")?,
            geglu_bwd: f("glu.cu", "geglu_bwd")?,
            attn_fwd: f("attention.cu", "attn_fwd")?,
            attn_bwd_dq: f("attention.cu", "attn_bwd_dq")?,
            attn_bwd_dkdv: f("attention.cu", "attn_bwd_dkdv")?,
            lora_axpy: f("lora.cu", "lora_axpy")?,
            nll_chunk_stats: f("nll.cu", "nll_chunk_stats")?,
            nll_finalize: f("nll.cu", "nll_finalize")?,
            nll_chunk_grad: f("nll.cu", "nll_chunk_grad")?,
            add_bias_rows: f("elementwise.cu", "add_bias_rows")?,
            gather_rows: f("elementwise.cu", "gather_rows")?,
            scatter_rows: f("elementwise.cu", "scatter_rows")?,
            copy_cols: f("elementwise.cu", "copy_cols")?,
        })
    }
}

/// PTX of every file of [`SOURCES`] per `--gpu-architecture` option, compiled once per process
/// (each `Cuda` loads its own modules from it).
static PTX_CACHE: Mutex<Vec<(String, Vec<Ptx>)>> = Mutex::new(Vec::new());

/// Every file of [`SOURCES`] compiled by NVRTC with `arch` (from the cache after the first).
fn compiled(arch: &str) -> Result<Vec<Ptx>> {
    let mut cache = PTX_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, v)) = cache.iter().find(|(a, _)| a == arch) {
        return Ok(v.clone());
    }
    let v = SOURCES
        .iter()
        .map(|&(name, src)| {
            let opts = CompileOptions {
                options: vec![arch.into(), "--std=c++17".into(), "-default-device".into()],
                name: Some(name.into()),
                ..Default::default()
            };
            nvrtc::compile_ptx_with_opts(resolved_source(src), opts)
                .map_err(|e| compile_error(name, arch, e))
        })
        .collect::<Result<Vec<_>>>()?;
    cache.push((arch.to_string(), v.clone()));
    Ok(v)
}

/// The virtual architecture to compile for: the device's own, or, where this libnvrtc is
/// older than the device, the newest it knows below it (the driver JIT-compiles that PTX for
/// the device).
fn target_arch(device: i32) -> Result<i32> {
    let mut count = 0;
    // SAFETY: libnvrtc is loaded (checked by the caller); the call writes one int.
    let r = unsafe { nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) };
    if r != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS || count <= 0 {
        return Ok(device);
    }
    let mut archs = vec![0i32; count as usize];
    // SAFETY: `archs` holds the `count` ints the call writes.
    let r = unsafe { nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) };
    if r != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(device);
    }
    archs
        .into_iter()
        .filter(|&a| a <= device)
        .max()
        .ok_or_else(|| {
            Error::Usage(format!(
                "cuda backend: this libnvrtc cannot compile for sm_{device} (too old a GPU for it)"
            ))
        })
}

fn compile_error(name: &str, arch: &str, e: CompileError) -> Error {
    match e {
        CompileError::CompileError { nvrtc, log, .. } => Error::Usage(format!(
            "cuda backend: NVRTC could not compile kernels/{name} ({arch}): {nvrtc:?}\n{}",
            log.to_string_lossy()
        )),
        other => cuda_err(&format!("NVRTC on kernels/{name} ({arch})"), other),
    }
}

/// One thread per value: grid = ceil(n / 256), block = 256.
pub(crate) fn per_value(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// An explicit grid and 1-D block.
pub(crate) fn grid(g: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: g,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC gets no include path: every source must come out self-contained.
    #[test]
    fn resolved_sources_include_nothing() {
        for (name, src) in SOURCES {
            let s = resolved_source(src);
            assert!(!s.contains("#include"), "{name} still includes a file");
            assert!(s.contains("warp_sum"), "{name} lacks common.cuh");
        }
        let names = resolved_source(SOURCES[0].1);
        for n in DEQUANT_NAMES {
            let ty = n.trim_start_matches("dequant_").trim_end_matches("_f32");
            assert!(names.contains(&format!("({ty},")), "{n} not in dequant.cu");
        }
    }
}
