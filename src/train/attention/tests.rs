//! Attention against plain f64 references: one head across blocks and offsets, gradients by
//! finite differences, segment layouts and windows, and independence of the thread count.

use super::tiling::{HEAD_BLOCK, KEY_TILE};
use super::*;
use crate::train::batch::Segment;

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

fn loss(s: AttnShape, segs: &[Segment], q: &[f32], k: &[f32], v: &[f32], w: &[f32]) -> f64 {
    let t: usize = segs.iter().map(|g| g.len).sum();
    let mut out = vec![0.0; t * s.qd()];
    let mut lse = vec![0.0; t * s.n_heads];
    attention_forward(s, segs, q, k, v, &mut out, &mut lse);
    out.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Plain softmax attention for one head, in f64.
fn naive(q: &[f32], k: &[f32], v: &[f32], n: usize, hd: usize) -> Vec<f64> {
    let l = k.len() / hd;
    let off = l - n;
    let mut out = vec![0.0; n * hd];
    for i in 0..n {
        let sc: Vec<f64> = (0..=off + i)
            .map(|j| {
                (0..hd)
                    .map(|c| q[i * hd + c] as f64 * k[j * hd + c] as f64)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
        for (j, x) in sc.iter().enumerate() {
            for c in 0..hd {
                out[i * hd + c] += (x - mx).exp() / z * v[j * hd + c] as f64;
            }
        }
    }
    out
}

#[test]
fn tiled_head_matches_naive_across_blocks_and_offsets() {
    let hd = 8;
    let mut seed = 11;
    let b = HEAD_BLOCK;
    for (l, n) in [
        (b * 2 + 5, b * 2 + 5),
        (150, 3),
        (70, 70),
        (9, 1),
        (KEY_TILE + 70, 70),
    ] {
        let q = rnd(&mut seed, n * hd);
        let k = rnd(&mut seed, l * hd);
        let v = rnd(&mut seed, l * hd);
        let (o, _) = attend_head(&q, &k, &v, n, hd, (1.0 / (hd as f32).sqrt(), 0));
        for (a, b) in o.iter().zip(naive(&q, &k, &v, n, hd)) {
            assert!((*a as f64 - b).abs() < 1e-5, "L={l} n={n}: {a} vs {b}");
        }
    }
}

#[test]
fn backward_matches_finite_differences_and_segments_are_independent() {
    let s = AttnShape::causal(4, 2, 4);
    // The second segment spans two tiles so the blocked backward is exercised.
    let segs = [
        Segment { start: 0, len: 3 },
        Segment {
            start: 3,
            len: BLOCK + 6,
        },
    ];
    let t = 3 + BLOCK + 6;
    let mut seed = 3;
    let q = rnd(&mut seed, t * s.qd());
    let k = rnd(&mut seed, t * s.kvd());
    let v = rnd(&mut seed, t * s.kvd());
    let w = rnd(&mut seed, t * s.qd()); // loss = Σ out ⊙ w, so dout = w
    let mut out = vec![0.0; t * s.qd()];
    let mut lse = vec![0.0; t * s.n_heads];
    attention_forward(s, &segs, &q, &k, &v, &mut out, &mut lse);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(
        s, &segs, &q, &k, &v, &out, &lse, &w, &mut dq, &mut dk, &mut dv,
    );
    let eps = 1e-2f32;
    for (name, base, grad) in [("q", &q, &dq), ("k", &k, &dk), ("v", &v, &dv)] {
        for idx in (0..base.len()).step_by(7) {
            let mut plus = base.clone();
            plus[idx] += eps;
            let mut minus = base.clone();
            minus[idx] -= eps;
            let pick = |x: &Vec<f32>| match name {
                "q" => loss(s, &segs, x, &k, &v, &w),
                "k" => loss(s, &segs, &q, x, &v, &w),
                _ => loss(s, &segs, &q, &k, x, &w),
            };
            let fd = (pick(&plus) - pick(&minus)) / (2.0 * eps as f64);
            assert!(
                (fd - grad[idx] as f64).abs() < 2e-3,
                "{name}[{idx}]: fd {fd} vs {}",
                grad[idx]
            );
        }
    }
    // The second segment alone gives the same output rows: nothing leaks across records.
    let seg2 = [Segment {
        start: 0,
        len: BLOCK + 6,
    }];
    let mut out2 = vec![0.0; (BLOCK + 6) * s.qd()];
    let mut lse2 = vec![0.0; (BLOCK + 6) * s.n_heads];
    attention_forward(
        s,
        &seg2,
        &q[3 * s.qd()..],
        &k[3 * s.kvd()..],
        &v[3 * s.kvd()..],
        &mut out2,
        &mut lse2,
    );
    for (a, b) in out[3 * s.qd()..].iter().zip(&out2) {
        assert!((a - b).abs() < 1e-6);
    }
}

/// Plain softmax attention with segments and GQA in f64, forward and backward, written
/// from the definitions: returns (out, lse, dq, dk, dv) for the loss Σ out ⊙ dout.
#[allow(clippy::type_complexity)]
fn reference(
    s: AttnShape,
    segs: &[Segment],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (qd, kvd, hd, nh) = (s.qd(), s.kvd(), s.head_dim, s.n_heads);
    let t = q.len() / qd;
    let scale = s.scale as f64;
    let (mut out, mut lse) = (vec![0.0; t * qd], vec![0.0; t * nh]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; t * qd], vec![0.0; t * kvd], vec![0.0; t * kvd]);
    let qa = |r: usize, h: usize, c: usize| q[r * qd + h * hd + c] as f64;
    let ka = |r: usize, g: usize, c: usize| k[r * kvd + g * hd + c] as f64;
    let va = |r: usize, g: usize, c: usize| v[r * kvd + g * hd + c] as f64;
    let da = |r: usize, h: usize, c: usize| dout[r * qd + h * hd + c] as f64;
    for seg in segs {
        for h in 0..nh {
            let g = h / s.group();
            for i in seg.start..seg.start + seg.len {
                let lo = if s.window == 0 {
                    seg.start
                } else {
                    (i + 1).saturating_sub(s.window).max(seg.start)
                };
                let keys = lo..=i;
                let sc: Vec<f64> = keys
                    .clone()
                    .map(|j| (0..hd).map(|c| qa(i, h, c) * ka(j, g, c)).sum::<f64>() * scale)
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                lse[i * nh + h] = mx + z.ln();
                let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
                for (pj, j) in p.iter().zip(keys.clone()) {
                    for c in 0..hd {
                        out[i * qd + h * hd + c] += pj * va(j, g, c);
                        dv[j * kvd + g * hd + c] += pj * da(i, h, c);
                    }
                }
                // dP_ij = dO_i · v_j; dS = P ⊙ (dP − Σ_j P dP)
                let dp: Vec<f64> = keys
                    .clone()
                    .map(|j| (0..hd).map(|c| da(i, h, c) * va(j, g, c)).sum::<f64>())
                    .collect();
                let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for ((pj, dpj), j) in p.iter().zip(&dp).zip(keys) {
                    let ds = pj * (dpj - dsum) * scale;
                    for c in 0..hd {
                        dq[i * qd + h * hd + c] += ds * ka(j, g, c);
                        dk[j * kvd + g * hd + c] += ds * qa(i, h, c);
                    }
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

/// |got − want| ≤ 1e-5 · max(|want|, mean |want|) element by element (the mean guards
/// entries that cancel to near zero).
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mean = want.iter().map(|x| x.abs()).sum::<f64>() / want.len().max(1) as f64;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * b.abs().max(mean);
        assert!(
            (*a as f64 - b).abs() <= tol,
            "{what}[{i}]: {a} vs reference {b} (tolerance {tol:e})"
        );
    }
}

fn run_all(
    s: AttnShape,
    segs: &[Segment],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> [Vec<f32>; 5] {
    let t = q.len() / s.qd();
    // Start from garbage: every element of the outputs must be written.
    let (mut out, mut lse) = (vec![7.0; t * s.qd()], vec![7.0; t * s.n_heads]);
    attention_forward(s, segs, q, k, v, &mut out, &mut lse);
    let (mut dq, mut dk, mut dv) = (vec![7.0; q.len()], vec![7.0; k.len()], vec![7.0; v.len()]);
    attention_backward(
        s, segs, q, k, v, &out, &lse, dout, &mut dq, &mut dk, &mut dv,
    );
    [out, lse, dq, dk, dv]
}

#[test]
fn forward_and_backward_match_scalar_reference_on_segment_layouts() {
    // Lengths off every tile size (BLOCK, KEY_TILE) and chunk count: single rows, a
    // partial block, several chunks, more keys than one key tile.
    let layouts: [&[usize]; 5] = [
        &[1],
        &[37],
        &[BLOCK * 3 + 5, 2, BLOCK + 1],
        &[KEY_TILE + BLOCK + 9],
        &[5, KEY_TILE - 3, 1, 70],
    ];
    // Plain causal, then scaled and windowed (Gemma's local layers): windows inside a
    // block, across blocks and across key tiles.
    let windowed = |w: usize| AttnShape {
        scale: 0.3,
        window: w,
        ..AttnShape::causal(6, 2, 8)
    };
    let shapes = [
        AttnShape::causal(6, 2, 8),
        AttnShape::causal(2, 2, 16),
        windowed(5),
        windowed(BLOCK + 3),
        windowed(KEY_TILE + 20),
    ];
    let mut seed = 5;
    for sh in shapes {
        for lens in layouts {
            let mut segs = Vec::new();
            let mut start = 0;
            for &len in lens {
                segs.push(Segment { start, len });
                start += len;
            }
            let t = start;
            let q = rnd(&mut seed, t * sh.qd());
            let k = rnd(&mut seed, t * sh.kvd());
            let v = rnd(&mut seed, t * sh.kvd());
            let dout = rnd(&mut seed, t * sh.qd());
            let got = run_all(sh, &segs, &q, &k, &v, &dout);
            let want = reference(sh, &segs, &q, &k, &v, &dout);
            let want = [want.0, want.1, want.2, want.3, want.4];
            for ((name, g), w) in ["out", "lse", "dq", "dk", "dv"].iter().zip(&got).zip(&want) {
                assert_close(&format!("{sh:?} {lens:?} {name}"), g, w);
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let s = AttnShape::causal(9, 3, 64);
    let segs = [
        Segment { start: 0, len: 300 },
        Segment { start: 300, len: 3 },
        Segment {
            start: 303,
            len: KEY_TILE + 77,
        },
    ];
    let t = 303 + KEY_TILE + 77;
    let mut seed = 9;
    let q = rnd(&mut seed, t * s.qd());
    let k = rnd(&mut seed, t * s.kvd());
    let v = rnd(&mut seed, t * s.kvd());
    let dout = rnd(&mut seed, t * s.qd());
    let runs: Vec<[Vec<f32>; 5]> = [1, 2, 3]
        .iter()
        .map(|&n| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap();
            pool.install(|| run_all(s, &segs, &q, &k, &v, &dout))
        })
        .collect();
    for r in &runs[1..] {
        for (a, b) in r.iter().zip(&runs[0]) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
