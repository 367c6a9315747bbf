//! Training-attention microbenchmark: `cargo bench --bench attention [-- FILTER]`.
//!
//! `attention_forward` and `attention_backward` at the SmolLM2-135M shape (9 query heads,
//! 3 kv heads, head_dim 64) for one packed sequence of 256 and 1024 tokens (and 1024 tokens as
//! four 256-token records), on a rayon pool of 1 and of 2 threads, called from inside the pool
//! like the trainer does. Prints the best time of several runs (the machine is shared: the
//! best run is the least disturbed one), GFLOP/s counting only the causal half of each
//! product (forward 2 products, backward 5, of 2·hd flops per visible (query, key) pair and
//! head), and µs per token. Not a test: numbers depend on the machine.
//!
//! Each row is timed for the crate's attention (`new`) and for a fixed reference, the code
//! before issue 4 (`baseline`, in attention/baseline.rs: nothing else uses it), alternating call
//! by call in the same run, so ratios are measured under the same load and the same GEMM
//! kernels. `allocs/call` counts heap
//! allocations (all threads) of one more call after the timed ones: the steady state.
//!
//! Environment: `ATTN_BENCH_NEW_ONLY=1` skips the baseline (for profiling with perf);
//! `ATTN_BENCH_ALLOC_TRACE=1` prints the allocations of 20 consecutive calls;
//! `EDGE_SFT_ISA=...` picks the kernel path as everywhere else.

#[path = "attention/baseline.rs"]
mod baseline;

use edge_sft::train::attention::{attention_backward, attention_forward, AttnShape};
use edge_sft::train::batch::Segment;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting allocations (all threads) so the bench can show that a call
/// in steady state allocates nothing.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::SeqCst);
    f();
    ALLOCS.load(Ordering::SeqCst) - before
}

fn rnd(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Best wall time of each of `fs` (run in turn, so both see the same machine load) over at
/// least `min_runs` rounds and about `budget` of total time.
fn best_of(min_runs: usize, budget: Duration, fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    for f in fs.iter_mut() {
        f(); // warm up: scratch buffers, caches, pool threads
    }
    let start = Instant::now();
    let mut best = vec![Duration::MAX; fs.len()];
    let mut runs = 0;
    while runs < min_runs || (start.elapsed() < budget && runs < 200) {
        for (f, b) in fs.iter_mut().zip(best.iter_mut()) {
            let t = Instant::now();
            f();
            *b = (*b).min(t.elapsed());
        }
        runs += 1;
    }
    best
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    // For profiling the current code alone: ATTN_BENCH_NEW_ONLY=1 skips the baseline.
    let run_baseline = std::env::var_os("ATTN_BENCH_NEW_ONLY").is_none();
    let s = AttnShape::causal(9, 3, 64);
    let hd = s.head_dim;
    let cases: [(&str, usize, usize); 3] =
        [("seq256", 256, 1), ("seq1024", 1024, 1), ("4x256", 1024, 4)];
    println!("| case | threads | pass | impl | best ms | GFLOP/s | µs/token | new/baseline time | allocs/call |\n|---|---|---|---|---|---|---|---|---|");
    for (name, t, nseg) in cases {
        let seg_len = t / nseg;
        let segs: Vec<Segment> = (0..nseg)
            .map(|i| Segment {
                start: i * seg_len,
                len: seg_len,
            })
            .collect();
        // Visible (query, key) pairs of all segments, times heads.
        let pairs = (nseg * seg_len * (seg_len + 1) / 2 * s.n_heads) as f64;
        let mut seed = 7;
        let q = rnd(&mut seed, t * s.qd());
        let k = rnd(&mut seed, t * s.kvd());
        let v = rnd(&mut seed, t * s.kvd());
        let dout = rnd(&mut seed, t * s.qd());
        for threads in [1, 2] {
            let label = format!("{name} {threads}t");
            if filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
                continue;
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            // Each implementation writes its own outputs; backward reads one forward's.
            let fresh = || {
                (
                    vec![0.0f32; t * s.qd()],
                    vec![0.0f32; t * s.n_heads],
                    vec![0.0f32; t * s.qd()],
                    vec![0.0f32; t * s.kvd()],
                    vec![0.0f32; t * s.kvd()],
                )
            };
            let (mut out0, mut lse0, mut dq0, mut dk0, mut dv0) = fresh();
            let (mut out1, mut lse1, mut dq1, mut dk1, mut dv1) = fresh();
            let (mut out, mut lse) = (vec![0.0f32; t * s.qd()], vec![0.0f32; t * s.n_heads]);
            attention_forward(s, &segs, &q, &k, &v, &mut out, &mut lse);
            let (out, lse) = (&out, &lse);
            let budget = Duration::from_millis(3000);
            let (fwd, bwd) = pool.install(|| {
                let fwd = best_of(
                    5,
                    budget,
                    &mut [
                        &mut || {
                            if run_baseline {
                                baseline::attention_forward(
                                    s, &segs, &q, &k, &v, &mut out0, &mut lse0,
                                );
                            }
                            black_box(&out0);
                        },
                        &mut || {
                            attention_forward(s, &segs, &q, &k, &v, &mut out1, &mut lse1);
                            black_box(&out1);
                        },
                    ],
                );
                let bwd = best_of(
                    5,
                    budget,
                    &mut [
                        &mut || {
                            if run_baseline {
                                baseline::attention_backward(
                                    s, &segs, &q, &k, &v, out, lse, &dout, &mut dq0, &mut dk0,
                                    &mut dv0,
                                );
                            }
                            black_box(&dq0);
                        },
                        &mut || {
                            attention_backward(
                                s, &segs, &q, &k, &v, out, lse, &dout, &mut dq1, &mut dk1, &mut dv1,
                            );
                            black_box(&dq1);
                        },
                    ],
                );
                (fwd, bwd)
            });
            if std::env::var_os("ATTN_BENCH_ALLOC_TRACE").is_some() {
                let trace: Vec<usize> = pool.install(|| {
                    (0..20)
                        .map(|_| {
                            allocations(|| {
                                attention_backward(
                                    s, &segs, &q, &k, &v, out, lse, &dout, &mut dq1, &mut dk1,
                                    &mut dv1,
                                )
                            })
                        })
                        .collect()
                });
                eprintln!("{name} {threads}t backward allocations per call: {trace:?}");
                let trace: Vec<usize> = pool.install(|| {
                    (0..20)
                        .map(|i| {
                            if i % 5 == 4 {
                                baseline::attention_forward(
                                    s, &segs, &q, &k, &v, &mut out0, &mut lse0,
                                );
                            }
                            allocations(|| {
                                attention_forward(s, &segs, &q, &k, &v, &mut out1, &mut lse1)
                            })
                        })
                        .collect()
                });
                eprintln!("{name} {threads}t forward allocations per call: {trace:?}");
            }
            // One more call of each after the timed ones (steady state).
            let allocs = pool.install(|| {
                [
                    allocations(|| {
                        baseline::attention_forward(s, &segs, &q, &k, &v, &mut out0, &mut lse0)
                    }),
                    allocations(|| attention_forward(s, &segs, &q, &k, &v, &mut out1, &mut lse1)),
                    allocations(|| {
                        baseline::attention_backward(
                            s, &segs, &q, &k, &v, out, lse, &dout, &mut dq0, &mut dk0, &mut dv0,
                        )
                    }),
                    allocations(|| {
                        attention_backward(
                            s, &segs, &q, &k, &v, out, lse, &dout, &mut dq1, &mut dk1, &mut dv1,
                        )
                    }),
                ]
            });
            let rows = [("baseline", fwd[0], bwd[0]), ("new", fwd[1], bwd[1])];
            for (pi, pass, products) in [(0, "fwd", 2.0), (1, "bwd", 5.0)] {
                let time = |r: &(&str, Duration, Duration)| if pi == 0 { r.1 } else { r.2 };
                let base_secs = time(&rows[0]).as_secs_f64();
                for (ri, r) in rows.iter().enumerate() {
                    let secs = time(r).as_secs_f64();
                    println!(
                        "| {name} | {threads} | {pass} | {} | {:.3} | {:.1} | {:.2} | {:.2} | {} |",
                        r.0,
                        secs * 1e3,
                        products * 2.0 * hd as f64 * pairs / secs / 1e9,
                        secs * 1e6 / t as f64,
                        secs / base_secs,
                        allocs[2 * pi + ri]
                    );
                }
            }
        }
    }
}
