//! When the device may train: on mains power, idle, cool, inside a time window. Each condition is
//! a pure function of files under a configurable root (sysfs, procfs) or of the hour, so tests
//! fake them with a temporary folder.

use super::config::Triggers;
use std::path::Path;

/// One condition's verdict and the reason, for logs and the status socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub why: String,
}

fn pass(why: impl Into<String>) -> Check {
    Check {
        ok: true,
        why: why.into(),
    }
}
fn fail(why: impl Into<String>) -> Check {
    Check {
        ok: false,
        why: why.into(),
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// On mains power: some supply of type `Mains` (or `USB`) reports `online` = 1, or no battery
/// is present at all (a desktop or a board on a wall plug).
pub fn ac_power(root: &Path) -> Check {
    let Ok(rd) = std::fs::read_dir(root) else {
        return pass(format!("{} absent: no battery assumed", root.display()));
    };
    let mut battery = false;
    for e in rd.flatten() {
        let dir = e.path();
        let kind = read_trim(&dir.join("type")).unwrap_or_default();
        match kind.as_str() {
            "Battery" => battery = true,
            "Mains" | "USB" | "USB_C" | "USB_PD"
                if read_trim(&dir.join("online")).as_deref() == Some("1") =>
            {
                return pass(format!("on AC ({})", dir.display()));
            }
            _ => {}
        }
    }
    if battery {
        fail("on battery")
    } else {
        pass("no battery present")
    }
}

/// The 1-minute load average (first field of /proc/loadavg) is below `max` (0: no check).
/// An unreadable file passes (not every system has one), and says so.
pub fn load_average(path: &Path, max: f64) -> Check {
    if max <= 0.0 {
        return pass("load check off");
    }
    let Some(text) = read_trim(path) else {
        return pass(format!("{} unreadable: load not checked", path.display()));
    };
    match text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse::<f64>().ok())
    {
        Some(l) if l < max => pass(format!("load {l:.2} < {max}")),
        Some(l) => fail(format!("load {l:.2} ≥ {max}")),
        None => pass(format!(
            "{}: unparsable ({text:?}): load not checked",
            path.display()
        )),
    }
}

/// Every `thermal_zone*/temp` (millidegrees C) under `root` is below `max_c` (0: no check).
/// No thermal zones passes (virtual machines have none).
pub fn temperature(root: &Path, max_c: f64) -> Check {
    if max_c <= 0.0 {
        return pass("temperature check off");
    }
    let mut hottest: Option<f64> = None;
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with("thermal_zone") {
                continue;
            }
            if let Some(t) = read_trim(&e.path().join("temp")).and_then(|s| s.parse::<f64>().ok()) {
                let c = t / 1000.0;
                hottest = Some(hottest.map_or(c, |h: f64| h.max(c)));
            }
        }
    }
    match hottest {
        None => pass("no thermal zones: temperature not checked"),
        Some(c) if c < max_c => pass(format!("{c:.1} °C < {max_c} °C")),
        Some(c) => fail(format!("{c:.1} °C ≥ {max_c} °C")),
    }
}

/// "HH:MM-HH:MM" → (start, end) in minutes after midnight; "" → None (any time).
pub fn parse_window(w: &str) -> Result<Option<(u32, u32)>, String> {
    let w = w.trim();
    if w.is_empty() {
        return Ok(None);
    }
    let bad = || format!("triggers.window {w:?}: expected \"HH:MM-HH:MM\", e.g. \"22:00-07:00\"");
    let (a, b) = w.split_once('-').ok_or_else(bad)?;
    let hm = |s: &str| -> Option<u32> {
        let (h, m) = s.trim().split_once(':')?;
        let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
        (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
    };
    Ok(Some((hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?)))
}

/// Whether `minute` (after local midnight) lies in [start, end), wrapping midnight when
/// end < start; start == end is the whole day.
pub fn in_window(minute: u32, window: Option<(u32, u32)>) -> Check {
    let Some((s, e)) = window else {
        return pass("any time");
    };
    let inside = match s.cmp(&e) {
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Less => (s..e).contains(&minute),
        std::cmp::Ordering::Greater => minute >= s || minute < e,
    };
    let f = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    let why = format!("{} in {}-{}", f(minute), f(s), f(e));
    if inside {
        pass(why)
    } else {
        fail(format!("outside window: {why}"))
    }
}

/// Minutes after local midnight now.
pub fn local_minute() -> u32 {
    use chrono::Timelike;
    let now = chrono::Local::now();
    now.hour() * 60 + now.minute()
}

/// All conditions. `starting`: the load average is only checked before a round (a running
/// round raises it itself).
pub fn check_all(t: &Triggers, starting: bool, minute: u32) -> Vec<(&'static str, Check)> {
    let mut v = Vec::new();
    if t.require_ac {
        v.push(("ac", ac_power(&t.power_supply_root)));
    }
    if starting {
        v.push(("load", load_average(&t.loadavg_path, t.max_load)));
    }
    v.push(("temperature", temperature(&t.thermal_root, t.max_temp_c)));
    v.push((
        "window",
        in_window(minute, parse_window(&t.window).unwrap_or(None)),
    ));
    v
}

/// The first failing condition, as "name: reason", or None when all hold.
pub fn blocked(t: &Triggers, starting: bool) -> Option<String> {
    check_all(t, starting, local_minute())
        .into_iter()
        .find(|(_, c)| !c.ok)
        .map(|(n, c)| format!("{n}: {}", c.why))
}
