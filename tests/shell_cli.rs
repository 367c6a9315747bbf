//! Shell completions and man pages come from the clap definitions: every subcommand is in them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for sub in ["tune", "eval", "chat", "report", "merge", "show-prompt"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let o = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let dir = std::env::temp_dir().join(format!("edge-sft-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = Command::new(BIN)
        .arg("man")
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in [
        "edge-sft.1",
        "edge-sft-tune.1",
        "edge-sft-chat.1",
        "edge-sft-report.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
