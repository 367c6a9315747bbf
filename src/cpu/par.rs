//! When to fan out over rayon. A call from inside the pool (the trainer runs its steps there)
//! forks and joins cheaply; a call from outside wakes a worker and sleeps until the job is
//! done, which costs tens of microseconds — worth it only for bigger products.

use rayon::prelude::*;

/// Multiply-adds below which a call from a pool thread runs serially.
const MIN_WORK_IN_POOL: usize = 1 << 16;
/// Multiply-adds below which a call from outside the pool runs serially on the caller.
const MIN_WORK_OUTSIDE: usize = 1 << 20;

/// True if `work` multiply-adds are worth spreading over the pool from the calling thread.
pub(crate) fn worth_it(work: usize) -> bool {
    let min = if rayon::current_thread_index().is_some() {
        MIN_WORK_IN_POOL
    } else {
        MIN_WORK_OUTSIDE
    };
    work >= min && rayon::current_num_threads() > 1
}

/// Run `task(t)` for t in 0..ntasks, in parallel when `work` (multiply-adds) justifies it.
/// Tasks must write disjoint outputs; results never depend on which thread ran what.
pub(crate) fn for_each_task(ntasks: usize, work: usize, task: impl Fn(usize) + Sync + Send) {
    if ntasks <= 1 || !worth_it(work) {
        (0..ntasks).for_each(task);
    } else {
        (0..ntasks).into_par_iter().for_each(task);
    }
}

/// Run `f(offset, chunk)` over `chunk`-sized pieces of `out`, in parallel when `work`
/// justifies it. Each piece is handled by one call, so results are the same either way.
pub(crate) fn for_each_chunk(
    out: &mut [f32],
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if out.len() <= chunk || !worth_it(work) {
        for (t, piece) in out.chunks_mut(chunk).enumerate() {
            f(t * chunk, piece);
        }
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, piece)| f(t * chunk, piece));
    }
}
