//! What a run does with each held-out scoring: track the lowest NLL, choose the step whose
//! adapter `Keep::Best` keeps, and decide when the run has stopped making progress (early
//! stopping). The numbers live in the checkpoint's `State`, so a resumed run carries on with
//! the same bookkeeping.
//!
//! A held-out split of a small data set is a handful of records (5 of 50, a few dozen scored
//! tokens), and its mean NLL moves by more than any fixed margin from one scoring to the next
//! without the adapter getting better or worse. So two scorings are compared pair by pair over
//! their records, and a difference counts only when it is larger than both a fixed margin and
//! twice its standard error ([`paired_se`]). On a small split the early stop then waits for the
//! held-out NLL to turn clearly worse, instead of stopping on noise; on a large split it stops
//! once progress is smaller than the margin.

use super::checkpoint::State;
use crate::eval::EvalReport;

/// The fixed part of the noise margin: 1% + 0.005 nats of `reference`.
pub fn margin(reference: f64) -> f64 {
    0.01 * reference.abs() + 0.005
}

/// Whether a held-out NLL is as good as the lowest one seen, up to the fixed margin. `Keep::Best`
/// keeps the latest step for which this holds (with the margin widened by [`paired_se`]), so an
/// early step that scored a hair lower on a handful of records by chance does not win over the
/// steps after it, which have seen more data (on 10 chat records, noise of that size picked step
/// 114 of 190, and the test set scored worse than with the last step).
pub fn within_noise(nll: f64, lowest: f64) -> bool {
    nll <= lowest + margin(lowest)
}

/// Whether a held-out NLL is progress over `reference` (the last scoring that was): lower by
/// more than the fixed margin. Comparing with the last progress, not with the previous scoring,
/// lets a slow steady descent (each step inside the margin) still count once it adds up.
pub fn made_progress(nll: f64, reference: f64) -> bool {
    nll < reference - margin(reference)
}

/// Standard error of the difference of two scorings' mean NLL over the same records: the
/// per-record differences of summed NLL (`a`, `b`: [records]) taken as independent draws, their
/// sum's standard deviation over the `tokens` scored in all. 0 when it cannot be told (fewer than
/// two records, or the two scorings are not of the same records).
pub fn paired_se(a: &[f64], b: &[f64], tokens: usize) -> f64 {
    let n = a.len();
    if n < 2 || b.len() != n || tokens == 0 {
        return 0.0;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    (n as f64 * var).sqrt() / tokens as f64
}

/// How far above `reference` a scoring may be and still count as the same: the fixed margin, or
/// twice the paired standard error when that is larger.
pub fn noise(reference: f64, se: f64) -> f64 {
    margin(reference).max(2.0 * se)
}

/// What a scoring says about progress since the last one that made some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Lower than the reference by more than the margin: the new reference.
    Progress,
    /// No progress, and the split is precise enough to have seen progress of the margin's size
    /// (or the NLL is clearly worse): counts toward `--patience`.
    Stalled,
    /// No progress, but within what the split's noise could hide: counts neither way.
    Unclear,
}

/// Judge `nll` against the reference `reference` (NLL) whose paired standard error is `se`.
pub fn verdict(nll: f64, reference: f64, se: f64) -> Verdict {
    if made_progress(nll, reference) {
        Verdict::Progress
    } else if 2.0 * se <= margin(reference) || nll - reference > 2.0 * se {
        Verdict::Stalled
    } else {
        Verdict::Unclear
    }
}

/// What one scoring means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// This step's adapter is the one to keep (so far).
    pub keep: bool,
    /// `patience` scorings in a row made no progress: stop.
    pub stop: bool,
}

/// The base model's scoring, before the first step: the first progress reference.
pub fn record_base(state: &mut State, r: &EvalReport) {
    state.progress_eval = Some(r.mean_nll);
    state.progress_records = r.record_nll.clone();
    state.base_eval = Some(r.mean_nll);
}

/// Record the held-out scoring `r` of step `state.step`. `patience` 0 never stops.
pub fn record(state: &mut State, r: &EvalReport, patience: usize) -> Seen {
    let nll = r.mean_nll;
    if state.best_eval.is_none_or(|b| nll < b) {
        state.best_eval = Some(nll);
        state.best_step = Some(state.step);
        state.lowest_records = r.record_nll.clone();
    }
    let lowest = state.best_eval.unwrap_or(nll);
    let se_lowest = paired_se(&r.record_nll, &state.lowest_records, r.scored_tokens);
    let keep = nll <= lowest + noise(lowest, se_lowest);
    if keep {
        state.kept_step = Some(state.step);
        state.kept_eval = Some(nll);
    }
    let judged = state.progress_eval.map(|p| {
        let se = paired_se(&r.record_nll, &state.progress_records, r.scored_tokens);
        verdict(nll, p, se)
    });
    match judged {
        Some(Verdict::Stalled) => state.stalled_evals += 1,
        Some(Verdict::Unclear) => {}
        Some(Verdict::Progress) | None => {
            state.progress_eval = Some(nll);
            state.progress_records = r.record_nll.clone();
            state.stalled_evals = 0;
        }
    }
    Seen {
        keep,
        stop: patience > 0 && state.stalled_evals >= patience,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_se_is_the_spread_of_the_record_differences() {
        // Differences 1, 3 (mean 2, sample variance 2): sqrt(2 · 2) / 4 tokens = 0.5.
        assert!((paired_se(&[2.0, 5.0], &[1.0, 2.0], 4) - 0.5).abs() < 1e-12);
        // A uniform shift has no spread: the difference is exact.
        assert_eq!(paired_se(&[2.0, 3.0, 4.0], &[1.0, 2.0, 3.0], 9), 0.0);
        assert_eq!(paired_se(&[1.0], &[0.0], 3), 0.0);
        assert_eq!(paired_se(&[1.0, 2.0], &[0.0], 3), 0.0);
    }

    #[test]
    fn a_noisy_split_waits_for_a_clear_verdict() {
        // Reference 1.30: margin 0.018.
        assert_eq!(verdict(1.25, 1.30, 0.2), Verdict::Progress);
        // Precise split: no progress is a stall.
        assert_eq!(verdict(1.29, 1.30, 0.005), Verdict::Stalled);
        // Noisy split (2·se 0.1): a small rise or a small fall tells nothing …
        assert_eq!(verdict(1.29, 1.30, 0.05), Verdict::Unclear);
        assert_eq!(verdict(1.38, 1.30, 0.05), Verdict::Unclear);
        // … a rise beyond 2·se does.
        assert_eq!(verdict(1.41, 1.30, 0.05), Verdict::Stalled);
    }

    fn report(record_nll: &[f64], tokens: usize) -> EvalReport {
        let sum: f64 = record_nll.iter().sum();
        EvalReport {
            sum_logprob: -sum,
            scored_tokens: tokens,
            mean_nll: sum / tokens as f64,
            perplexity: (sum / tokens as f64).exp(),
            records: record_nll.len(),
            skipped: 0,
            record_nll: record_nll.to_vec(),
        }
    }

    /// Five records, 40 tokens. Scorings that move the records apart (one up, one down) are
    /// noise on a split this small: they neither stop the run nor take the kept step away from
    /// the later steps; a rise on every record stops it.
    #[test]
    fn record_keeps_training_through_noise_and_stops_on_a_clear_rise() {
        let mut state = State::default();
        record_base(&mut state, &report(&[12.0, 12.0, 12.0, 12.0, 12.0], 40));
        state.step = 1;
        let first = record(&mut state, &report(&[8.0, 8.0, 8.0, 8.0, 8.0], 40), 2);
        assert_eq!(
            first,
            Seen {
                keep: true,
                stop: false
            }
        );
        assert_eq!(state.progress_eval, Some(1.0));
        // Mean 1.05 (5% above the lowest), but two records moved by ±4 nats: unclear.
        for step in 2..6 {
            state.step = step;
            let s = record(&mut state, &report(&[12.0, 4.0, 8.0, 8.0, 10.0], 40), 2);
            assert_eq!(
                s,
                Seen {
                    keep: true,
                    stop: false
                },
                "step {step}"
            );
        }
        assert_eq!((state.kept_step, state.stalled_evals), (Some(5), 0));
        // Every record 1 nat worse (mean 1.125): clearly worse, twice in a row stops.
        state.step = 6;
        let s = record(&mut state, &report(&[9.0, 9.0, 9.0, 9.0, 9.0], 40), 2);
        assert_eq!(
            s,
            Seen {
                keep: false,
                stop: false
            }
        );
        state.step = 7;
        let s = record(&mut state, &report(&[9.0, 9.0, 9.0, 9.0, 9.0], 40), 2);
        assert_eq!(
            s,
            Seen {
                keep: false,
                stop: true
            }
        );
        assert_eq!((state.best_step, state.kept_step), (Some(1), Some(5)));
    }

    #[test]
    fn noise_widens_with_the_standard_error() {
        assert_eq!(noise(1.0, 0.0), margin(1.0));
        assert_eq!(noise(1.0, 0.1), 0.2);
    }
}
