//! Which instruction set the kernels use: detected once per process, overridable with
//! `EDGE_SFT_ISA=scalar|avx2|avx512|avx2f16|avx512bf16|amxbf16|neon|neonfp16` (for benchmarking and
//! for reproducing a user's numbers).
//!
//! Reduced-precision paths (`Avx2F16`, `Avx512Bf16`, `AmxBf16`, `NeonFp16`) change numerics — GEMM
//! operands are rounded to bf16 (8 significant bits) or weights to f16 (11 bits) before an
//! f32-accumulated product — so automatic selection never
//! picks them: `available_isas` lists them when the CPU has them, and only `EDGE_SFT_ISA`
//! (or a `*_with` call) turns them on.

use std::sync::OnceLock;

/// A kernel implementation family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (the compiler may still auto-vectorize with the baseline target).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ everything `Avx2` needs).
    Avx512,
    /// AArch64 Advanced SIMD (every AArch64 CPU has it).
    Neon,
    /// `Avx2` with the frozen weights of tiled products (n > 16 output columns) kept as f16
    /// panels and widened in registers (F16C `vcvtph2ps`), accumulating in f32 with FMA;
    /// every other kernel is the `Avx2` one. Needs nothing beyond `Avx2` (which already
    /// requires F16C). Opt-in only (different numerics).
    Avx2F16,
    /// `Avx512` plus AVX512-BF16: tiled GEMM products (n > 16 output columns; with a frozen
    /// weight, or from 32 rows) round both operands to bf16 and accumulate in f32 with
    /// `vdpbf16ps`; every other kernel is the `Avx512` one. Opt-in only (different
    /// numerics).
    Avx512Bf16,
    /// `Avx512Bf16` with its GEMM microkernel on the AMX tile unit (`tdpbf16ps`, 32×32
    /// micro-tiles): the same bf16 operands and panels. Needs AMX-TILE, AMX-BF16 and Linux's
    /// permission for the tile state. Opt-in only (different numerics).
    AmxBf16,
    /// `Neon` on a CPU with FP16 arithmetic (ARMv8.2 FEAT_FP16: Cortex-A76/A78, Apple M):
    /// tiled products with a frozen weight (n > 8 output columns) keep the dequantized weight
    /// panel in f16 and widen it in registers, accumulating in f32; every other kernel is the
    /// `Neon` one. Opt-in only (different numerics).
    NeonFp16,
}

impl Isa {
    /// The full-precision ISA whose kernels this one uses outside its reduced-precision GEMM
    /// (itself for the f32 paths).
    pub fn f32_isa(self) -> Isa {
        match self {
            Isa::Avx2F16 => Isa::Avx2,
            Isa::Avx512Bf16 | Isa::AmxBf16 => Isa::Avx512,
            Isa::NeonFp16 => Isa::Neon,
            other => other,
        }
    }

    /// True for paths that round GEMM operands below f32 (never chosen automatically).
    pub fn reduced_precision(self) -> bool {
        self != self.f32_isa()
    }
}

/// Short lowercase name, the same spelling `EDGE_SFT_ISA` accepts.
pub fn isa_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
        Isa::Neon => "neon",
        Isa::Avx2F16 => "avx2f16",
        Isa::Avx512Bf16 => "avx512bf16",
        Isa::AmxBf16 => "amxbf16",
        Isa::NeonFp16 => "neonfp16",
    }
}

fn detect() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avx512 = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        if avx2 {
            v.push(Isa::Avx2);
        }
        if avx512 {
            v.push(Isa::Avx512);
        }
        // The reduced-precision paths after every f32 one.
        if avx2 {
            v.push(Isa::Avx2F16);
        }
        if avx512 && is_x86_feature_detected!("avx512bf16") {
            v.push(Isa::Avx512Bf16);
            if super::x86::amx::request_permission() {
                v.push(Isa::AmxBf16);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Isa::Neon);
        if std::arch::is_aarch64_feature_detected!("fp16") {
            v.push(Isa::NeonFp16);
        }
    }
    v
}

/// Every kernel path this host can run, f32 paths slowest first (always starts with
/// `Scalar`), then the opt-in reduced-precision ones.
pub fn available_isas() -> Vec<Isa> {
    available().to_vec()
}

fn available() -> &'static [Isa] {
    static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
    AVAILABLE.get_or_init(detect)
}

/// True if `isa` can run on this host.
pub(crate) fn supported(isa: Isa) -> bool {
    available().contains(&isa)
}

/// Panic with a clear message if a caller asks for a path the CPU lacks. The `*_with`
/// functions call this before any `unsafe` SIMD code, which is what makes them safe.
pub(crate) fn check(isa: Isa) {
    assert!(
        supported(isa),
        "kernel ISA '{}' is not supported on this CPU (available: {:?})",
        isa_name(isa),
        available()
    );
}

/// The ISA the plain kernel functions use: the best one available, unless `EDGE_SFT_ISA`
/// names another (an unknown or unsupported value falls back to the best, with a message).
pub fn active_isa() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let want = std::env::var("EDGE_SFT_ISA").ok();
        let (isa, message) = choose(want.as_deref(), available());
        if let Some(m) = message {
            eprintln!("edge-sft: {m}");
        }
        isa
    })
}

/// The ISA for an `EDGE_SFT_ISA` value (None: unset) on a host offering `available`, and a
/// message for the user when the request cannot be honoured.
fn choose(want: Option<&str>, available: &[Isa]) -> (Isa, Option<String>) {
    let best = *available
        .iter()
        .rev()
        .find(|isa| !isa.reduced_precision())
        .expect("Scalar is always available");
    let Some(want) = want else {
        return (best, None);
    };
    let wanted = match want.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => return (best, None),
        "scalar" => Isa::Scalar,
        "avx2" => Isa::Avx2,
        "avx512" => Isa::Avx512,
        "neon" => Isa::Neon,
        "avx2f16" => Isa::Avx2F16,
        "avx512bf16" => Isa::Avx512Bf16,
        "amxbf16" => Isa::AmxBf16,
        "neonfp16" => Isa::NeonFp16,
        _ => {
            let msg = format!(
                "EDGE_SFT_ISA={want} is not one of scalar, avx2, avx512, avx2f16, avx512bf16, \
                 amxbf16, neon, neonfp16, auto; using '{}'",
                isa_name(best)
            );
            return (best, Some(msg));
        }
    };
    if available.contains(&wanted) {
        (wanted, None)
    } else {
        let msg = format!(
            "EDGE_SFT_ISA={want}: '{}' is not supported by this CPU; using '{}'",
            isa_name(wanted),
            isa_name(best)
        );
        (best, Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_is_honoured_or_explained() {
        let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
        assert_eq!(choose(None, &all), (Isa::Avx512, None));
        assert_eq!(choose(Some("auto"), &all), (Isa::Avx512, None));
        assert_eq!(choose(Some(" AVX2 "), &all), (Isa::Avx2, None));
        assert_eq!(choose(Some("scalar"), &all), (Isa::Scalar, None));
        let (isa, msg) = choose(Some("avx512"), &[Isa::Scalar, Isa::Avx2]);
        assert_eq!(isa, Isa::Avx2);
        assert!(msg.unwrap().contains("not supported by this CPU"));
        assert_eq!(
            choose(Some("neon"), &[Isa::Scalar, Isa::Neon]),
            (Isa::Neon, None)
        );
        // Reduced precision is never the automatic choice, only an explicit one.
        let bf = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];
        assert_eq!(choose(None, &bf), (Isa::Avx512, None));
        assert_eq!(choose(Some("auto"), &bf), (Isa::Avx512, None));
        assert_eq!(choose(Some("avx512bf16"), &bf), (Isa::Avx512Bf16, None));
        let amx = [Isa::Scalar, Isa::Avx512, Isa::Avx512Bf16, Isa::AmxBf16];
        assert_eq!(choose(None, &amx), (Isa::Avx512, None));
        assert_eq!(choose(Some("AMXBF16"), &amx), (Isa::AmxBf16, None));
        assert_eq!(Isa::AmxBf16.f32_isa(), Isa::Avx512);
        assert!(choose(Some("amxbf16"), &bf)
            .1
            .unwrap()
            .contains("not supported"));
        let (isa, msg) = choose(Some("avx512bf16"), &all);
        assert_eq!(isa, Isa::Avx512);
        assert!(msg.unwrap().contains("not supported by this CPU"));
        let f16 = [Isa::Scalar, Isa::Avx2, Isa::Avx2F16];
        assert_eq!(choose(None, &f16), (Isa::Avx2, None));
        assert_eq!(choose(Some("avx2f16"), &f16), (Isa::Avx2F16, None));
        assert_eq!(Isa::Avx2F16.f32_isa(), Isa::Avx2);
        assert!(Isa::Avx2F16.reduced_precision());
        let arm = [Isa::Scalar, Isa::Neon, Isa::NeonFp16];
        assert_eq!(choose(None, &arm), (Isa::Neon, None));
        assert_eq!(choose(Some("neonfp16"), &arm), (Isa::NeonFp16, None));
        let (isa, msg) = choose(Some("neon9"), &[Isa::Scalar]);
        assert_eq!(isa, Isa::Scalar);
        assert!(msg.unwrap().contains("not one of"));
    }
}
