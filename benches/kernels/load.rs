//! Whether a measurement shared the CPUs (Linux only; elsewhere every figure is None and
//! nothing is flagged):
//! - `waited`: how long this process's threads were ready to run but waited for a CPU
//!   (/proc/self/task/*/schedstat): the direct measure of a disturbed timing;
//! - `others`: how much CPU other processes used meanwhile (/proc/stat minus our own
//!   /proc/self/stat), which includes cores our threads left idle.

use std::time::Instant;

/// Clock ticks per second of /proc/stat and /proc/self/stat (USER_HZ, 100 on every Linux
/// configuration in practice).
const TICKS_PER_S: f64 = 100.0;

/// Machine-wide busy ticks, this process's own ticks and its threads' run-queue wait at one
/// moment.
pub struct Sample {
    at: Instant,
    busy: Option<u64>,
    own: Option<u64>,
    wait_ns: Option<u64>,
}

impl Sample {
    pub fn now() -> Sample {
        Sample {
            at: Instant::now(),
            busy: machine_busy(),
            own: own_ticks(),
            wait_ns: wait_ns(),
        }
    }

    /// Cores' worth of time this process's threads spent runnable but not running since this
    /// sample (0.5: on average half a core's time was taken from us).
    pub fn waited(&self) -> Option<f64> {
        let wall = self.at.elapsed().as_secs_f64();
        let ns = wait_ns()?.saturating_sub(self.wait_ns?);
        Some(ns as f64 * 1e-9 / wall.max(1e-6))
    }

    /// Cores (CPU seconds per wall second) that other processes used since this sample.
    pub fn others(&self) -> Option<f64> {
        let wall = self.at.elapsed().as_secs_f64();
        let busy = machine_busy()?.checked_sub(self.busy?)?;
        let own = own_ticks()?.checked_sub(self.own?)?;
        // Tick accounting is sampled: over short windows `own` can exceed `busy` by a tick.
        Some(busy.saturating_sub(own) as f64 / TICKS_PER_S / wall.max(1e-3))
    }
}

/// Busy ticks of all CPUs: the first line of /proc/stat minus idle and iowait (steal counts as
/// busy: the hypervisor gave the time to someone else).
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// utime + stime of this process (fields 14 and 15 of /proc/self/stat; counted after the
/// command name, which may contain spaces, ends with ')').
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Run-queue wait of every thread of this process, ns (the second field of
/// /proc/self/task/TID/schedstat). A thread that exits takes its share along; the bench's
/// threads (main and the rayon pool) live as long as the process.
fn wait_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue; // the thread exited meanwhile
        };
        total += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}
