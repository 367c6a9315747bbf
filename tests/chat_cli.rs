//! `edge-sft chat` on the tiny Llama fixture, driven through piped stdin: the second turn's
//! prompt is the chat template's rendering of the whole conversation (the first turn and its
//! answer included), the KV cache reused across turns gives the same reply as a fresh prefill,
//! `/reset` forgets, `/system` sets the system message, and `/adapter` swaps the adapter.

use edge_sft::infer::generate::{generate, GenerateOptions};
use edge_sft::loaded::LoadedModel;
use edge_sft::tokenize::chat::Message;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");
const MAX_TOKENS: usize = 8;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny/llama")
        .join(p)
}

/// Run `chat --show-prompt` with `input` on stdin; returns stdout and the JSON turn records.
fn chat(input: &str, extra: &[&str]) -> (String, Vec<Value>, String) {
    let mut child = Command::new(BIN)
        .args(["chat", "--threads", "1", "--show-prompt"])
        .args(["--max-tokens", &MAX_TOKENS.to_string()])
        .arg("--model")
        .arg(fixture("hf_f32"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "chat failed: {stderr}");
    let turns = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (stdout, turns, stderr)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(lm: &LoadedModel, prompt: &str) -> Vec<u32> {
    let tok = &lm.tokenizer;
    let opts = GenerateOptions {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stop_ids: tok.eot_id.into_iter().chain(tok.eos_id).collect(),
    };
    let p = tok.encode(prompt).unwrap();
    generate(&lm.model, None, &p, &opts, |_| Ok(())).unwrap()
}

#[test]
fn second_turn_sees_the_first_and_matches_the_template() {
    let (stdout, turns, _) = chat("Hello there\nHow are you?\n", &[]);
    assert_eq!(turns.len(), 2);
    assert_eq!(
        stdout.lines().count(),
        2,
        "no prompts or extra lines: {stdout:?}"
    );
    let lm = LoadedModel::open(&fixture("hf_f32")).unwrap();
    let (p1, r1) = (s(&turns[0]["prompt"]), s(&turns[0]["reply"]));
    assert_eq!(
        p1,
        lm.chat
            .render(&[Message::new("user", "Hello there")], true)
            .unwrap()
    );
    let want = lm
        .chat
        .render(
            &[
                Message::new("user", "Hello there"),
                Message::new("assistant", r1.clone()),
                Message::new("user", "How are you?"),
            ],
            true,
        )
        .unwrap();
    let p2 = s(&turns[1]["prompt"]);
    assert_eq!(p2, want);
    assert!(p2.contains("Hello there") && p2.contains(&r1));
    // The reply text is what the reply ids decode to.
    assert_eq!(
        r1,
        lm.tokenizer.decode(&ids(&turns[0]["reply_ids"])).unwrap()
    );

    // The second turn reused the first turn's cache (at least its whole prompt) ...
    let reused = turns[1]["reused_tokens"].as_u64().unwrap() as usize;
    assert!(reused >= turns[0]["prompt_tokens"].as_u64().unwrap() as usize);
    // ... and still answers exactly as a fresh prefill of the same prompt does.
    assert_eq!(ids(&turns[1]["reply_ids"]), greedy(&lm, &p2));
    assert_eq!(ids(&turns[0]["reply_ids"]), greedy(&lm, &p1));
}

#[test]
fn reset_forgets_and_system_is_rendered() {
    let (_, turns, stderr) = chat(
        "Hello there\n/reset\nHello there\n/system Be brief.\nHi\n",
        &[],
    );
    assert_eq!(turns.len(), 3);
    assert!(stderr.contains("conversation cleared"));
    // After /reset the prompt is the first turn's again, and so is the reply.
    assert_eq!(turns[1]["prompt"], turns[0]["prompt"]);
    assert_eq!(turns[1]["reply_ids"], turns[0]["reply_ids"]);
    let lm = LoadedModel::open(&fixture("hf_f32")).unwrap();
    let want = lm
        .chat
        .render(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hello there"),
                Message::new("assistant", s(&turns[1]["reply"])),
                Message::new("user", "Hi"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(s(&turns[2]["prompt"]), want);
}

#[test]
fn adapter_swap_changes_the_reply_and_none_restores_the_base() {
    let adapter = fixture("peft_adapter");
    let input = format!(
        "How are you?\n/adapter {}\n/reset\nHow are you?\n/adapter none\n/reset\nHow are you?\n",
        adapter.display()
    );
    let (_, turns, stderr) = chat(&input, &[]);
    assert_eq!(turns.len(), 3, "{stderr}");
    assert!(stderr.contains("adapter: none"));
    for t in &turns[1..] {
        assert_eq!(t["prompt"], turns[0]["prompt"]);
    }
    assert_ne!(turns[1]["reply_ids"], turns[0]["reply_ids"]);
    assert_eq!(turns[2]["reply_ids"], turns[0]["reply_ids"]);
    // The swap dropped the cache: keys/values made with another adapter are not reused.
    assert_eq!(turns[1]["reused_tokens"], 0);

    // Starting with --adapter gives the adapter's reply.
    let (_, with, _) = chat("How are you?\n", &["--adapter", adapter.to_str().unwrap()]);
    assert_eq!(with[0]["reply_ids"], turns[1]["reply_ids"]);
}

#[test]
fn bad_adapter_and_unknown_commands_do_not_end_the_chat() {
    let (_, turns, stderr) = chat(
        "/adapter /no/such/adapter\n/frobnicate\nHi\n/quit\nHi\n",
        &[],
    );
    assert!(stderr.contains("cannot load that adapter"), "{stderr}");
    assert!(stderr.contains("unknown command /frobnicate"), "{stderr}");
    assert_eq!(turns.len(), 1, "/quit ends the chat");
}

#[test]
fn bad_options_are_clear_errors() {
    let out = Command::new(BIN)
        .args(["chat", "--top-p", "0", "--model"])
        .arg(fixture("hf_f32"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--top-p"));
}
