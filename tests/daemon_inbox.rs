//! The daemon's inbox: every complete line stored exactly once across rotation, truncation,
//! partial lines and restarts (including a crash between the store append and the state write);
//! bad lines quarantined with file, line and reason.

use edge_sft::daemon::inbox::{read_store, Inbox, QUARANTINE_FILE};
use edge_sft::daemon::state::DaemonState;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> (PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("edge-sft-inbox-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    (d.join("inbox"), d.join("state"))
}

fn rec(tag: &str) -> String {
    format!("{{\"prompt\": \"q {tag}\", \"response\": \"a {tag}\"}}\n")
}

fn append(p: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// A fresh daemon process: state and store read back from disk.
fn scan(inbox: &Path, state: &Path, max_line: usize) -> (usize, usize) {
    let mut st = DaemonState::load(state).unwrap();
    let mut ib = Inbox::open(inbox, state, max_line).unwrap();
    let r = ib.scan(&mut st).unwrap();
    (r.stored, r.quarantined)
}

/// Tag → how many times it is in the store.
fn stored_tags(state: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in read_store(state).unwrap() {
        let p = s.record["prompt"].as_str().unwrap().to_string();
        *m.entry(p.trim_start_matches("q ").to_string()).or_insert(0) += 1;
    }
    m
}

fn assert_exactly(state: &Path, tags: &[&str]) {
    let got = stored_tags(state);
    for t in tags {
        assert_eq!(
            got.get(*t),
            Some(&1),
            "tag {t} stored {:?} times; store: {got:?}",
            got.get(*t)
        );
    }
    assert_eq!(got.len(), tags.len(), "extra tags in the store: {got:?}");
}

#[test]
fn partial_last_line_waits_for_its_newline() {
    let (inbox, state) = tmp("partial");
    let f = inbox.join("app.jsonl");
    append(&f, &rec("1"));
    append(&f, "{\"prompt\": \"q 2\", \"resp");
    assert_eq!(scan(&inbox, &state, 1 << 20), (1, 0));
    assert_exactly(&state, &["1"]);
    append(&f, "onse\": \"a 2\"}\n");
    assert_eq!(scan(&inbox, &state, 1 << 20), (1, 0));
    assert_exactly(&state, &["1", "2"]);
    // Nothing new: nothing stored.
    assert_eq!(scan(&inbox, &state, 1 << 20), (0, 0));
}

#[test]
fn rotation_reads_the_renamed_file_to_its_end_and_the_new_one_from_zero() {
    let (inbox, state) = tmp("rotate");
    let f = inbox.join("app.jsonl");
    append(&f, &rec("1"));
    scan(&inbox, &state, 1 << 20);
    // Written after the last scan, then rotated away before the next one.
    append(&f, &rec("2"));
    std::fs::rename(&f, inbox.join("app.jsonl.1")).unwrap();
    append(&f, &rec("3"));
    append(&inbox.join("app.jsonl.1"), &rec("4")); // a writer still holding the old file
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3", "4"]);
    // The rotated file is deleted: its entry goes, nothing is re-read.
    std::fs::remove_file(inbox.join("app.jsonl.1")).unwrap();
    append(&f, &rec("5"));
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3", "4", "5"]);
    let st = DaemonState::load(&state).unwrap();
    assert_eq!(st.files.len(), 1);
}

#[test]
fn truncation_starts_the_file_over_and_a_replaced_file_is_recognised() {
    let (inbox, state) = tmp("truncate");
    let f = inbox.join("app.jsonl");
    append(&f, &rec("1"));
    append(&f, &rec("2"));
    scan(&inbox, &state, 1 << 20);
    // Truncated, then one shorter line: size below the offset.
    std::fs::write(&f, rec("3")).unwrap();
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3"]);
    // Truncated and rewritten past the old offset before the daemon looked: the first bytes
    // differ, so it is read from 0 again.
    std::fs::write(&f, format!("{}{}{}", rec("40"), rec("41"), rec("42"))).unwrap();
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3", "40", "41", "42"]);
}

#[test]
fn crash_between_store_append_and_state_write_stores_nothing_twice() {
    let (inbox, state) = tmp("crash");
    let f = inbox.join("app.jsonl");
    append(&f, &rec("1"));
    scan(&inbox, &state, 1 << 20);
    let before = std::fs::read(state.join("state.json")).unwrap();
    append(&f, &rec("2"));
    append(&f, &rec("3"));
    scan(&inbox, &state, 1 << 20);
    // As if the process died after appending to the store but before the state was renamed
    // into place: the old state, the new store, plus a half-written store line.
    std::fs::write(state.join("state.json"), &before).unwrap();
    append(&state.join("store.jsonl"), "{\"id\": \"9:9:9:9\", \"fi");
    append(&f, &rec("4"));
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3", "4"]);
    // Restarts with nothing new change nothing.
    for _ in 0..3 {
        assert_eq!(scan(&inbox, &state, 1 << 20), (0, 0));
    }
    assert_exactly(&state, &["1", "2", "3", "4"]);
}

#[test]
fn copytruncate_after_a_crash_between_store_append_and_offset_write_loses_nothing() {
    // The soak's t.jsonl: a fresh file's lines reach the store, the daemon dies before the
    // offset is written, the writer sees its lines stored, truncates the file and writes on.
    let (inbox, state) = tmp("crash-copytruncate");
    let f = inbox.join("t.jsonl");
    append(&f, &rec("1"));
    append(&f, &rec("2"));
    scan(&inbox, &state, 1 << 20);
    // What is on disk at the crash: the lines in the store, the file's entry at offset 0 with
    // the head that the commit records before appending to the store.
    let mut st = DaemonState::load(&state).unwrap();
    st.files[0].offset = 0;
    st.files[0].line = 0;
    assert!(st.files[0].head_len > 0);
    st.save(&state).unwrap();
    // Same length as line 1, so the new line 3 would get line 1's id under the same gen.
    std::fs::write(&f, format!("{}{}", rec("3"), rec("45"))).unwrap();
    scan(&inbox, &state, 1 << 20);
    scan(&inbox, &state, 1 << 20);
    assert_exactly(&state, &["1", "2", "3", "45"]);
}

#[test]
fn bad_lines_are_quarantined_with_file_line_and_reason() {
    let (inbox, state) = tmp("quarantine");
    let f = inbox.join("app.jsonl");
    append(&f, &rec("1"));
    append(&f, "not json at all\n");
    append(&f, "{\"prompt\": \"no response\"}\n");
    append(&f, "\n"); // blank: ignored, not quarantined
    let mut junk = vec![0xffu8, 0xfe, 0x00, 0x81];
    junk.extend_from_slice(b"\xc3\x28 binary\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(&junk)
        .unwrap();
    // A 3 MB line against a 1 KB cap.
    let big = format!(
        "{{\"prompt\": \"{}\", \"response\": \"x\"}}\n",
        "a".repeat(3 << 20)
    );
    append(&f, &big);
    append(&f, &rec("2"));
    assert_eq!(scan(&inbox, &state, 1024), (2, 4));
    assert_exactly(&state, &["1", "2"]);
    let q = std::fs::read_to_string(state.join(QUARANTINE_FILE)).unwrap();
    let rows: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{q}");
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 3, 5, 6]);
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("invalid JSON"),
        "{q}"
    );
    assert!(
        rows[1]["reason"].as_str().unwrap().contains("response"),
        "{q}"
    );
    assert!(
        rows[2]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid UTF-8"),
        "{q}"
    );
    assert!(
        rows[3]["reason"]
            .as_str()
            .unwrap()
            .contains("over max_line_bytes"),
        "{q}"
    );
    assert!(rows[0]["file"].as_str().unwrap().ends_with("app.jsonl"));
    // Restart: nothing quarantined twice.
    assert_eq!(scan(&inbox, &state, 1024), (0, 0));
    assert_eq!(
        std::fs::read_to_string(state.join(QUARANTINE_FILE)).unwrap(),
        q
    );
}

#[test]
fn vanished_and_odd_entries_are_skipped() {
    let (inbox, state) = tmp("vanish");
    append(&inbox.join("a.jsonl"), &rec("1"));
    // A dangling symlink, a folder and a hidden temp file: skipped, no error.
    std::os::unix::fs::symlink(inbox.join("gone.jsonl"), inbox.join("link.jsonl")).unwrap();
    std::fs::create_dir(inbox.join("sub")).unwrap();
    append(&inbox.join(".partial.tmp"), "junk\n");
    assert_eq!(scan(&inbox, &state, 1 << 20), (1, 0));
    std::fs::remove_file(inbox.join("a.jsonl")).unwrap();
    assert_eq!(scan(&inbox, &state, 1 << 20), (0, 0));
    // The inbox folder itself missing is not an error either.
    std::fs::remove_dir_all(&inbox).unwrap();
    assert_eq!(scan(&inbox, &state, 1 << 20), (0, 0));
}
