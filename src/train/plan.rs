//! The shape of a run: which records each optimizer step takes, how many steps there are, how
//! long the warm-up is, how often the held-out set is scored, and which records are held out.
//!
//! Steps are sized by records (`batch_size`, as TRL's `per_device_train_batch_size` and MLX-LM's
//! `--batch-size` are), not by tokens: a few hundred short pairs then get a few hundred steps
//! instead of a handful of 1,024-token packs. `batch_tokens` stays as the memory cap: a step's
//! records are packed into as few micro-batches of at most that many tokens as their order
//! allows, and the gradients of the micro-batches are accumulated into one update.

use super::batch::pack_indices;
use crate::infer::sampling::Rng;

/// Warm-up length when none is given: this fraction of the run …
pub const DEFAULT_WARMUP_RATIO: f32 = 0.05;
/// … but never more than this many steps.
pub const WARMUP_CAP: usize = 100;
/// Held-out scorings per run when `--eval-every` is not given (plus the one at the end) …
pub const EVALS_PER_RUN: usize = 10;
/// … fewer where they would cost more than this share of the run's training compute (a scored
/// token is one forward pass, about a third of a trained token's forward and backward) …
pub const EVAL_COST_SHARE: f64 = 0.10;
/// … but never fewer than this many.
pub const MIN_EVALS_PER_RUN: usize = 3;

/// The default peak learning rate on a data set of many records: `DEFAULT_LR` …
pub const BASE_LR: f32 = 5e-4;
/// … for an epoch of at least this many optimizer steps; a shorter epoch takes larger steps …
pub const BASE_LR_STEPS: usize = 200;
/// … up to this multiple of `BASE_LR`.
pub const MAX_LR_SCALE: f32 = 2.0;

/// The peak learning rate when `--lr` is not given, for `n` training records in steps of
/// `batch_size`: `BASE_LR` · √(`BASE_LR_STEPS` / steps per epoch), between 1× and 2×. A small
/// data set gets fewer updates, so each moves further. In the default steps of 2 records, up to
/// 100 records get 1e-3, 190 get 7.3e-4 and 400 or more 5e-4 (the sweep behind it:
/// benches/results/defaults.md).
pub fn default_lr(n: usize, batch_size: usize) -> f32 {
    let per_epoch = n.div_ceil(batch_size.max(1)).max(1);
    let scale = (BASE_LR_STEPS as f32 / per_epoch as f32).sqrt();
    BASE_LR * scale.clamp(1.0, MAX_LR_SCALE)
}

/// The example order of one epoch: a seeded shuffle of `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The steps of one epoch: `batch_size` records each (the last one may have fewer), each step
/// a list of micro-batches of at most `batch_tokens` tokens (a longer record gets its own).
pub fn epoch_steps(
    order: &[usize],
    lens: &[usize],
    batch_size: usize,
    batch_tokens: usize,
) -> Vec<Vec<Vec<usize>>> {
    order
        .chunks(batch_size.max(1))
        .map(|records| pack_indices(records, lens, batch_tokens))
        .collect()
}

/// Without `--epochs` or `--steps`, a run plans this many passes over the data …
pub const DEFAULT_EPOCHS: f64 = 1.5;
/// … or this many optimizer steps if that is more …
pub const MIN_DEFAULT_STEPS: usize = 60;
/// … but never more than this many passes.
pub const MAX_DEFAULT_EPOCHS: usize = 2;

/// Optimizer steps of a run: `steps` when given, else `epochs` passes of ⌈n / batch_size⌉,
/// else the default rule (`default_steps`).
pub fn total_steps(
    n: usize,
    batch_size: usize,
    epochs: Option<usize>,
    steps: Option<usize>,
) -> usize {
    let per_epoch = n.div_ceil(batch_size.max(1));
    match (steps, epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * per_epoch,
        (None, None) => default_steps(per_epoch),
    }
}

/// The default length of a run of `per_epoch` steps an epoch: 1.5 epochs, or 60 steps where
/// two epochs allow. In the default steps of 2 records, sets of up to 60 records get two passes
/// (45 records: 46 steps), from 80 records 1.5 (190: 143 steps, 950: 713). The sweep behind it
/// (benches/results/defaults.md): at 200 records two epochs cost 2.2–2.5× one high-rate epoch
/// for the same held-out quality, while one epoch is not enough at 1,000 records or on 50 chat
/// or instruction records; on 15–50 records two epochs beat fewer on all three sets, at a cost
/// of seconds.
pub fn default_steps(per_epoch: usize) -> usize {
    let passes = (DEFAULT_EPOCHS * per_epoch as f64).ceil() as usize;
    passes
        .max(MIN_DEFAULT_STEPS.min(MAX_DEFAULT_EPOCHS * per_epoch))
        .max(1)
}

/// Warm-up steps: `warmup` when given, else ⌈ratio · total⌉ capped at `WARMUP_CAP`, and never
/// the whole run.
pub fn warmup_steps(total: usize, warmup: Option<usize>, ratio: f32) -> usize {
    match warmup {
        Some(w) => w,
        None => {
            // The slack keeps 0.05 · 320 (16.000000x in f32) at 16.
            let w = (ratio.max(0.0) as f64 * total as f64 - 1e-6)
                .ceil()
                .max(0.0) as usize;
            w.min(WARMUP_CAP).min(total.saturating_sub(1))
        }
    }
}

/// Steps between held-out scorings: `every` when given, else about `EVALS_PER_RUN` per run, or
/// fewer when scoring `heldout_tokens` that often would cost more than `EVAL_COST_SHARE` of
/// training `total` steps of `step_tokens` tokens each. Only a small data set meets the cap:
/// its minimum of 5 held-out records is a tenth of 50 records (ten scorings of them added a
/// fifth to the run), while 5% of a larger set is a twentieth.
pub fn eval_interval(
    total: usize,
    every: Option<usize>,
    heldout_tokens: usize,
    step_tokens: f64,
) -> usize {
    every.unwrap_or_else(|| {
        let training = 3.0 * step_tokens * total as f64; // in forward-token units
        let affordable = (EVAL_COST_SHARE * training / heldout_tokens.max(1) as f64) as usize;
        let evals = affordable.clamp(MIN_EVALS_PER_RUN, EVALS_PER_RUN);
        total.div_ceil(evals).max(1)
    })
}

/// An upper bound on the longest micro-batch any step can pack: the longest record, or the
/// `batch_size` longest records together capped at `batch_tokens`, whichever is longer.
pub fn max_micro_batch_tokens(lens: &[usize], batch_size: usize, batch_tokens: usize) -> usize {
    let mut sorted = lens.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let longest = sorted.first().copied().unwrap_or(1);
    let together: usize = sorted.iter().take(batch_size.max(1)).sum();
    longest.max(together.min(batch_tokens)).max(1)
}

/// Held-out records taken from the training file when there is no `--eval-data`: the
/// fraction `frac` of `n`, at least `HOLDOUT_MIN`, at most `HOLDOUT_MAX`; none when `frac`
/// is 0 or when that would leave fewer than three records for each one held out.
pub const HOLDOUT_MIN: usize = 5;
pub const HOLDOUT_MAX: usize = 200;

/// How many of `n` records `holdout` sets aside (see `HOLDOUT_MIN`).
pub fn holdout_count(n: usize, frac: f32) -> usize {
    if frac <= 0.0 {
        return 0;
    }
    let k = ((frac as f64 * n as f64).round() as usize).clamp(HOLDOUT_MIN, HOLDOUT_MAX);
    if 4 * k > n {
        0
    } else {
        k
    }
}

/// Split `0..n` into (train, held-out) index lists, seeded: the held-out records are a random
/// sample (independent of the epoch shuffles), both lists in file order.
pub fn holdout(n: usize, frac: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let k = holdout_count(n, frac);
    let mut order = epoch_order(n, seed ^ 0x0048_454c_444f_5554, 0);
    let mut held: Vec<usize> = order.drain(..k).collect();
    held.sort_unstable();
    order.sort_unstable();
    (order, held)
}

/// The line printed before a run starts, e.g. "160 records → 320 steps (batch 1, 2 epochs),
/// warm-up 16".
pub fn describe(
    records: usize,
    batch_size: usize,
    epochs: Option<usize>,
    steps: Option<usize>,
    total: usize,
    warmup: usize,
) -> String {
    let how = match (steps, epochs) {
        (Some(_), _) => format!("batch {batch_size}, --steps"),
        (None, Some(e)) => format!(
            "batch {batch_size}, {e} epoch{}",
            if e == 1 { "" } else { "s" }
        ),
        (None, None) => {
            let passes = total as f64 / records.div_ceil(batch_size.max(1)).max(1) as f64;
            let passes = if passes.fract().abs() < 0.05 {
                format!("{passes:.0}")
            } else {
                format!("{passes:.1}")
            };
            format!(
                "batch {batch_size}, {passes} epochs: the default plans {DEFAULT_EPOCHS}, or \
                 {MIN_DEFAULT_STEPS} steps where 2 allow"
            )
        }
    };
    format!("{records} records → {total} steps ({how}), warm-up {warmup}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_data_sets_get_a_larger_default_lr() {
        assert_eq!(default_lr(45, 1), 1e-3);
        assert_eq!(default_lr(10, 1), 1e-3, "capped at 2×");
        assert!(
            (default_lr(95, 1) - 7.255e-4).abs() < 1e-6,
            "{}",
            default_lr(95, 1)
        );
        assert!(
            (default_lr(190, 1) - 5.13e-4).abs() < 1e-6,
            "{}",
            default_lr(190, 1)
        );
        assert_eq!(default_lr(200, 1), 5e-4);
        assert_eq!(default_lr(5000, 1), 5e-4, "never below the base");
        // Steps per epoch, not records: 400 records in steps of 4 are 100 steps.
        assert_eq!(default_lr(400, 4), default_lr(100, 1));
    }

    #[test]
    fn steps_are_counted_in_records() {
        assert_eq!(total_steps(160, 1, Some(2), None), 320);
        assert_eq!(total_steps(160, 4, Some(2), None), 80);
        assert_eq!(total_steps(161, 4, Some(2), None), 82); // the last step of an epoch takes 1
        assert_eq!(total_steps(161, 4, Some(2), Some(7)), 7);
        assert_eq!(total_steps(161, 4, None, Some(7)), 7);
    }

    #[test]
    fn the_default_plans_one_and_a_half_epochs_and_60_steps_where_two_allow() {
        // Tiny sets: two epochs (fewer than 60 steps).
        assert_eq!(total_steps(15, 1, None, None), 30);
        assert_eq!(total_steps(30, 1, None, None), 60);
        // From 30 records, 60 steps are fewer than two epochs …
        assert_eq!(total_steps(35, 1, None, None), 60);
        // … and from 40, 1.5 epochs are 60 steps or more (rounded up).
        assert_eq!(total_steps(40, 1, None, None), 60);
        assert_eq!(total_steps(45, 1, None, None), 68);
        assert_eq!(total_steps(95, 1, None, None), 143);
        assert_eq!(total_steps(190, 1, None, None), 285);
        assert_eq!(total_steps(950, 1, None, None), 1425);
        assert_eq!(total_steps(951, 1, None, None), 1427);
        // Counted in steps: in the default steps of 2 records, 45 records get two epochs (the
        // floor), 190 get 1.5 …
        assert_eq!(total_steps(45, 2, None, None), 46);
        assert_eq!(total_steps(190, 2, None, None), 143);
        assert_eq!(total_steps(950, 2, None, None), 713);
        // … and 760 records in steps of 4 are 190 steps an epoch.
        assert_eq!(total_steps(760, 4, None, None), 285);
        assert_eq!(total_steps(1, 1, None, None), 2);
        assert_eq!(
            describe(190, 1, None, None, 285, 15),
            "190 records → 285 steps (batch 1, 1.5 epochs: the default plans 1.5, or 60 steps \
             where 2 allow), warm-up 15"
        );
        assert!(describe(15, 1, None, None, 30, 2).contains("(batch 1, 2 epochs: the default"));
        assert_eq!(
            describe(160, 1, Some(2), None, 320, 16),
            "160 records → 320 steps (batch 1, 2 epochs), warm-up 16"
        );
        let order: Vec<usize> = (0..10).collect();
        let lens = [30; 10];
        let steps = epoch_steps(&order, &lens, 4, 1024);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0], vec![vec![0, 1, 2, 3]]);
        assert_eq!(steps[2], vec![vec![8, 9]]);
        // The token cap splits a step into micro-batches; every record is still in its step.
        let capped = epoch_steps(&order, &lens, 4, 64);
        assert_eq!(capped[0], vec![vec![0, 1], vec![2, 3]]);
        let flat: Vec<usize> = capped.concat().concat();
        assert_eq!(flat, order);
        assert_eq!(max_micro_batch_tokens(&lens, 4, 64), 64); // an upper bound: the cap
        assert_eq!(max_micro_batch_tokens(&[10, 500, 20], 1, 64), 500);
        assert_eq!(max_micro_batch_tokens(&[10, 50, 20], 2, 1024), 70);
    }

    #[test]
    fn warmup_is_a_capped_fraction_unless_given() {
        assert_eq!(warmup_steps(320, None, 0.05), 16);
        assert_eq!(warmup_steps(19, None, 0.05), 1);
        assert_eq!(warmup_steps(100_000, None, 0.05), WARMUP_CAP);
        assert_eq!(warmup_steps(1, None, 0.5), 0);
        assert_eq!(warmup_steps(320, Some(10), 0.05), 10);
        assert_eq!(warmup_steps(320, None, 0.0), 0);
    }

    #[test]
    fn holdout_is_seeded_disjoint_and_sized() {
        let (train, held) = holdout(200, 0.05, 42);
        assert_eq!(held.len(), 10);
        assert_eq!(train.len(), 190);
        let mut all: Vec<usize> = train.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>(), "disjoint and covering");
        assert_eq!(holdout(200, 0.05, 42), (train.clone(), held.clone()));
        assert_ne!(
            holdout(200, 0.05, 43).1,
            held,
            "another seed, another split"
        );
        assert_eq!(holdout_count(50, 0.05), HOLDOUT_MIN);
        assert_eq!(holdout_count(10_000, 0.05), HOLDOUT_MAX);
        assert_eq!(
            holdout_count(12, 0.05),
            0,
            "too few records to hold any out"
        );
        assert_eq!(holdout_count(200, 0.0), 0);
        assert_eq!(holdout(200, 0.0, 1).0.len(), 200);
    }

    #[test]
    fn auto_eval_interval() {
        // 320 steps of 50 tokens (48,000 forward-token units), 400 held-out tokens: ten
        // scorings cost 8% of the run.
        assert_eq!(eval_interval(320, None, 400, 50.0), 32);
        assert_eq!(eval_interval(320, Some(7), 400, 50.0), 7);
        // Twice the held-out tokens: six scorings are the 10% share.
        assert_eq!(eval_interval(320, None, 800, 50.0), 54);
        assert_eq!(eval_interval(5, None, 1, 50.0), 1);
        // 50 records: 90 steps of 53 tokens, 5 records (300 tokens) held out: four scorings
        // are 10% of the training compute, ten would be 25%.
        assert_eq!(eval_interval(90, None, 300, 53.0), 23);
        // However costly, at least three.
        assert_eq!(eval_interval(30, None, 3000, 50.0), 10);
    }
}
