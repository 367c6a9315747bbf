//! A training step reuses its arena: after a first (warm-up) step, a second step on the same
//! arena allocates no activation-sized buffer at all, and its heap traffic is a small fraction
//! of the arena. A counting allocator watches the second step (tiny Llama fixture, packed
//! records, with and without gradient checkpointing and dropout).
//!
//! The steps run on a one-thread pool: kernels also keep per-thread scratch (GEMM panels,
//! attention tiles) that each thread grows once, the first time it runs a task of a given
//! size; with several threads which thread first meets which size varies from run to run, so
//! that one-time growth could land in any step. One thread makes the check deterministic.

use edge_sft::data::{load_jsonl, DataOptions, LossOn, TemplateMode};
use edge_sft::infer::sampling::Rng;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::Target;
use edge_sft::train::arena::Arena;
use edge_sft::train::batch::Batch;
use edge_sft::train::params::{init_lora, zeros_like};
use edge_sft::train::proj::Dropout;
use edge_sft::train::step::forward_backward_in;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static ON: AtomicBool = AtomicBool::new(false);
thread_local! {
    /// Set on the pool thread while it runs a measured step: only the step's own allocations
    /// count, not those of the test harness's other threads.
    static IN_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static BIG: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) && IN_STEP.with(|f| f.get()) {
            BYTES.fetch_add(l.size(), Ordering::Relaxed);
            LARGEST.fetch_max(l.size(), Ordering::Relaxed);
            if l.size() >= THRESHOLD.load(Ordering::Relaxed) {
                BIG.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p came from System.alloc with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn second_step_allocates_no_activation_buffers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny");
    let lm = LoadedModel::open(&root.join("llama/q8_0.gguf")).unwrap();
    let opts = DataOptions {
        loss_on: LossOn::Response,
        template: TemplateMode::Model,
        max_seq: 4096,
        skip_bad: false,
    };
    let ds = load_jsonl(&root.join("records.jsonl"), &lm.tokenizer, &lm.chat, &opts).unwrap();
    let batch = Batch::from_examples(ds.examples.iter());
    let c = &lm.model.config;
    let lora = init_lora(c, 4, 8.0, &Target::ALL, 7);
    // The smallest per-block buffer of the arena is [T, kv_dim]; nothing that size may be
    // allocated by a warm step.
    let t = batch.len();
    let smallest = 4 * t * c.kv_dim().min(c.d_model);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for (ckpt, drop) in [(false, false), (true, false), (false, true)] {
        let mut arena = Arena::new(c, &lora, t, ckpt, drop);
        let dropout = || {
            drop.then(|| Dropout {
                p: 0.1,
                rng: Rng::new(3),
            })
        };
        let mut g = zeros_like(&lora);
        let scale = 1.0 / batch.scored.len() as f32;
        let mut step = |measure: bool| {
            pool.install(|| {
                IN_STEP.with(|f| f.set(measure));
                let out = forward_backward_in(
                    &mut arena,
                    &lm.model,
                    &lora,
                    &batch,
                    &mut g,
                    scale,
                    ckpt,
                    dropout(),
                );
                IN_STEP.with(|f| f.set(false));
                out.unwrap()
            })
        };
        step(false);
        THRESHOLD.store(smallest, Ordering::SeqCst);
        BIG.store(0, Ordering::SeqCst);
        BYTES.store(0, Ordering::SeqCst);
        LARGEST.store(0, Ordering::SeqCst);
        ON.store(true, Ordering::SeqCst);
        step(true);
        ON.store(false, Ordering::SeqCst);
        let (big, bytes, largest) = (
            BIG.load(Ordering::SeqCst),
            BYTES.load(Ordering::SeqCst),
            LARGEST.load(Ordering::SeqCst),
        );
        eprintln!(
            "checkpoint {ckpt} dropout {drop}: arena {} B, step allocated {bytes} B \
             (largest {largest} B, {big} of ≥ {smallest} B)",
            arena.bytes()
        );
        assert_eq!(
            big, 0,
            "checkpoint {ckpt} dropout {drop}: {big} allocations of ≥ {smallest} B in a warm step \
             (largest {largest} B)"
        );
        assert!(
            bytes * 20 < arena.bytes(),
            "checkpoint {ckpt} dropout {drop}: a warm step allocated {bytes} B, arena {} B",
            arena.bytes()
        );
    }
}
