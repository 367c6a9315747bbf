//! How attention work is scheduled over rayon's threads: tasks handed out largest first,
//! per-thread scratch and task lists that keep their capacity across calls, and the output
//! buffer that tasks write disjoint ranges of.

use super::tiling::copy_row;
use rayon::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// Buffers this thread has used before, kept with their capacity. A list, not one buffer:
    /// a task waiting inside a GEMM's fork may run another task on the same thread.
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    /// Task lists, reused likewise.
    static TASKS: RefCell<Vec<Vec<Task>>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` floats of scratch (contents unspecified) from this thread's free list.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // The smallest buffer that fits, else the largest (grown): once every nesting depth has
    // seen its largest request, nothing is allocated any more.
    let mut buf = FREE.with(|l| {
        let mut l = l.borrow_mut();
        let fits = (0..l.len())
            .filter(|&i| l[i].len() >= len)
            .min_by_key(|&i| l[i].len());
        let pick = fits.or_else(|| (0..l.len()).max_by_key(|&i| l[i].len()));
        pick.map(|i| l.swap_remove(i)).unwrap_or_default()
    });
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    FREE.with(|l| l.borrow_mut().push(buf));
    r
}

/// Run `f` on an empty task list from this thread's free list.
pub(super) fn with_tasks<R>(f: impl FnOnce(&mut Vec<Task>) -> R) -> R {
    let mut list = TASKS.with(|l| l.borrow_mut().pop()).unwrap_or_default();
    list.clear();
    let r = f(&mut list);
    TASKS.with(|l| l.borrow_mut().push(list));
    r
}

/// One unit of parallel work; `head` is always a kv head (its query heads go together).
/// Forward: `b0..b1` is one query block; backward: `b0..b1` a chunk of query blocks and `poff`
/// where its partial dK, dV go; reduction: `poff` where the segment's partials start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Task {
    pub(super) seg: usize,
    pub(super) head: usize,
    pub(super) b0: usize,
    pub(super) b1: usize,
    pub(super) poff: usize,
    /// Causal (query, key) pairs, to order tasks largest first.
    pub(super) work: usize,
}

/// Run `run(task)` for every task, largest first, on every pool thread that is free: a thread
/// takes the next task when it finishes one, which balances uneven (causal) tasks. Each task
/// writes only its own outputs, so results never depend on which thread ran what.
pub(super) fn run_tasks(tasks: &mut [Task], run: impl Fn(&Task) + Sync) {
    tasks.sort_unstable_by_key(|t| std::cmp::Reverse(t.work));
    let tasks = &*tasks;
    let next = AtomicUsize::new(0);
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        match tasks.get(i) {
            Some(t) => run(t),
            None => break,
        }
    };
    let workers = rayon::current_num_threads().min(tasks.len());
    if workers <= 1 {
        worker();
    } else {
        (0..workers).into_par_iter().for_each(|_| worker());
    }
}

/// A buffer that parallel tasks write into, each task to its own disjoint ranges.
#[derive(Clone, Copy)]
pub(super) struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks write disjoint ranges only (see `write`), and the exclusive borrow held through
// `_buf` keeps every other access out while a `Shared` lives.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    pub(super) fn new(buf: &'a mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// The range `off..off + len`, for one task to write.
    ///
    /// # Safety
    /// No other task touches that range while the returned slice lives.
    pub(super) unsafe fn range(self, off: usize, len: usize) -> &'a mut [f32] {
        assert!(off + len <= self.len, "attention: range out of bounds");
        // SAFETY: in bounds (asserted) of a buffer borrowed exclusively for 'a; the range
        // belongs to the calling task alone (caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }

    /// Copy `src` to `off..off + src.len()`.
    ///
    /// # Safety
    /// No other task touches that range while this `Shared` is in use.
    pub(super) unsafe fn write(self, off: usize, src: &[f32]) {
        // SAFETY: the caller's contract.
        copy_row(unsafe { self.range(off, src.len()) }, src);
    }
}
