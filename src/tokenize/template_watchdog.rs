//! The last bound on rendering a model's chat template: wall time and memory, watched from
//! outside the render.
//!
//! Why: a chat template is a stranger's program, and minijinja bounds it only by fuel (VM
//! instructions) and recursion depth. Neither bounds the bytes or the work inside one
//! instruction: a value can double at every instruction (`{% set ns.s = ns.s ~ ns.s %}` in a
//! loop reached 2 GB in 3 s, fuzz class of issue 16), a lazily repeated list (`[1] * 10**9`)
//! costs one instruction to build and 10^9 steps to compare, sum or format, and filters such as
//! `format('%999999999s')` or `replace` allocate from what the template says. minijinja has no
//! hook for any of this (no allocator limit, no operator callbacks), and a render cannot be
//! cancelled (a Rust thread cannot be stopped from outside), so the thread that waits for the
//! render watches it, and when it passes a bound no real template comes near, the process ends
//! with an error that says so. A real chat prompt renders in well under a millisecond with a
//! few kilobytes; anything already saved was written atomically, so nothing is lost.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Longest a single render may run (real ones take microseconds; this is far above what a
/// slow board or qemu needs, and below libFuzzer's 10 s timeout so fuzzing meets this bound
/// first).
pub const RENDER_DEADLINE: Duration = Duration::from_secs(5);
/// Most anonymous memory the process may gain while a render runs (renders of other records
/// on other threads count too, hence the margin over a real render's kilobytes).
pub const RENDER_MEMORY_BYTES: u64 = 512 << 20;
/// Memory is judged only once a render has run this long: real renders finish far sooner, so
/// memory that other threads allocate meanwhile (training, other records) cannot end a real
/// render, and a runaway one reaches at most a few hundred MB more in this time.
const MEMORY_GRACE: Duration = Duration::from_millis(100);
/// How often a render that has not finished is checked. A finished render wakes the waiter at
/// once, so this costs nothing on the normal path.
const POLL: Duration = Duration::from_millis(2);

/// Wait for the result of compiling or rendering (`doing`) on `rx`; None when the worker thread
/// ended without sending (it panicked). Ends the process when the work passes a bound.
pub(super) fn wait<T>(rx: &Receiver<T>, doing: &str) -> Option<T> {
    let start = Instant::now();
    // Read at the first poll, not before: a render that finishes in time costs no /proc read.
    let mut mem0 = None;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(v) => return Some(v),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let mem0 = *mem0.get_or_insert_with(anonymous_bytes);
        let elapsed = start.elapsed();
        if elapsed > RENDER_DEADLINE {
            give_up(
                doing,
                &format!("it ran for more than {} s", RENDER_DEADLINE.as_secs()),
            );
        }
        if elapsed < MEMORY_GRACE {
            continue;
        }
        if let (Some(now), Some(before)) = (anonymous_bytes(), mem0) {
            let grown = now.saturating_sub(before);
            if grown > RENDER_MEMORY_BYTES {
                give_up(
                    doing,
                    &format!(
                        "it took more than {} MB of memory ({} MB after {:.1} s)",
                        RENDER_MEMORY_BYTES >> 20,
                        grown >> 20,
                        elapsed.as_secs_f64()
                    ),
                );
            }
        }
    }
}

/// The render cannot be stopped and still holds the thread, so the process ends here, with the
/// same exit status as any other error.
fn give_up(doing: &str, why: &str) -> ! {
    eprintln!(
        "error: the chat template did not finish {doing}: {why}. A real template renders a \
         conversation in milliseconds; this one may be hostile or broken. Use `--template raw` \
         (or `--template gemma`) instead of the model's template."
    );
    std::process::exit(1)
}

/// The process's resident anonymous memory (heap and stacks, not the mapped model file), from
/// /proc/self/status; None where that does not exist (then only the deadline applies).
fn anonymous_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kb(&status, "RssAnon:").or_else(|| parse_kb(&status, "VmRSS:"))
}

fn parse_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_memory_fields_of_proc_status() {
        let s = "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t    1024 kB\n";
        assert_eq!(parse_kb(s, "RssAnon:"), Some(1 << 20));
        assert_eq!(parse_kb(s, "VmRSS:"), Some(2 << 20));
        assert_eq!(parse_kb(s, "VmSwap:"), None);
        #[cfg(target_os = "linux")]
        assert!(anonymous_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn a_quick_result_is_returned_and_a_dead_sender_is_none() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        tx.send(7).unwrap();
        assert_eq!(wait(&rx, "rendering"), Some(7));
        drop(tx);
        assert_eq!(wait::<i32>(&rx, "rendering"), None);
    }
}
