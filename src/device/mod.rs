//! Which device a run uses: `--device auto|cpu|cuda` (issue 18).
//!
//! The `cuda` feature links no CUDA library at build time: `cudarc` opens the driver
//! (`libcuda.so`) when asked, so one binary runs on machines with and without a GPU. The CUDA
//! kernels live in `kernels/*.cu` and are compile-checked for sm_72 and sm_87 in CI
//! (`scripts/cuda_check.py`); the training step runs on them through the CUDA backend
//! (`cuda_backend`, the same generic step as the CPU's). That backend has not yet been run on
//! a GPU (`scripts/gpu_check.sh` is the check), so `auto` keeps to the CPU and says why, and
//! `cuda` must be asked for.

#[cfg(feature = "cuda")]
pub mod cuda_backend;
#[cfg(feature = "cuda")]
mod cuda_probe;

use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The CPU, naming any GPU found: the CUDA step is not yet verified on a GPU, so it runs
    /// only when asked for with `cuda`.
    Auto,
    /// The CPU kernels (AVX2/AVX-512/NEON), always available.
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (needs a `--features cuda` build).
    Cuda,
}

/// A GPU the driver reported.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub name: String,
    /// Compute capability (8, 7) for Orin, (7, 2) for Xavier.
    pub sm: (i32, i32),
    pub memory_bytes: usize,
}

/// What the CUDA side of this build and machine can offer.
#[derive(Clone, Debug, PartialEq)]
pub enum CudaStatus {
    NotBuilt,
    NoDriver,
    DriverError(String),
    NoDevice,
    Found(GpuInfo),
}

impl CudaStatus {
    /// This build and machine, probed once per call (the driver is opened at run time).
    pub fn probe() -> Self {
        #[cfg(feature = "cuda")]
        {
            cuda_probe::probe()
        }
        #[cfg(not(feature = "cuda"))]
        {
            CudaStatus::NotBuilt
        }
    }

    fn describe(&self) -> String {
        match self {
            CudaStatus::NotBuilt => "this edge-sft was built without the `cuda` feature".into(),
            CudaStatus::NoDriver => "no CUDA driver (libcuda.so) on this machine".into(),
            CudaStatus::DriverError(e) => format!("the CUDA driver failed: {e}"),
            CudaStatus::NoDevice => "the CUDA driver reports no GPU".into(),
            CudaStatus::Found(g) => format!(
                "GPU 0 is {} (sm_{}{}, {:.1} GB)",
                g.name,
                g.sm.0,
                g.sm.1,
                g.memory_bytes as f64 / 1e9
            ),
        }
    }
}

/// The device a run uses, and a line saying why.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub cuda: bool,
    pub why: String,
}

/// `choice` on this build and machine: `cpu` always works, `auto` falls back to the CPU with
/// the reason, `cuda` is an error naming what is missing.
pub fn resolve(choice: DeviceChoice, status: &CudaStatus) -> Result<Resolved> {
    match choice {
        DeviceChoice::Cpu => Ok(Resolved {
            cuda: false,
            why: "cpu (asked for)".into(),
        }),
        DeviceChoice::Auto => Ok(Resolved {
            cuda: false,
            why: match status {
                CudaStatus::Found(_) => format!(
                    "cpu (auto: {}; the CUDA step is new and not yet verified on a GPU, so it \
                     runs only when asked for with --device cuda)",
                    status.describe()
                ),
                _ => format!("cpu (auto: {})", status.describe()),
            },
        }),
        DeviceChoice::Cuda if matches!(status, CudaStatus::Found(_)) => Ok(Resolved {
            cuda: true,
            why: format!("cuda ({})", status.describe()),
        }),
        DeviceChoice::Cuda => {
            let fix = match status {
                CudaStatus::NotBuilt => {
                    "; rebuild with `cargo build --release --features cuda` (README, Jetson)"
                }
                CudaStatus::Found(_) => unreachable!("a found GPU is used"),
                _ => "; install the NVIDIA driver (JetPack on a Jetson) or use --device cpu",
            };
            Err(Error::Usage(format!(
                "--device cuda: {}{fix}",
                status.describe()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_is_refused_with_the_reason_and_auto_falls_back() {
        for status in [
            CudaStatus::NotBuilt,
            CudaStatus::NoDriver,
            CudaStatus::NoDevice,
            CudaStatus::DriverError("CUDA_ERROR_NO_DEVICE".into()),
        ] {
            let e = resolve(DeviceChoice::Cuda, &status)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--device cuda:"), "{e}");
            assert!(e.contains(&status.describe()), "{e}");
            let auto = resolve(DeviceChoice::Auto, &status).unwrap();
            assert!(!auto.cuda);
            assert!(auto.why.starts_with("cpu (auto: "), "{}", auto.why);
        }
        let orin = CudaStatus::Found(GpuInfo {
            name: "Orin".into(),
            sm: (8, 7),
            memory_bytes: 8 << 30,
        });
        let used = resolve(DeviceChoice::Cuda, &orin).unwrap();
        assert!(
            used.cuda && used.why.contains("Orin (sm_87"),
            "{}",
            used.why
        );
        let auto = resolve(DeviceChoice::Auto, &orin).unwrap();
        assert!(
            !auto.cuda && auto.why.contains("--device cuda"),
            "{}",
            auto.why
        );
        let e = resolve(DeviceChoice::Cuda, &CudaStatus::NotBuilt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features cuda"), "{e}");
        assert!(
            !resolve(DeviceChoice::Cpu, &CudaStatus::NoDriver)
                .unwrap()
                .cuda
        );
    }

    #[test]
    fn probe_matches_the_build() {
        let s = CudaStatus::probe();
        if cfg!(feature = "cuda") {
            assert_ne!(s, CudaStatus::NotBuilt);
        } else {
            assert_eq!(s, CudaStatus::NotBuilt);
        }
    }
}
