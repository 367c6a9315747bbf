//! Kernel microbenchmark: `cargo bench --bench kernels [-- FILTER]`.
//!
//! matmul_wt (y = x·Wᵀ) and matmul_w (dx = dy·W) for the SmolLM2-135M shapes, per weight type
//! and ISA, beside the `gemm` crate on the same product in f32. Prints the best time of
//! several runs and GFLOP/s (2·n·rows·cols flops). Not a test: numbers depend on the machine.
//!
//! Every ISA the host can run gets a row, the opt-in reduced-precision ones too (`avx512bf16`:
//! bf16 operands, `neonfp16`: f16 weight panels; both accumulate in f32) beside the f32 paths.
//! `f32 nn/nt` rows time activation·activation products (attention, weight gradients) at the
//! model shapes, which the bf16 path also covers.
//!
//! First it measures the machine's peak per path (`peak`: register-only FMA loops on 1 thread
//! and on all threads); every row then shows its GFLOP/s as a percentage of its path's
//! all-thread f32 FMA peak (`avx512bf16`: also of the `vdpbf16ps` peak; gemm-crate rows: of the
//! best f32 peak). At the end, a markdown table sums up the model's shapes at 256 tokens.

#[path = "kernels/load.rs"]
mod load;
#[path = "kernels/peak.rs"]
mod peak;

use edge_sft::cpu::{self, Isa};
use edge_sft::model::weights::{Backing, QMatrix};
use edge_sft::quant::GgmlType;
use half::f16;
use peak::Peaks;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn rand_f32(state: &mut u64) -> f32 {
    (lcg(state) % 20001) as f32 / 10000.0 - 1.0
}

/// Random [rows, cols] matrix of type `ty` (random codes, sane scales).
fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    let mut s = 42u64;
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / ty.block_size() {
        match ty {
            GgmlType::F32 => bytes.extend_from_slice(&rand_f32(&mut s).to_le_bytes()),
            GgmlType::F16 | GgmlType::BF16 => {
                bytes.extend_from_slice(&f16::from_f32(rand_f32(&mut s)).to_le_bytes())
            }
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                bytes.extend_from_slice(&f16::from_f32(0.02).to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    bytes.extend_from_slice(&f16::from_f32(-0.1).to_le_bytes());
                }
                let nq = if ty == GgmlType::Q8_0 { 32 } else { 16 };
                bytes.extend((0..nq).map(|_| lcg(&mut s) as u8));
            }
            _ => {
                // Q5_0, Q5_1, K-quants: random bytes, then sane f16 scales over d (and the
                // min / dmin that follows it); Q6_K keeps d last, Q8_K has an f32 d.
                let mut blk: Vec<u8> = (0..ty.type_size()).map(|_| lcg(&mut s) as u8).collect();
                let d_at = if ty == GgmlType::Q6_K { 208 } else { 0 };
                blk[d_at..d_at + 2].copy_from_slice(&f16::from_f32(0.002).to_le_bytes());
                if matches!(ty, GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K) {
                    blk[2..4].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                }
                if ty == GgmlType::Q8_K {
                    blk[..4].copy_from_slice(&0.002f32.to_le_bytes());
                }
                bytes.extend_from_slice(&blk);
            }
        }
    }
    QMatrix::new("bench", ty, rows, cols, Backing::Owned(Arc::new(bytes)), 0).unwrap()
}

/// Best wall time of one call, over at least 3 calls and ~0.3 s.
fn time(mut f: impl FnMut()) -> Duration {
    f();
    let mut best = Duration::MAX;
    let start = Instant::now();
    let mut reps = 0;
    while reps < 3 || start.elapsed() < Duration::from_millis(300) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

/// A row during whose timing the bench's threads waited for a CPU (ready to run, but another
/// process had it) more than this many cores' worth of time is flagged; the model's 256-token
/// rows (the summary's) are first timed again, up to 3 tries 0.5 s apart. Not 0: rayon's idle
/// workers spin with `sched_yield`, and the kernel counts a yield to another process as
/// waiting, so even rows that lost nothing show about 0.2 on a machine with other work.
const WAITED: f64 = 0.3;

/// The filter, the measured peaks, and every row timed so far (for the summary).
struct Bench {
    filter: Vec<String>,
    peaks: Peaks,
    /// (label, GFLOP/s, disturbed)
    results: Vec<(String, f64, bool)>,
    /// Tries per row while disturbed (3 for the summary's rows, else 1).
    tries: usize,
    /// Time spent waiting before retries (at most 30 s per run).
    paused: Duration,
}

impl Bench {
    /// True if the command line's FILTER words select `label` (any word as a substring).
    fn want(&self, label: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| label.contains(f.as_str()))
    }

    /// Time `f` (a product of `flops` flops on path `isa`; None: the gemm crate) and print its
    /// row, if the filter wants `label`.
    fn run(&mut self, label: &str, isa: Option<Isa>, flops: f64, mut f: impl FnMut()) {
        if !self.want(label) {
            return;
        }
        let (mut best, mut waited) = (Duration::MAX, None);
        for attempt in 0..self.tries {
            if attempt > 0 && self.paused < Duration::from_secs(30) {
                // Let a short burst of other work (a compiler job) pass before retrying.
                std::thread::sleep(Duration::from_millis(500));
                self.paused += Duration::from_millis(500);
            }
            let sample = load::Sample::now();
            let t = time(&mut f);
            let w = sample.waited();
            if t < best {
                (best, waited) = (t, w);
            }
            if w.is_none_or(|w| w < WAITED) {
                break;
            }
        }
        self.report(label, isa, flops, best, waited);
    }

    /// Print one row: time, GFLOP/s, % of the peak of `isa`, and the cores other processes
    /// took meanwhile if that was more than `BUSY`.
    fn report(
        &mut self,
        label: &str,
        isa: Option<Isa>,
        flops: f64,
        t: Duration,
        waited: Option<f64>,
    ) {
        let gflops = flops / t.as_secs_f64() / 1e9;
        let busy = waited.is_some_and(|w| w >= WAITED);
        println!(
            "{label:<46} {:>9.1} us {gflops:>8.1} GFLOP/s {}{}",
            t.as_secs_f64() * 1e6,
            self.peaks.percent(isa, gflops),
            if busy {
                format!(
                    "  [disturbed: waited {:.2} cores for a CPU]",
                    waited.unwrap_or(0.0)
                )
            } else {
                String::new()
            }
        );
        self.results.push((label.to_string(), gflops, busy));
    }

    /// GFLOP/s of a row run earlier, and whether it was disturbed.
    fn result(&self, label: &str) -> Option<(f64, bool)> {
        self.results
            .iter()
            .find(|(l, ..)| l == label)
            .map(|r| (r.1, r.2))
    }
}

fn gemm_crate(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], b_trans: bool) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // b is [n, k] when b_trans (c = a·bᵀ), else [k, n]. Strides are (column, row).
    let (rhs_cs, rhs_rs) = if b_trans {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: all three buffers have the sizes the strides describe.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn main() {
    // Run inside the pool, as the trainer should: calls from a worker thread fork and join
    // cheaply, where calls from outside pay a wake-up hand-off each time
    // (BENCH_OUTSIDE_POOL=1 measures that case).
    if std::env::var("BENCH_OUTSIDE_POOL").is_ok_and(|v| v == "1") {
        bench_all();
    } else {
        rayon::ThreadPoolBuilder::new()
            .build()
            .unwrap()
            .install(bench_all);
    }
}

/// LoRA-shaped f32 products (rank 16): x·Aᵀ, u·Bᵀ, and the gradient GEMMs.
fn bench_lora(bench: &mut Bench) {
    let (t, d, r) = (256, 576, 16);
    let mut s = 3u64;
    let x: Vec<f32> = (0..t * d).map(|_| rand_f32(&mut s)).collect();
    let a: Vec<f32> = (0..r * d).map(|_| rand_f32(&mut s)).collect();
    let u: Vec<f32> = (0..t * r).map(|_| rand_f32(&mut s)).collect();
    let mut tr = vec![0.0f32; t * r];
    let mut td = vec![0.0f32; t * d];
    let mut rd = vec![0.0f32; r * d];
    let flops = 2.0 * (t * d * r) as f64;
    for isa in cpu::available_isas() {
        let name = cpu::isa_name(isa);
        let label = format!("lora nt x·Aᵀ {t}x{d}x{r} {name}");
        bench.run(&label, Some(isa), flops, || {
            cpu::matmul_f32_nt_with(isa, &x, &a, &mut tr, t, d, r, false)
        });
        let label = format!("lora nt u·Bᵀ {t}x{r}x{d} {name}");
        bench.run(&label, Some(isa), flops, || {
            cpu::matmul_f32_nt_with(isa, &u, &a, &mut td, t, r, d, false)
        });
        let label = format!("lora tn uᵀ·x {r}x{t}x{d} {name}");
        bench.run(&label, Some(isa), flops, || {
            cpu::matmul_f32_tn_with(isa, &u, &x, &mut rd, r, t, d, true)
        });
    }
}

/// f32·f32 products at the model shapes (m = 256 tokens): c[m, n] = a[m, k]·b[k, n] (nn)
/// and a[m, k]·b[n, k]ᵀ (nt).
fn bench_f32_products(bench: &mut Bench) {
    for (m, k, n) in [(256, 576, 576), (256, 576, 1536), (256, 1536, 576)] {
        let mut s = 9u64;
        let a: Vec<f32> = (0..m * k).map(|_| rand_f32(&mut s)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rand_f32(&mut s)).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        for isa in cpu::available_isas() {
            let name = cpu::isa_name(isa);
            let label = format!("f32 nn {m}x{k}x{n} {name}");
            bench.run(&label, Some(isa), flops, || {
                cpu::matmul_f32_nn_with(isa, &a, &b, &mut c, m, k, n, false)
            });
            let label = format!("f32 nt {m}x{k}x{n} {name}");
            bench.run(&label, Some(isa), flops, || {
                cpu::matmul_f32_nt_with(isa, &a, &b, &mut c, m, k, n, false)
            });
        }
    }
}

/// Attention of one new token against a 1024-token cache (one head, hd 64): q·Kᵀ and p·V.
fn bench_attn_gen(bench: &mut Bench) {
    let (l, hd) = (1024, 64);
    let mut s = 5u64;
    let q: Vec<f32> = (0..hd).map(|_| rand_f32(&mut s)).collect();
    let kv: Vec<f32> = (0..l * hd).map(|_| rand_f32(&mut s)).collect();
    let p: Vec<f32> = (0..l).map(|_| rand_f32(&mut s)).collect();
    let mut sc = vec![0.0f32; l];
    let mut o = vec![0.0f32; hd];
    let flops = 2.0 * (l * hd) as f64;
    for isa in cpu::available_isas() {
        let name = cpu::isa_name(isa);
        let label = format!("attn-gen nt q·Kᵀ 1x{hd}x{l} {name}");
        bench.run(&label, Some(isa), flops, || {
            cpu::matmul_f32_nt_with(isa, &q, &kv, &mut sc, 1, hd, l, false)
        });
        let label = format!("attn-gen nn p·V 1x{l}x{hd} {name}");
        bench.run(&label, Some(isa), flops, || {
            cpu::matmul_f32_nn_with(isa, &p, &kv, &mut o, 1, l, hd, false)
        });
    }
}

/// The CPU's model name and the /proc/cpuinfo flags that matter to the kernels (Linux only).
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags")
        .or_else(|| field("Features"))
        .unwrap_or_default();
    let relevant: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| {
            [
                "fma", "f16c", "avx2", "asimd", "fphp", "asimdhp", "bf16", "i8mm", "sve",
            ]
            .contains(f)
                || f.starts_with("avx512")
                || f.starts_with("amx")
        })
        .collect();
    format!("{model}; {}", relevant.join(" "))
}

fn bench_all() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!("machine: {}", machine());
    println!(
        "threads: {}, ISAs: {:?}",
        rayon::current_num_threads(),
        cpu::available_isas()
    );
    let whole = load::Sample::now();
    let peaks = Peaks::measure();
    peaks.print();
    println!();
    let mut bench = Bench {
        filter,
        peaks,
        results: Vec::new(),
        tries: 1,
        paused: Duration::ZERO,
    };
    let bench = &mut bench;
    // (n tokens, rows = out features, cols = in features)
    let shapes = [
        (256, 576, 576),
        (256, 192, 576),
        (256, 1536, 576),
        (256, 576, 1536),
        (1, 576, 576),
        (1, 1536, 576),
        (1, 576, 1536),
        (4, 576, 576),
        (8, 576, 576),
        (16, 576, 576),
        (64, 576, 576),
        (1, 49152, 576),
        (32, 49152, 576),
    ];
    bench_lora(bench);
    bench_attn_gen(bench);
    bench_f32_products(bench);
    let isas: Vec<Isa> = cpu::available_isas();
    let types = [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1];
    for &(n, rows, cols) in &shapes {
        // Every label this shape can print with type `ty` (None: the gemm crate's).
        let labels = |ty: Option<GgmlType>| -> Vec<String> {
            let mut v = Vec::new();
            for dir in ["wt", "w "] {
                let shape = format!("{dir} {n}x{rows}x{cols}");
                match ty {
                    Some(ty) => v.extend(
                        isas.iter()
                            .map(|&i| format!("{shape} {} {}", ty.name(), cpu::isa_name(i))),
                    ),
                    None => v.push(format!("{shape} F32 gemm-crate")),
                }
            }
            v
        };
        let wanted = |ty: Option<GgmlType>| labels(ty).iter().any(|l| bench.want(l));
        let want_types: Vec<GgmlType> = types.into_iter().filter(|&t| wanted(Some(t))).collect();
        let want_crate = wanted(None);
        if want_types.is_empty() && !want_crate {
            continue; // skip building the data (the vocab shapes are big)
        }
        bench.tries = if n == 256 { 3 } else { 1 };
        let flops = 2.0 * (n * rows * cols) as f64;
        let mut s = 7u64;
        let x: Vec<f32> = (0..n * cols).map(|_| rand_f32(&mut s)).collect();
        let dy: Vec<f32> = (0..n * rows).map(|_| rand_f32(&mut s)).collect();
        let mut y = vec![0.0f32; n * rows];
        let mut dx = vec![0.0f32; n * cols];
        for ty in want_types {
            let w = matrix(ty, rows, cols);
            for &isa in &isas {
                let label = format!("wt {n}x{rows}x{cols} {} {}", ty.name(), cpu::isa_name(isa));
                bench.run(&label, Some(isa), flops, || {
                    cpu::matmul_wt_with(isa, black_box(&x), n, &w, &mut y)
                });
                let label = format!("w  {n}x{rows}x{cols} {} {}", ty.name(), cpu::isa_name(isa));
                bench.run(&label, Some(isa), flops, || {
                    cpu::matmul_w_with(isa, black_box(&dy), n, &w, &mut dx)
                });
            }
        }
        if !want_crate {
            continue;
        }
        let wf: Vec<f32> = (0..rows * cols).map(|_| rand_f32(&mut s)).collect();
        let label = format!("wt {n}x{rows}x{cols} F32 gemm-crate");
        bench.run(&label, None, flops, || {
            gemm_crate(n, cols, rows, black_box(&x), &wf, &mut y, true)
        });
        let label = format!("w  {n}x{rows}x{cols} F32 gemm-crate");
        bench.run(&label, None, flops, || {
            gemm_crate(n, rows, cols, black_box(&dy), &wf, &mut dx, false)
        });
    }
    summary(bench, &isas);
    if let (Some(o), Some(w)) = (whole.others(), whole.waited()) {
        println!();
        println!(
            "During the bench, other processes used {o:.2} cores and the bench's threads waited \
             {w:.2} cores for a CPU, on average; † marks a row whose threads waited more than \
             {WAITED} cores (after 3 tries; the best time is shown)."
        );
    }
}

/// Markdown table of the model's projections at 256 tokens: GFLOP/s and % of peak per path,
/// beside the gemm crate (f32 weights) and the peaks themselves.
fn summary(bench: &Bench, isas: &[Isa]) {
    // (rows = out, cols = in, which projections)
    let shapes = [
        (576, 576, "q, o"),
        (192, 576, "k, v"),
        (1536, 576, "gate, up"),
        (576, 1536, "down"),
    ];
    let n = 256;
    let threads = bench.peaks.threads;
    println!();
    println!(
        "## GEMM at the model's shapes, {n} tokens, {threads} threads: GFLOP/s (% of the path's \
         measured {threads}-thread f32 FMA peak)"
    );
    println!();
    let mut head = String::from("| product | weights |");
    let mut rule = String::from("|---|---|");
    for &isa in isas {
        head += &format!(" {} |", cpu::isa_name(isa));
        rule += "---:|";
    }
    println!("{head} gemm crate (f32 weights) |");
    println!("{rule}---:|");
    let mut peak_row = format!("| **peak**, {threads} threads | |");
    for &isa in isas {
        peak_row += &match bench.peaks.of(isa) {
            Some((f, Some(l))) => format!(" {f:.0} f32, {l:.0} {} |", peak::low_word(isa)),
            Some((f, None)) => format!(" {f:.0} |"),
            None => " – |".into(),
        };
    }
    println!("{peak_row} {:.0} (best f32) |", bench.peaks.best_f32());
    for (rows, cols, what) in shapes {
        for (dir, dir_label) in [("wt", "y = x·Wᵀ"), ("w ", "dx = dy·W")] {
            let shape = format!("{dir} {n}x{rows}x{cols}");
            for ty in [GgmlType::Q4_1, GgmlType::F32] {
                let mut line = format!(
                    "| {what} {dir_label} [{n}×{cols}]·W[{rows}×{cols}] | {} |",
                    ty.name()
                );
                for &isa in isas {
                    let label = format!("{shape} {} {}", ty.name(), cpu::isa_name(isa));
                    line += &cell(bench, Some(isa), bench.result(&label));
                }
                line += &cell(
                    bench,
                    None,
                    bench.result(&format!("{shape} F32 gemm-crate")),
                );
                println!("{line}");
            }
        }
    }
}

/// " 104.2 (88%) |", " 104.2 (88%)† |" if disturbed, or " – |" if the row was not run.
fn cell(bench: &Bench, isa: Option<Isa>, result: Option<(f64, bool)>) -> String {
    let Some((g, busy)) = result else {
        return " – |".into();
    };
    let mark = if busy { "†" } else { "" };
    let pct = |p: f64| 100.0 * g / p;
    match isa.and_then(|i| bench.peaks.of(i)) {
        Some((f, Some(l))) => format!(
            " {g:.1} ({:.0}% f32, {:.0}% {}){mark} |",
            pct(f),
            pct(l),
            peak::low_word(isa.unwrap())
        ),
        Some((f, None)) => format!(" {g:.1} ({:.0}%){mark} |", pct(f)),
        None => format!(" {g:.1} ({:.0}% best){mark} |", pct(bench.peaks.best_f32())),
    }
}
