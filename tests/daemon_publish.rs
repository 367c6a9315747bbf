//! Publishing versions, the atomically switched `current` link, keeping K, rollback; and the
//! gate's rule on numbers.

use edge_sft::daemon::gate::{judge, Pair};
use edge_sft::daemon::publish::{self, VersionMeta, FILES};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-pub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fake_run(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for f in FILES {
        std::fs::write(dir.join(f), format!("{tag}:{f}")).unwrap();
    }
}

fn publish_round(state: &Path, run: &Path, round: u64, keep: usize) -> String {
    let name = publish::name_for(state, round);
    let m = VersionMeta {
        version: name.clone(),
        round,
        unix_time: 0,
        personal_nll: Some(1.0 / round as f64),
        general_nll: Some(2.0),
    };
    publish::publish(state, run, &name, &m, keep).unwrap();
    name
}

fn current_bytes(state: &Path) -> String {
    std::fs::read_to_string(publish::adapters_dir(state).join("current/adapter.gguf")).unwrap()
}

#[test]
fn versions_switch_current_keep_k_and_roll_back() {
    let d = tmp("versions");
    let state = d.join("state");
    let run = d.join("run");
    for r in 1..=4 {
        fake_run(&run, &format!("r{r}"));
        let v = publish_round(&state, &run, r, 3);
        assert_eq!(v, format!("v{r:04}"));
        assert_eq!(publish::current(&state).as_deref(), Some(v.as_str()));
        assert_eq!(current_bytes(&state), format!("r{r}:adapter.gguf"));
    }
    assert_eq!(publish::versions(&state), vec!["v0002", "v0003", "v0004"]);
    // `current` is a relative symlink, so the folder can move.
    let link = std::fs::read_link(publish::adapters_dir(&state).join("current")).unwrap();
    assert_eq!(link, Path::new("v0004"));
    // Publishing the same round again (a restart mid-publish) makes no new version.
    assert_eq!(publish_round(&state, &run, 4, 3), "v0004");
    assert_eq!(publish::versions(&state).len(), 3);

    assert_eq!(publish::rollback(&state, None).unwrap(), "v0003");
    assert_eq!(current_bytes(&state), "r3:adapter.gguf");
    assert_eq!(publish::rollback(&state, Some("v0004")).unwrap(), "v0004");
    assert!(publish::rollback(&state, Some("v0001")).is_err(), "pruned");
    publish::rollback(&state, Some("v0002")).unwrap();
    let err = publish::rollback(&state, None).unwrap_err().to_string();
    assert!(err.contains("oldest"), "{err}");
    // Pruning never removes the current version, even when it is the oldest.
    fake_run(&run, "r5");
    publish::switch(&state, "v0002").unwrap();
    let v5 = publish::name_for(&state, 5);
    let m = VersionMeta {
        version: v5.clone(),
        round: 5,
        unix_time: 0,
        personal_nll: None,
        general_nll: None,
    };
    publish::publish(&state, &run, &v5, &m, 1).unwrap();
    assert_eq!(publish::versions(&state), vec!["v0005"]);
    // No temporary names are left behind.
    let names: Vec<String> = std::fs::read_dir(publish::adapters_dir(&state))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
}

#[test]
fn gate_promotes_only_a_personal_gain_within_the_general_margin() {
    let better = Pair {
        current: 2.0,
        candidate: 1.5,
    };
    let worse = Pair {
        current: 2.0,
        candidate: 2.1,
    };
    let g_ok = Pair {
        current: 3.0,
        candidate: 3.05,
    }; // +1.7%
    let g_bad = Pair {
        current: 3.0,
        candidate: 3.2,
    }; // +6.7%
    assert!(judge(better, Some(g_ok), 0.02).0);
    let (p, why) = judge(better, Some(g_bad), 0.02);
    assert!(!p && why.contains("general NLL rose"), "{why}");
    let (p, why) = judge(worse, Some(g_ok), 0.02);
    assert!(!p && why.contains("did not improve"), "{why}");
    assert!(judge(better, None, 0.0).0);
    let nan = Pair {
        current: 2.0,
        candidate: f64::NAN,
    };
    assert!(!judge(nan, None, 0.02).0);
}
