//! The machine's measured arithmetic peak per kernel path: register-only loops of independent
//! multiply-adds, timed on one thread and on every thread of the current rayon pool.
//!
//! Each loop updates `ACC` accumulator registers, each with one FMA per iteration, with no
//! loads or stores: the chains are independent, and there are more of them than FMA latency ×
//! FMA ports (e.g. 4 cycles × 2 ports = 8 on Zen 4 and Skylake-X), so the loop runs at the
//! FMA ports' throughput. Flops: 2 per f32 lane (multiply + add); for `vdpbf16ps`, 2 per bf16
//! pair product, i.e. 4 per f32 lane, 64 per zmm instruction.
//!
//! The roofs, and which GEMM path is measured against which:
//! - `scalar`: portable Rust `x * a + b` over 48 f32 (what the `Scalar` path's code can reach:
//!   the baseline target auto-vectorizes it with SSE2 `mulps` + `addps`, no FMA);
//! - `avx2`: ymm `vfmadd` (`_mm256_fmadd_ps`), 12 accumulators;
//! - `avx512`: zmm `vfmadd` (`_mm512_fmadd_ps`), 24 accumulators; also the f32 roof of
//!   `avx512bf16`, whose GEMM accumulates in f32;
//! - `bf16 dot`: zmm `vdpbf16ps` (`_mm512_dpbf16_ps`), 24 accumulators; the second roof of
//!   `avx512bf16`;
//! - `neon`: `vfmaq_f32`, 16 accumulators; also the roof of `neonfp16`, which widens f16
//!   weights to f32 in registers and accumulates with f32 FMAs (an f16 `vfmaq_f16` roof would
//!   need the unstable `f16` type).

use super::load::Sample;
use super::WAITED;
use edge_sft::cpu::{self, Isa};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One measured roof, in GFLOP/s.
#[derive(Clone, Debug)]
pub struct Roof {
    /// What was timed, e.g. "avx512 f32 fma zmm".
    pub name: &'static str,
    pub one_thread: f64,
    pub all_threads: f64,
    /// In every round our threads waited for a CPU or the all-thread figure did not scale:
    /// the figures may be low.
    pub disturbed: bool,
}

/// The roofs of every path the host runs.
pub struct Peaks {
    pub threads: usize,
    /// (path, its f32 roof, its reduced-precision roof if it has one measured)
    pub paths: Vec<(Isa, Roof, Option<Roof>)>,
}

impl Peaks {
    /// Time every roof the host has (0.2 s each on a quiet machine, up to 1 s on a busy one). Call from inside the rayon pool.
    pub fn measure() -> Peaks {
        let mut paths = Vec::new();
        let mut f32_roofs: Vec<(Isa, Roof)> = Vec::new();
        for isa in cpu::available_isas() {
            let f32_roof = match f32_roofs.iter().find(|(i, _)| *i == isa.f32_isa()) {
                Some((_, r)) => r.clone(),
                None => match measure_f32(isa.f32_isa()) {
                    Some(r) => {
                        f32_roofs.push((isa.f32_isa(), r.clone()));
                        r
                    }
                    None => continue,
                },
            };
            let low = if isa.reduced_precision() {
                measure_low(isa)
            } else {
                None
            };
            paths.push((isa, f32_roof, low));
        }
        Peaks {
            threads: rayon::current_num_threads(),
            paths,
        }
    }

    /// The all-thread f32 roof and the reduced-precision roof of `isa`, if measured.
    pub fn of(&self, isa: Isa) -> Option<(f64, Option<f64>)> {
        self.paths
            .iter()
            .find(|(i, _, _)| *i == isa)
            .map(|(_, f, l)| (f.all_threads, l.as_ref().map(|l| l.all_threads)))
    }

    /// The best all-thread f32 roof of the host (the gemm crate's yardstick: it picks its own
    /// SIMD code).
    pub fn best_f32(&self) -> f64 {
        self.paths
            .iter()
            .map(|(_, f, _)| f.all_threads)
            .fold(0.0, f64::max)
    }

    /// "(87%)" for an f32 path; "(131% f32, 33% bf16)" for a path with a second roof.
    pub fn percent(&self, isa: Option<Isa>, gflops: f64) -> String {
        match isa.and_then(|i| self.of(i)) {
            Some((f, Some(l))) => format!(
                "{:>4.0}% f32 {:>3.0}% {}",
                100.0 * gflops / f,
                100.0 * gflops / l,
                low_word(isa.unwrap())
            ),
            Some((f, None)) => format!("{:>4.0}%", 100.0 * gflops / f),
            None => format!("{:>4.0}% best f32", 100.0 * gflops / self.best_f32()),
        }
    }

    pub fn print(&self) {
        println!(
            "peak: register-only FMA loops, best of 15 runs of ~3 ms, GFLOP/s (2 flops per f32 lane, \
             2 per bf16 pair product)"
        );
        println!(
            "{:<12} {:<34} {:>10} {:>10}",
            "path",
            "roof",
            "1 thread",
            format!("{} threads", self.threads)
        );
        for (isa, f, l) in &self.paths {
            for r in std::iter::once(f).chain(l) {
                println!(
                    "{:<12} {:<34} {:>10.1} {:>10.1}{}",
                    cpu::isa_name(*isa),
                    r.name,
                    r.one_thread,
                    r.all_threads,
                    if r.disturbed {
                        "  [disturbed or not scaling; may be low]"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

/// The reduced-precision roof's short name for `isa`.
pub fn low_word(isa: Isa) -> &'static str {
    match isa {
        Isa::Avx512Bf16 => "bf16",
        _ => "low",
    }
}

/// Time `body(iters)` (which does `flops_per_iter` flops per iteration) on one thread and on
/// every pool thread at once; iterations are set so one run takes about 3 ms (short runs fit
/// between the time slices other processes take, on a shared machine).
fn roof(name: &'static str, flops_per_iter: f64, body: impl Fn(u64) + Sync) -> Roof {
    // Calibrate: grow until a run takes 1 ms, then scale to 3 ms.
    let mut iters = 1u64 << 10;
    loop {
        let t = Instant::now();
        body(iters);
        let dt = t.elapsed();
        if dt > Duration::from_millis(1) {
            iters = (iters as f64 * 0.003 / dt.as_secs_f64()) as u64;
            break;
        }
        iters *= 2;
    }
    let flops = flops_per_iter * iters as f64;
    let best = |f: &dyn Fn()| {
        (0..15)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let threads = rayon::current_num_threads();
    let (mut one, mut all, mut disturbed) = (0.0f64, 0.0f64, true);
    // Other processes on the machine can only slow a run down, so keep the best of several
    // rounds; stop once our threads waited for a CPU less than `WAITED` cores in a round and the
    // all-thread figure is within 10% of threads × the one-thread one (a register-only loop
    // scales with threads), after at most 10 rounds.
    for round in 0..10 {
        let sample = Sample::now();
        one = one.max(flops / best(&|| body(iters)).as_secs_f64() / 1e9);
        let t = best(&|| {
            rayon::broadcast(|_| body(iters));
        });
        all = all.max(threads as f64 * flops / t.as_secs_f64() / 1e9);
        let quiet = sample.waited().is_none_or(|w| w < WAITED);
        if round >= 1 && quiet && all >= 0.9 * threads as f64 * one {
            disturbed = false;
            break;
        }
    }
    Roof {
        name,
        one_thread: one,
        all_threads: all,
        disturbed,
    }
}

/// The f32 roof of an f32 path (None: no loop written for it).
fn measure_f32(isa: Isa) -> Option<Roof> {
    match isa {
        Isa::Scalar => Some(roof(
            "scalar f32 mul+add (baseline target)",
            2.0 * SCALAR_ACC as f64,
            scalar_mul_add,
        )),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(roof(
            "f32 fma ymm (_mm256_fmadd_ps)",
            2.0 * 8.0 * x86::YMM_ACC as f64,
            |n| {
                // SAFETY: `Isa::Avx2` is in `available_isas`, so the CPU has AVX2 and FMA.
                unsafe { x86::fma_ymm(n) }
            },
        )),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(roof(
            "f32 fma zmm (_mm512_fmadd_ps)",
            2.0 * 16.0 * x86::ZMM_ACC as f64,
            |n| {
                // SAFETY: `Isa::Avx512` is in `available_isas`, so the CPU has AVX-512F.
                unsafe { x86::fma_zmm(n) }
            },
        )),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Some(roof(
            "f32 fma q (vfmaq_f32)",
            2.0 * 4.0 * arm::Q_ACC as f64,
            |n| {
                // SAFETY: `Isa::Neon` is in `available_isas`, so the CPU has Advanced SIMD.
                unsafe { arm::fma_q(n) }
            },
        )),
        _ => None,
    }
}

/// The reduced-precision roof of an opt-in path (None: not measured).
fn measure_low(isa: Isa) -> Option<Roof> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => Some(roof(
            "bf16 dot zmm (_mm512_dpbf16_ps)",
            64.0 * x86::ZMM_ACC as f64,
            |n| {
                // SAFETY: `Isa::Avx512Bf16` is in `available_isas`, so the CPU has
                // AVX512-BF16 (and AVX-512F).
                unsafe { x86::dpbf16_zmm(n) }
            },
        )),
        _ => None,
    }
}

const SCALAR_ACC: usize = 48;

/// `iters` rounds of acc[i] = acc[i]·a + b over 48 independent f32 (the compiler may pack them
/// into SSE vectors, as it may in the scalar kernels).
fn scalar_mul_add(iters: u64) {
    let (a, b) = (black_box(0.999_9f32), black_box(1e-3f32));
    let mut acc = [0.0f32; SCALAR_ACC];
    for (i, x) in acc.iter_mut().enumerate() {
        *x = i as f32;
    }
    for _ in 0..black_box(iters) {
        for x in acc.iter_mut() {
            *x = *x * a + b;
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    pub const YMM_ACC: usize = 12;
    pub const ZMM_ACC: usize = 24;

    /// `iters` rounds of 12 independent ymm FMAs (acc = acc·a + b: stays finite, no denormals).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_ymm(iters: u64) {
        let a = _mm256_set1_ps(black_box(0.999_9));
        let b = _mm256_set1_ps(black_box(1e-3));
        let mut acc = [_mm256_setzero_ps(); YMM_ACC];
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm256_set1_ps(i as f32);
        }
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    /// `iters` rounds of 24 independent zmm FMAs.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_zmm(iters: u64) {
        let a = _mm512_set1_ps(black_box(0.999_9));
        let b = _mm512_set1_ps(black_box(1e-3));
        let mut acc = [_mm512_setzero_ps(); ZMM_ACC];
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm512_set1_ps(i as f32);
        }
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    /// `iters` rounds of 24 independent `vdpbf16ps` (acc += a·b over 32 bf16 pairs; with
    /// a = b = 2⁻⁶ each adds 2⁻¹¹ per lane: the sums stay finite and normal).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 and AVX-512F.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16_zmm(iters: u64) {
        let v = _mm512_set1_ps(black_box(1.0 / 64.0));
        let a = _mm512_cvtne2ps_pbh(v, v);
        let b = _mm512_cvtne2ps_pbh(v, v);
        let mut acc = [_mm512_setzero_ps(); ZMM_ACC];
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm512_set1_ps(i as f32);
        }
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        black_box(acc);
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;
    use std::hint::black_box;

    pub const Q_ACC: usize = 16;

    /// `iters` rounds of 16 independent `fmla` (acc = acc + a·b on 4 f32 lanes).
    ///
    /// # Safety
    /// The CPU has Advanced SIMD (every AArch64 CPU does).
    #[target_feature(enable = "neon")]
    pub unsafe fn fma_q(iters: u64) {
        let a = vdupq_n_f32(black_box(0.999_9));
        let b = vdupq_n_f32(black_box(1e-3));
        let mut acc = [vdupq_n_f32(0.0); Q_ACC];
        for (i, x) in acc.iter_mut().enumerate() {
            *x = vdupq_n_f32(i as f32);
        }
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                // x·a + b keeps the values finite.
                *x = vfmaq_f32(b, *x, a);
            }
        }
        black_box(acc);
    }
}
