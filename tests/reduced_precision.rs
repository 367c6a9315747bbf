//! The model forward pass on each opt-in reduced-precision kernel path against the
//! transformers float32 golden values (tests/golden/tiny/llama, Q8_0 GGUF).
//!
//! The plain kernel functions read `EDGE_SFT_ISA` once per process, so this is its own test
//! binary with a single test: it checks the first reduced path the host offers in-process
//! and re-runs itself once per further path (`EDGE_SFT_ISA=<path>` and
//! `EDGE_SFT_REDUCED_CHILD=1` set in the child's environment before its first kernel call). On a host without a reduced-precision path the test only
//! checks that the request falls back to an f32 path (and says so).

use edge_sft::cpu::{self, Isa};
use edge_sft::loaded::LoadedModel;
use edge_sft::model::forward::KvCache;
use serde_json::Value;
use std::path::Path;

/// Tolerance on log Σ exp(logits) per position, relative to max(1, |want|).
///
/// Every tiled product of the bf16 path rounds both operands to bf16 (relative error ≤ 2⁻⁹
/// each), so one product's output is off by ≲ 2⁻⁸·Σ|terms| in the worst case and, with
/// independent rounding errors, by ~2⁻⁸·√(Σ terms²) typically. The tiny model chains
/// 2 layers × (attention + MLP) and the output projection; each stage passes a relative
/// error of a few ×2⁻⁸ ≈ 4e-3 through RMSNorm (which renormalizes it, no growth), so the
/// logits carry an absolute error of about 1e-2 × their scale (|logits| ~ 1–6 here), and
/// logsumexp moves by at most the largest logit error. 2e-2 relative to max(1, |lse|) covers
/// that with margin, while a wrong kernel (a lost k pair, a mis-rounded panel) moves logits
/// by whole units. The f32 paths pass `tests/model_golden.rs` at 1e-4: this test is
/// deliberately 200× looser, as bf16 is ~2¹⁵× coarser than f32. (Measured on an AVX512-BF16
/// host: worst 2.9e-4, since errors of independent roundings mostly cancel.)
const TOL_BF16: f64 = 2e-2;

/// The same for the f16-weight paths (`neonfp16`, `avx2f16`): only frozen-weight products
/// are rounded, and only their weight operand, to f16 (relative error ≤ 2⁻¹¹ against the
/// bf16 path's 2·2⁻⁹ per term): 8× less, so the bf16 argument above gives 2.5e-3.
const TOL_F16: f64 = 2.5e-3;

/// Set in the environment of the per-path child runs.
const CHILD: &str = "EDGE_SFT_REDUCED_CHILD";

/// The reduced-precision paths this host offers.
fn reduced_paths() -> Vec<Isa> {
    cpu::available_isas()
        .into_iter()
        .filter(|isa| isa.reduced_precision())
        .collect()
}

#[test]
fn tiny_llama_on_reduced_precision_path_matches_transformers() {
    if std::env::var_os(CHILD).is_some() {
        return check_active_path();
    }
    let paths = reduced_paths();
    if paths.is_empty() {
        // SAFETY (of intent; set_var is safe in edition 2021): this binary has one test, so
        // no other thread reads the environment concurrently.
        std::env::set_var("EDGE_SFT_ISA", "avx512bf16");
        let active = cpu::active_isa();
        assert!(!active.reduced_precision());
        eprintln!("no reduced-precision kernel path on this CPU: skipped ({active:?} active)");
        return;
    }
    // The first path runs in this process (so a host with one reduced path, e.g. aarch64
    // under qemu-user where a child could not be started, needs no child); the others in
    // children.
    // SAFETY (of intent; set_var is safe in edition 2021): this binary has one test, so no
    // other thread reads the environment concurrently, and no kernel has run yet.
    std::env::set_var("EDGE_SFT_ISA", cpu::isa_name(paths[0]));
    check_active_path();
    let exe = std::env::current_exe().unwrap();
    for &path in &paths[1..] {
        let name = cpu::isa_name(path);
        let out = std::process::Command::new(&exe)
            .args([
                "tiny_llama_on_reduced_precision_path_matches_transformers",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EDGE_SFT_ISA", name)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        assert!(
            out.status.success(),
            "{name}: child run failed\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The child really ran the check (a filter typo would pass with 0 tests).
        assert!(
            stderr.contains("worst logsumexp"),
            "{name}: child did not run the check"
        );
    }
}

/// The golden check on the path `EDGE_SFT_ISA` names (set by the parent run).
fn check_active_path() {
    let name = std::env::var("EDGE_SFT_ISA").unwrap();
    let active = cpu::active_isa();
    assert!(
        active.reduced_precision() && cpu::isa_name(active) == name,
        "EDGE_SFT_ISA={name} must select the path (got {active:?})"
    );
    let tol = match active {
        Isa::NeonFp16 | Isa::Avx2F16 => TOL_F16,
        _ => TOL_BF16,
    };

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama");
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("golden.json")).unwrap()).unwrap();
    let lm = LoadedModel::open(&root.join("q8_0.gguf")).unwrap();
    let m = &lm.model;
    let vocab = m.config.vocab_size;
    let mut worst: f64 = 0.0;
    for (si, seq) in g["variants"]["q8_0"]["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let ids: Vec<u32> = seq["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // More than 4 tokens: the products take the tiled (reduced) GEMM, not the f32 GEMV.
        assert!(
            ids.len() > 4,
            "sequence {si} too short to exercise the GEMM path"
        );
        let mut cache = KvCache::new(m.layers.len());
        let hidden = m.forward(&ids, &mut cache, None).unwrap();
        let logits = m.logits(&hidden, ids.len());
        for (t, row) in logits.chunks(vocab).enumerate() {
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            let want = seq["logsumexp"][t].as_f64().unwrap();
            let err = (lse - want).abs() / want.abs().max(1.0);
            worst = worst.max(err);
            assert!(
                err < tol,
                "{name} seq {si} pos {t}: logsumexp {lse} vs {want} (rel err {err:.2e})"
            );
        }
    }
    eprintln!("{name}: worst logsumexp relative error {worst:.2e} (tolerance {tol:.1e})");
}
