//! The fused NLL kernel never allocates a [scored rows × vocab] buffer: a counting allocator
//! records the largest single allocation made while it runs at 512 scored rows and a vocab of
//! 49,152 (the SmolLM2 shape), where that matrix alone would take ~100 MB.

use edge_sft::model::weights::QMatrix;
use edge_sft::train::loss::{fused_nll, CHUNK};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static TOTAL_LIVE_PEAK: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ON: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            LARGEST.fetch_max(l.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            TOTAL_LIVE_PEAK.fetch_max(live, Ordering::Relaxed);
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if ON.load(Ordering::Relaxed) {
            LIVE.fetch_sub(
                l.size().min(LIVE.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        // SAFETY: p came from System.alloc with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn fused_nll_allocates_no_rows_by_vocab_matrix() {
    let (m, d, vocab) = (512usize, 64usize, 49_152usize);
    let w: Vec<f32> = (0..vocab * d)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 * 1e-4 - 0.05)
        .collect();
    let w = QMatrix::from_f32("output", vocab, d, &w);
    let h: Vec<f32> = (0..m * d)
        .map(|i| ((i * 40_503) % 997) as f32 * 1e-3 - 0.5)
        .collect();
    let targets: Vec<u32> = (0..m as u32).map(|i| (i * 97) % vocab as u32).collect();
    let mut dh = vec![0.0f32; m * d];

    LIVE.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::SeqCst);
    let out = fused_nll(&h, &targets, &w, 1.0, &mut dh);
    ON.store(false, Ordering::SeqCst);

    assert_eq!(out.nll.len(), m);
    assert!(out.nll.iter().all(|v| v.is_finite() && *v > 0.0));
    let full = m * vocab * 4; // the [rows × vocab] f32 matrix: ~100 MB
    let largest = LARGEST.load(Ordering::Relaxed);
    let peak = TOTAL_LIVE_PEAK.load(Ordering::Relaxed);
    eprintln!("largest allocation {largest} B, peak live {peak} B, full logits would be {full} B");
    assert!(
        largest <= m * CHUNK * 4 + 4096,
        "an allocation of {largest} B exceeds one [rows × CHUNK] tile"
    );
    assert!(
        peak < full / 8,
        "peak live memory {peak} B is not far below the {full} B logits matrix"
    );
}
