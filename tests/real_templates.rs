//! Real chat templates through edge-sft's load-time checks (template_namespaces.rs,
//! template_growth.rs) and a render: the checks refuse shapes that could crash or run away,
//! and must not refuse what published models ship. The 70 templates llama.cpp keeps under
//! models/templates (Llama 3.x, Qwen 2.5/3, DeepSeek, Mistral, Gemma, Phi, Hermes, Functionary,
//! Command R, Kimi K3, Reka, ...) come from `scripts/fetch_templates.py` (run by
//! scripts/test.sh); without them the test says so and passes.

use edge_sft::tokenize::chat::{ChatTemplate, Message};
use std::path::PathBuf;

fn templates_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/templates");
    dir.is_dir().then_some(dir)
}

#[test]
fn published_templates_pass_the_load_time_checks_and_render() {
    let Some(dir) = templates_dir() else {
        eprintln!("models/templates missing (scripts/fetch_templates.py): skipped");
        return;
    };
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
        Message::new("user", "More?"),
    ];
    let (mut checked, mut rendered, mut refused) = (0, 0, Vec::new());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    paths.sort();
    for p in &paths {
        let src = std::fs::read_to_string(p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy();
        match ChatTemplate::new(&src, Some("<s>"), Some("</s>")) {
            Ok(t) => {
                checked += 1;
                // Some templates insist on their own conventions (no system role, tool fields):
                // an error is fine, a panic or a watchdog exit is not.
                if t.render(&msgs, true).is_ok() {
                    rendered += 1;
                }
            }
            // Syntax minijinja does not have (`{% generation %}`) is the compiler's to report.
            Err(e) if e.to_string().contains("cannot compile") => {}
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "{} templates: {checked} pass the checks, {rendered} render a 4-message chat",
        paths.len()
    );
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
    assert!(
        paths.len() >= 60 && checked >= 60,
        "{} / {checked}",
        paths.len()
    );
    assert!(rendered >= 55, "only {rendered} rendered");
}
