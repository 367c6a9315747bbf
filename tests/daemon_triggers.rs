//! Each device condition, passing and failing, on fake sysfs/procfs roots.

use edge_sft::daemon::config::Triggers;
use edge_sft::daemon::triggers::{
    ac_power, check_all, in_window, load_average, parse_window, temperature,
};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-trig-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn supply(root: &Path, name: &str, kind: &str, online: Option<&str>) {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
    if let Some(o) = online {
        std::fs::write(d.join("online"), format!("{o}\n")).unwrap();
    }
}

#[test]
fn ac_power_on_mains_off_on_battery_and_no_battery_passes() {
    let r = tmp("ac");
    supply(&r, "BAT0", "Battery", None);
    supply(&r, "AC", "Mains", Some("0"));
    let c = ac_power(&r);
    assert!(!c.ok, "{c:?}");
    assert!(c.why.contains("battery"));
    std::fs::write(r.join("AC/online"), "1\n").unwrap();
    assert!(ac_power(&r).ok);
    // A desktop: no battery, no mains entry.
    let d = tmp("ac-desktop");
    supply(&d, "hid-mouse", "Battery-less", None);
    assert!(ac_power(&d).ok);
    assert!(ac_power(&d.join("missing")).ok);
}

#[test]
fn load_average_below_and_above_the_limit() {
    let r = tmp("load");
    let p = r.join("loadavg");
    std::fs::write(&p, "0.42 0.50 0.61 1/123 4567\n").unwrap();
    assert!(load_average(&p, 1.0).ok);
    std::fs::write(&p, "3.10 2.00 1.00 2/123 4567\n").unwrap();
    let c = load_average(&p, 1.0);
    assert!(!c.ok, "{c:?}");
    assert!(c.why.contains("3.10"));
    assert!(load_average(&p, 0.0).ok, "0 turns the check off");
}

#[test]
fn temperature_below_and_above_the_limit() {
    let r = tmp("thermal");
    for (z, t) in [("thermal_zone0", "45000"), ("thermal_zone1", "52500")] {
        std::fs::create_dir_all(r.join(z)).unwrap();
        std::fs::write(r.join(z).join("temp"), format!("{t}\n")).unwrap();
    }
    assert!(temperature(&r, 60.0).ok);
    let c = temperature(&r, 50.0);
    assert!(!c.ok, "{c:?}");
    assert!(c.why.contains("52.5"), "{c:?}");
    assert!(temperature(&tmp("no-zones"), 10.0).ok);
}

#[test]
fn time_window_inside_outside_and_across_midnight() {
    let w = parse_window("22:00-07:00").unwrap();
    assert!(in_window(23 * 60, w).ok);
    assert!(in_window(3 * 60, w).ok);
    assert!(!in_window(12 * 60, w).ok);
    assert!(!in_window(7 * 60, w).ok, "the end is exclusive");
    let day = parse_window("09:30-17:00").unwrap();
    assert!(in_window(10 * 60, day).ok);
    assert!(!in_window(9 * 60 + 29, day).ok);
    assert!(in_window(0, parse_window("").unwrap()).ok);
    assert!(parse_window("9-5").is_err());
    assert!(parse_window("24:30-01:00").is_err());
}

#[test]
fn check_all_skips_load_once_running_and_names_the_failure() {
    let r = tmp("all");
    std::fs::write(r.join("loadavg"), "9.0 9.0 9.0 1/1 1\n").unwrap();
    let t = Triggers {
        require_ac: true,
        max_load: 1.0,
        max_temp_c: 70.0,
        window: "01:00-02:00".into(),
        power_supply_root: r.join("none"),
        thermal_root: r.join("none"),
        loadavg_path: r.join("loadavg"),
    };
    let start = check_all(&t, true, 90);
    assert!(start.iter().any(|(n, c)| *n == "load" && !c.ok));
    let running = check_all(&t, false, 90);
    assert!(running.iter().all(|(n, _)| *n != "load"));
    assert!(running.iter().all(|(_, c)| c.ok), "{running:?}");
    let outside = check_all(&t, false, 180);
    assert!(outside.iter().any(|(n, c)| *n == "window" && !c.ok));
}

#[test]
fn the_example_config_parses_and_names_every_key_with_its_default() {
    use edge_sft::daemon::config::Config;
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/edge-sft.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let c = Config::load(&p).unwrap();
    let d = Config::default();
    // Every key of the config (and of [triggers]) appears in the example...
    let v = serde_json::to_value(&d).unwrap();
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.extend(v["triggers"].as_object().unwrap().keys().cloned());
    for k in keys.iter().filter(|k| *k != "triggers") {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{k} = "))),
            "examples/edge-sft.toml does not set `{k}`"
        );
    }
    // ...with its default value (the paths aside, which resolve against the file's folder).
    let mut a = serde_json::to_value(&c).unwrap();
    let mut b = v;
    for o in [&mut a, &mut b] {
        for k in ["model", "inbox", "state", "general_set"] {
            o.as_object_mut().unwrap().remove(k);
        }
    }
    assert_eq!(a, b);
}
