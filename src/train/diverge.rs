//! Catching a run that has gone wrong before it is published: a non-finite loss or gradient, a
//! model collapsed to the uniform distribution (loss = ln(vocab), gradient 0: what lr 1e6 does
//! to SmolLM2), or a loss that has climbed far above where the run started. The trainer stops
//! with an error naming the step (and, for non-finite gradients, the first layer that has one);
//! the last checkpoint and adapter on disk, written before that step, stay as they were.

use crate::model::lora::{LoraSet, Target};

/// Smoothing of the per-step loss: batch-1 losses swing by several nats from record to record,
/// so single steps are never judged alone.
const EMA: f64 = 0.1;
/// Steps before the smoothed loss is trusted as "where the run started".
const SETTLE: usize = 5;

#[derive(Debug, Default)]
pub struct DivergenceWatch {
    ema: Option<f64>,
    start: Option<f64>,
    steps: usize,
}

impl DivergenceWatch {
    /// Look at one optimizer step (`step` 1-based); `Some(reason)` when the run must stop.
    pub fn check(
        &mut self,
        step: usize,
        loss: f64,
        grad_norm: f64,
        grads: &LoraSet,
        vocab: usize,
    ) -> Option<String> {
        if !loss.is_finite() || !grad_norm.is_finite() {
            let place = first_non_finite(grads)
                .map(|(l, t)| format!(" (first non-finite gradient: layer {l}, {})", t.short()))
                .unwrap_or_default();
            return Some(format!(
                "step {step}: loss {loss}, gradient norm {grad_norm}{place}"
            ));
        }
        let uniform = (vocab.max(2) as f64).ln();
        if grad_norm < 1e-7 && (loss - uniform).abs() < 1e-2 {
            return Some(format!(
                "step {step}: the model has collapsed to a uniform distribution (loss {loss:.4} = \
                 ln of the vocabulary size, gradient norm {grad_norm:.1e})"
            ));
        }
        self.steps += 1;
        let ema = match self.ema {
            Some(e) => e + EMA * (loss - e),
            None => loss,
        };
        self.ema = Some(ema);
        if self.steps == SETTLE {
            self.start = Some(ema);
        }
        match self.start {
            // More than doubled and 3 nats up, smoothed: far outside batch-to-batch noise.
            Some(s) if ema > 2.0 * s + 3.0 => Some(format!(
                "step {step}: the smoothed loss has climbed to {ema:.4} from {s:.4} at the start"
            )),
            _ => None,
        }
    }
}

fn first_non_finite(grads: &LoraSet) -> Option<(usize, Target)> {
    grads.layers.iter().enumerate().find_map(|(l, slots)| {
        Target::ALL.iter().find_map(|&t| {
            let p = slots[t.index()].as_ref()?;
            p.a.iter()
                .chain(&p.b)
                .any(|v| !v.is_finite())
                .then_some((l, t))
        })
    })
}

/// Whether every parameter is finite (checked before any adapter or checkpoint is written).
pub fn all_finite(params: &LoraSet) -> bool {
    params
        .layers
        .iter()
        .flatten()
        .flatten()
        .all(|p| p.a.iter().chain(&p.b).all(|v| v.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> LoraSet {
        LoraSet {
            rank: 1,
            alpha: 1.0,
            scale: 1.0,
            targets: vec![],
            layers: vec![],
        }
    }

    #[test]
    fn noise_passes_and_divergence_stops() {
        let g = empty();
        let mut w = DivergenceWatch::default();
        // Batch-1 losses swinging between 0.2 and 2.4 are no divergence.
        for s in 1..=200 {
            let loss = if s % 3 == 0 { 2.4 } else { 0.2 };
            assert_eq!(w.check(s, loss, 1.0, &g, 49152), None, "step {s}");
        }
        let mut w = DivergenceWatch::default();
        for s in 1..=10 {
            assert_eq!(w.check(s, 2.0, 1.0, &g, 49152), None);
        }
        let mut stopped = None;
        for s in 11..=60 {
            if let Some(r) = w.check(s, 9.0, 1.0, &g, 49152) {
                stopped = Some((s, r));
                break;
            }
        }
        let (s, r) = stopped.expect("a loss stuck at 9 from 2 must stop the run");
        assert!(r.contains("climbed") && s < 30, "{s}: {r}");
        let mut w = DivergenceWatch::default();
        let r = w.check(3, (49152f64).ln(), 0.0, &g, 49152).unwrap();
        assert!(r.contains("collapsed"), "{r}");
        let r = w.check(4, f64::NAN, 1.0, &g, 49152).unwrap();
        assert!(r.contains("step 4"), "{r}");
    }
}
