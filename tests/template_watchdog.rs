//! A chat template that grows a value without bound in ways no load-time check refuses (a string
//! or a list doubled through a second name) is
//! ended by the watchdog: the process exits with a clear error within seconds instead of
//! filling memory or running for ever. The render cannot be cancelled, so the process ends:
//! each case runs in a child process (this test binary, re-run on one test).

use edge_sft::tokenize::chat::{ChatTemplate, Message};
use std::process::Command;
use std::time::Instant;

const CHILD: &str = "EDGE_SFT_WATCHDOG_CASE";

const CASES: &[(&str, &str)] = &[
    // Doubling through an alias: 2^60 bytes without the watchdog.
    (
        "memory",
        "{% set ns = namespace(x='ab', y='') %}{% for i in range(60) %}{% set ns.y = ns.x %}\
         {% set ns.x = ns.x ~ ns.y %}{% endfor %}{{ ns.x | length }}",
    ),
    // A list doubled lazily through an alias, 2^31 items (31 levels: minijinja copies a chain
    // deeper than 32 into one allocation), then summed: no memory, only time.
    (
        "time",
        "{% set ns = namespace(x=[1], y=[]) %}{% for i in range(31) %}{% set ns.y = ns.x %}\
         {% set ns.x = ns.x + ns.y %}{% endfor %}{{ ns.x | sum }}",
    ),
];

/// In the child: render the case named by the environment variable (the process should end
/// inside `render`).
#[test]
fn child_renders_the_case() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let src = CASES.iter().find(|(n, _)| *n == name).expect("case").1;
    let t = ChatTemplate::new(src, None, None).expect("compiles");
    let r = t.render(&[Message::new("user", "hi")], true);
    panic!("render returned: {r:?}");
}

#[test]
fn a_template_past_its_time_or_memory_ends_the_process_with_an_error() {
    for (name, _) in CASES {
        let start = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_renders_the_case",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, name)
            .output()
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("the chat template did not finish rendering"),
            "{name}: {err}"
        );
        let bound = if *name == "memory" {
            "MB of memory"
        } else {
            "ran for more than"
        };
        assert!(err.contains(bound), "{name}: {err}");
        assert!(secs < 30.0, "{name} took {secs:.1} s");
    }
}
