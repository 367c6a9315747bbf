//! How much CPU *other* processes took while a measurement ran (Linux: /proc/stat and
//! /proc/self/stat), so that the bench can re-time and flag rows measured on a busy machine.
//! On other systems every figure is None and nothing is flagged.

use std::time::Instant;

/// Clock ticks per second of /proc/stat and /proc/self/stat (USER_HZ, 100 on every Linux
/// configuration in practice).
const TICKS_PER_S: f64 = 100.0;

/// Machine-wide busy ticks and this process's own ticks at one moment.
pub struct Sample {
    at: Instant,
    busy: Option<u64>,
    own: Option<u64>,
}

impl Sample {
    pub fn now() -> Sample {
        Sample {
            at: Instant::now(),
            busy: machine_busy(),
            own: own_ticks(),
        }
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
