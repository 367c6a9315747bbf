//! When to fan out over rayon. A call from inside the pool (the trainer runs its steps there)
//! forks and joins cheaply; a call from outside wakes a worker and sleeps until the job is
//! done, which costs tens of microseconds — worth it only for bigger products.

use rayon::prelude::*;

/// Multiply-adds below which a call from a pool thread runs serially.
const MIN_WORK_IN_POOL: usize = 1 << 16;
/// Multiply-adds below which a call from outside the pool runs serially on the caller.
const MIN_WORK_OUTSIDE: usize = 1 << 20;

/// Run `task(t)` for t in 0..ntasks, in parallel when `work` (multiply-adds) justifies it.
/// Tasks must write disjoint outputs; results never depend on which thread ran what.
pub(crate) fn for_each_task(ntasks: usize, work: usize, task: impl Fn(usize) + Sync + Send) {
    let min = if rayon::current_thread_index().is_some() {
        MIN_WORK_IN_POOL
    } else {
        MIN_WORK_OUTSIDE
    };
    if ntasks <= 1 || work < min || rayon::current_num_threads() <= 1 {
        (0..ntasks).for_each(task);
    } else {
        (0..ntasks).into_par_iter().for_each(task);
    }
}
