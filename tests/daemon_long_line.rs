//! A 100 MB line in the daemon's inbox, at full size and with the default `max_line_bytes`
//! (1 MB): quarantined with its size, the record after it stored, and the scan's memory stays
//! bounded by the cap, not by the line (its own test binary, so the peak RSS is this test's).

use edge_sft::daemon::config::Config;
use edge_sft::daemon::inbox::{read_store, Inbox, QUARANTINE_FILE};
use edge_sft::daemon::state::DaemonState;
use std::io::Write;

/// Peak resident set of this process so far, in kB (Linux `VmHWM`).
fn peak_rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[test]
fn a_100_mb_line_is_quarantined_without_being_held_in_memory() {
    let d = std::env::temp_dir().join(format!("edge-sft-longline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let (inbox, state) = (d.join("inbox"), d.join("state"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let file = inbox.join("app.jsonl");
    let line_bytes: u64 = 100 << 20;
    {
        // Written in 1 MB pieces: the test never holds the line either.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        f.write_all(b"{\"prompt\": \"q 1\", \"response\": \"a 1\"}\n")
            .unwrap();
        let head = b"{\"prompt\": \"";
        let tail = b"\", \"response\": \"x\"}";
        f.write_all(head).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        let body = line_bytes - (head.len() + tail.len()) as u64;
        let mut left = body;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        f.write_all(tail).unwrap();
        f.write_all(b"\n{\"prompt\": \"q 2\", \"response\": \"a 2\"}\n")
            .unwrap();
        f.flush().unwrap();
    }
    let cap = Config::default().max_line_bytes;
    assert_eq!(cap, 1 << 20, "the default cap this test is about");

    let before = peak_rss_kb();
    let mut st = DaemonState::load(&state).unwrap();
    let mut ib = Inbox::open(&inbox, &state, cap).unwrap();
    let r = ib.scan(&mut st).unwrap();
    let grew_mb = (peak_rss_kb().saturating_sub(before)) as f64 / 1024.0;

    assert_eq!((r.stored, r.quarantined), (2, 1));
    let prompts: Vec<String> = read_store(&state)
        .unwrap()
        .iter()
        .map(|s| s.record["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts, ["q 1", "q 2"]);
    let q = std::fs::read_to_string(state.join(QUARANTINE_FILE)).unwrap();
    let row: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(row["line"].as_u64(), Some(2), "{q}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("line of {line_bytes} bytes"))
            && reason.contains("over max_line_bytes"),
        "{reason}"
    );
    assert!(
        grew_mb < 16.0,
        "scanning a 100 MB line raised the peak RSS by {grew_mb:.1} MB"
    );
    let _ = std::fs::remove_dir_all(&d);
}
