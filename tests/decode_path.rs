//! Generation's one-token decode path (`Model::with_decoder`: the thread team, or
//! `decode_step` and `decode_logits`; integer dots on AVX-512 VNNI) against the exact forward
//! pass on the real model: every logit within 3e-3 of the largest |logit| (measured: 7e-4 over
//! 24 steps on AVX-512 VNNI; ~1e-6 where the decode path is exact). Skipped (with a note) when
//! the model file is absent.

mod common;

use edge_sft::loaded::LoadedModel;
use edge_sft::model::forward::KvCache;

#[test]
fn decode_step_matches_forward() {
    let Some(p) = common::find_model("EDGE_SFT_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf") else {
        eprintln!("note: SmolLM2 GGUF not found (run scripts/fetch_model.sh); skipping");
        return;
    };
    let lm = LoadedModel::open(&p).expect("open SmolLM2");
    let m = &lm.model;
    let d = m.config.d_model;
    let prompt = lm
        .tokenizer
        .encode("The quick brown fox jumps over")
        .unwrap();
    let (mut ca, mut cb) = (KvCache::new(m.layers.len()), KvCache::new(m.layers.len()));
    let h = m.forward(&prompt, &mut ca, None).unwrap();
    m.forward(&prompt, &mut cb, None).unwrap();
    let mut st = m.decode_state();
    st.hidden.copy_from_slice(&h[h.len() - d..]);
    m.decode_logits(&mut st);
    let mut worst = 0.0f32;
    // With several threads and no adapter: the thread team (`with_team`); else `decode_next`.
    m.with_decoder(&mut ca, None, |step_fn| {
        for step in 0..24 {
            let next = edge_sft::infer::sampling::argmax(&st.logits) as u32;
            // The exact path: forward on the same tokens.
            let exact_h = m.forward(&[next], &mut cb, None).unwrap();
            step_fn(next, &mut st).unwrap();
            let hd = st
                .hidden
                .iter()
                .zip(&exact_h)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let scale = exact_h.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            let exact_logits = m.logits(&exact_h, 1);
            let ld = st
                .logits
                .iter()
                .zip(&exact_logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let lscale = exact_logits.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            worst = worst.max(ld / lscale);
            eprintln!(
                "step {step}: hidden max|Δ| {hd:.3e} (max|h| {scale:.2}), logits max|Δ| {ld:.3e} (max|l| {lscale:.2})"
            );
            assert!(ld / lscale < 3e-3, "step {step}: logits differ by {ld} of {lscale}");
        }
    });
    assert_eq!(ca.len, cb.len);
    eprintln!("worst relative logit difference {worst:.3e}");
}
