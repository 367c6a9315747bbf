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

use edge_sft::cpu::{self, Isa};
use edge_sft::model::weights::{Backing, QMatrix};
use edge_sft::quant::GgmlType;
use half::f16;
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

fn report(label: &str, flops: f64, t: Duration) {
    println!(
        "{label:<46} {:>9.1} us {:>8.1} GFLOP/s",
        t.as_secs_f64() * 1e6,
        flops / t.as_secs_f64() / 1e9
    );
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
fn bench_lora(want: &dyn Fn(&str) -> bool) {
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
        if want(&label) {
            let tm = time(|| cpu::matmul_f32_nt_with(isa, &x, &a, &mut tr, t, d, r, false));
            report(&label, flops, tm);
        }
        let label = format!("lora nt u·Bᵀ {t}x{r}x{d} {name}");
        if want(&label) {
            let tm = time(|| cpu::matmul_f32_nt_with(isa, &u, &a, &mut td, t, r, d, false));
            report(&label, flops, tm);
        }
        let label = format!("lora tn uᵀ·x {r}x{t}x{d} {name}");
        if want(&label) {
            let tm = time(|| cpu::matmul_f32_tn_with(isa, &u, &x, &mut rd, r, t, d, true));
            report(&label, flops, tm);
        }
    }
}

/// f32·f32 products at the model shapes (m = 256 tokens): c[m, n] = a[m, k]·b[k, n] (nn)
/// and a[m, k]·b[n, k]ᵀ (nt).
fn bench_f32_products(want: &dyn Fn(&str) -> bool) {
    for (m, k, n) in [(256, 576, 576), (256, 576, 1536), (256, 1536, 576)] {
        let mut s = 9u64;
        let a: Vec<f32> = (0..m * k).map(|_| rand_f32(&mut s)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rand_f32(&mut s)).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        for isa in cpu::available_isas() {
            let name = cpu::isa_name(isa);
            let label = format!("f32 nn {m}x{k}x{n} {name}");
            if want(&label) {
                let tm = time(|| cpu::matmul_f32_nn_with(isa, &a, &b, &mut c, m, k, n, false));
                report(&label, flops, tm);
            }
            let label = format!("f32 nt {m}x{k}x{n} {name}");
            if want(&label) {
                let tm = time(|| cpu::matmul_f32_nt_with(isa, &a, &b, &mut c, m, k, n, false));
                report(&label, flops, tm);
            }
        }
    }
}

/// Attention of one new token against a 1024-token cache (one head, hd 64): q·Kᵀ and p·V.
fn bench_attn_gen(want: &dyn Fn(&str) -> bool) {
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
        if want(&label) {
            let tm = time(|| cpu::matmul_f32_nt_with(isa, &q, &kv, &mut sc, 1, hd, l, false));
            report(&label, flops, tm);
        }
        let label = format!("attn-gen nn p·V 1x{l}x{hd} {name}");
        if want(&label) {
            let tm = time(|| cpu::matmul_f32_nn_with(isa, &p, &kv, &mut o, 1, l, hd, false));
            report(&label, flops, tm);
        }
    }
}

fn bench_all() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |label: &str| filter.is_empty() || filter.iter().any(|f| label.contains(f.as_str()));
    println!(
        "threads: {}, ISAs: {:?}",
        rayon::current_num_threads(),
        cpu::available_isas()
    );
    // (n tokens, rows = out features, cols = in features)
    let shapes = [
        (256, 576, 576),
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
    bench_lora(&want);
    bench_attn_gen(&want);
    bench_f32_products(&want);
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
        let wanted = |ty: Option<GgmlType>| labels(ty).iter().any(|l| want(l));
        if !types.iter().any(|&t| wanted(Some(t))) && !wanted(None) {
            continue; // skip building the data (the vocab shapes are big)
        }
        let flops = 2.0 * (n * rows * cols) as f64;
        let mut s = 7u64;
        let x: Vec<f32> = (0..n * cols).map(|_| rand_f32(&mut s)).collect();
        let dy: Vec<f32> = (0..n * rows).map(|_| rand_f32(&mut s)).collect();
        let mut y = vec![0.0f32; n * rows];
        let mut dx = vec![0.0f32; n * cols];
        for ty in types {
            if !wanted(Some(ty)) {
                continue;
            }
            let w = matrix(ty, rows, cols);
            for &isa in &isas {
                let label = format!("wt {n}x{rows}x{cols} {} {}", ty.name(), cpu::isa_name(isa));
                if want(&label) {
                    let t = time(|| cpu::matmul_wt_with(isa, black_box(&x), n, &w, &mut y));
                    report(&label, flops, t);
                }
                let label = format!("w  {n}x{rows}x{cols} {} {}", ty.name(), cpu::isa_name(isa));
                if want(&label) {
                    let t = time(|| cpu::matmul_w_with(isa, black_box(&dy), n, &w, &mut dx));
                    report(&label, flops, t);
                }
            }
        }
        if !wanted(None) {
            continue;
        }
        let wf: Vec<f32> = (0..rows * cols).map(|_| rand_f32(&mut s)).collect();
        let label = format!("wt {n}x{rows}x{cols} F32 gemm-crate");
        if want(&label) {
            let t = time(|| gemm_crate(n, cols, rows, black_box(&x), &wf, &mut y, true));
            report(&label, flops, t);
        }
        let label = format!("w  {n}x{rows}x{cols} F32 gemm-crate");
        if want(&label) {
            let t = time(|| gemm_crate(n, rows, cols, black_box(&dy), &wf, &mut dx, false));
            report(&label, flops, t);
        }
    }
}
