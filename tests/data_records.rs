//! JSONL records → (ids, mask): error reporting, skip_bad, loss placement, raw template and
//! truncation. Runs without any model: a tiny byte-level BPE vocabulary with ChatML special
//! tokens is built as GGUF metadata in code (which also exercises `from_gguf_metadata`).

use edge_sft::data::{
    build_example, load_jsonl, parse_record, Built, DataOptions, Dataset, LossOn, TemplateMode,
};
use edge_sft::format::gguf::Value;
use edge_sft::tokenize::{ChatTemplate, Message, TextTokenizer};
use std::collections::BTreeMap;
use std::path::PathBuf;

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges (in the byte alphabet: 'Ġ' is a space). Every merged token is added to the vocab.
const MERGES: [&str; 7] = ["Ġ t", "h e", "Ġt he", "t he", "t h", "i n", "Ġ a"];

fn byte_chars() -> Vec<char> {
    // GPT-2's bytes_to_unicode, written out independently of the crate.
    let mut printable: Vec<u32> = (0x21..=0x7e)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(&chars) {
        table[*b as usize] = char::from_u32(*c).unwrap();
    }
    table
}

fn tiny_metadata() -> BTreeMap<String, Value> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types: Vec<Value> = vec![Value::I32(3); SPECIALS.len()];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(Value::I32(1));
    }
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(Value::I32(1));
    }
    let s = |x: &str| Value::String(x.to_string());
    let mut md = BTreeMap::new();
    md.insert("tokenizer.ggml.model".into(), s("gpt2"));
    md.insert("tokenizer.ggml.pre".into(), s("smollm"));
    md.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    md.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(MERGES.iter().map(|m| s(m)).collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    md
}

fn tiny() -> (TextTokenizer, ChatTemplate) {
    let tok = TextTokenizer::from_gguf_metadata(&tiny_metadata()).unwrap();
    // No tokenizer.chat_template in the metadata: the ChatML fallback is used.
    let chat = ChatTemplate::for_tokenizer(&tok).unwrap();
    (tok, chat)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge_sft_data_records_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn opts() -> DataOptions {
    DataOptions::default()
}

fn load(name: &str, text: &str, o: &DataOptions) -> edge_sft::Result<Dataset> {
    let (tok, chat) = tiny();
    load_jsonl(&temp_file(name, text), &tok, &chat, o)
}

const GOOD: &str = r#"{"prompt": "the cat", "response": "in the hat"}"#;

fn scored_text(tok: &TextTokenizer, ids: &[u32], mask: &[bool]) -> String {
    let s: Vec<u32> = ids
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&i, _)| i)
        .collect();
    tok.decode(&s).unwrap()
}

#[test]
fn tiny_tokenizer_from_gguf_metadata() {
    let (tok, chat) = tiny();
    assert!(chat.is_fallback);
    assert_eq!(
        (tok.bos_id, tok.eos_id, tok.eot_id),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
    assert!(!tok.add_bos);
    let ids = tok.encode("<|im_start|>the the<|im_end|>").unwrap();
    let the = tok.token_to_id("the").unwrap();
    let sp_the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(ids, vec![1, the, sp_the, 2]);
    let text = "in the hat, ünïcödé 🎉\n\ttab";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn tiny_tokenizer_from_hf_dir_agrees() {
    let (tok, _) = tiny();
    let dir = std::env::temp_dir().join(format!("edge_sft_hf_tok_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.inner.to_string(false).unwrap(),
    )
    .unwrap();
    let cfg = serde_json::json!({
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}[{{ m.role }}]\n{{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}[assistant]\n{% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let hf = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(
        (hf.bos_id, hf.eos_id, hf.eot_id),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(hf.kind, "tokenizer.json");
    let text = "<|im_start|>the cat in the hat<|im_end|>";
    assert_eq!(hf.encode(text).unwrap(), tok.encode(text).unwrap());
    let chat = ChatTemplate::for_tokenizer(&hf).unwrap();
    assert!(!chat.is_fallback);
    let msgs = vec![
        Message::new("user", "hi"),
        Message::new("assistant", "the end"),
    ];
    let b = build_example(&msgs, &hf, &chat, &opts(), 0).unwrap();
    let Built::Example(ex) = b else {
        panic!("fits")
    };
    assert_eq!(scored_text(&hf, &ex.ids, &ex.mask), "the end<|im_end|>");
}

#[test]
fn chatml_mask_covers_content_and_im_end() {
    let ds = load("good.jsonl", GOOD, &opts()).unwrap();
    let (tok, _) = tiny();
    assert_eq!(ds.examples.len(), 1);
    let ex = &ds.examples[0];
    assert_eq!(ex.line, 1);
    let text = tok.decode(&ex.ids).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\nin the hat<|im_end|>\n"
    );
    assert_eq!(scored_text(&tok, &ex.ids, &ex.mask), "in the hat<|im_end|>");
    // The trailing '\n' after <|im_end|> is present but not scored.
    assert_eq!(*ex.ids.last().unwrap(), tok.encode("\n").unwrap()[0]);
    assert!(!ex.mask.last().unwrap());
    assert!(!ex.mask[0]);
}

#[test]
fn every_assistant_turn_is_scored() {
    let rec = r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}, {"role": "user", "content": "trailing"}]}"#;
    let ds = load("multi.jsonl", rec, &opts()).unwrap();
    let (tok, _) = tiny();
    let ex = &ds.examples[0];
    assert_eq!(
        scored_text(&tok, &ex.ids, &ex.mask),
        "a1<|im_end|>a2<|im_end|>"
    );
    // The trailing user turn carries no loss and is dropped.
    assert!(!tok.decode(&ex.ids).unwrap().contains("trailing"));
    // Exactly two scored runs.
    let runs = (1..ex.mask.len())
        .filter(|&t| ex.mask[t] && !ex.mask[t - 1])
        .count();
    assert_eq!(runs, 2);
}

#[test]
fn instruction_shape_joins_input() {
    let rec = r#"{"instruction": "Say it", "input": "the thing", "output": "done"}"#;
    let (tok, _) = tiny();
    let ex = &load("instr.jsonl", rec, &opts()).unwrap().examples[0];
    assert!(tok
        .decode(&ex.ids)
        .unwrap()
        .contains("user\nSay it\n\nthe thing<|im_end|>"));
    assert_eq!(scored_text(&tok, &ex.ids, &ex.mask), "done<|im_end|>");
}

/// Each malformed record stops loading with "file:line: reason".
#[test]
fn malformed_records_name_file_line_and_reason() {
    let cases = [
        ("{\"prompt\": \"a\", \"response\": ", "invalid JSON"),
        (r#"{"prompt": "a"}"#, "missing field 'response'"),
        (
            r#"{"prompt": ["a"], "response": "b"}"#,
            "field 'prompt' is not a string",
        ),
        (
            r#"{"instruction": "a", "output": 7}"#,
            "field 'output' is not a string",
        ),
        (r#"{"text": "a"}"#, "unknown record shape"),
        (r#"{"prompt": "a", "response": ""}"#, "empty response"),
        (
            r#"{"messages": [{"role": "user", "content": "a"}]}"#,
            "no assistant turn",
        ),
        (
            r#"{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "b"}]}"#,
            "messages[0]: field 'content' is not a string",
        ),
        ("[1, 2]", "not a JSON object"),
    ];
    for (k, (bad, reason)) in cases.iter().enumerate() {
        // Line 1 good, line 2 blank, line 3 bad: blank lines still count.
        let name = format!("bad{k}.jsonl");
        let text = format!("{GOOD}\n\n{bad}\n{GOOD}\n");
        let err = load(&name, &text, &opts()).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}:3: ")), "{err}");
        assert!(err.contains(reason), "expected {reason:?} in {err}");
    }
}

#[test]
fn prefix_mismatch_is_an_error() {
    // The generation prompt says "Assistant:" but the full rendering says "assistant:".
    let src = "{% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";
    let (tok, _) = tiny();
    let chat = ChatTemplate::new(src, None, None).unwrap();
    let p = temp_file("prefix.jsonl", GOOD);
    let err = load_jsonl(&p, &tok, &chat, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prefix.jsonl:1: prefix does not tokenize as a prefix"),
        "{err}"
    );

    // A BPE merge across the boundary also breaks the prefix: the generation prompt ends in
    // "th" and the response starts with "e", which merges into "the".
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}th{% endif %}{{ m.content }}|{% endfor %}{% if add_generation_prompt %}th{% endif %}";
    let chat = ChatTemplate::new(src, None, None).unwrap();
    let msgs = parse_record(r#"{"prompt": "x", "response": "e cat"}"#).unwrap();
    let err = build_example(&msgs, &tok, &chat, &opts(), 0).unwrap_err();
    assert!(
        err.starts_with("prefix does not tokenize as a prefix"),
        "{err}"
    );
}

#[test]
fn template_that_drops_assistant_turns_gives_empty_mask() {
    let src = "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}";
    let (tok, _) = tiny();
    let chat = ChatTemplate::new(src, None, None).unwrap();
    let err = load_jsonl(&temp_file("empty_mask.jsonl", GOOD), &tok, &chat, &opts())
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty_mask.jsonl:1: empty mask"), "{err}");
}

#[test]
fn skip_bad_counts_and_keeps_reasons() {
    let text = [
        GOOD,
        "not json",
        r#"{"prompt": "a"}"#,
        "",
        r#"{"messages": []}"#,
        GOOD,
        r#"{"instruction": "i", "input": "", "output": "   "}"#,
        r#"{"x": 1}"#,
        r#"{"prompt": 1, "response": "r"}"#,
    ]
    .join("\n");
    let o = DataOptions {
        skip_bad: true,
        ..opts()
    };
    let ds = load("skip.jsonl", &text, &o).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(
        ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![1, 6]
    );
    assert_eq!(ds.skipped_bad, 6);
    assert_eq!(ds.skipped_too_long, 0);
    assert_eq!(
        ds.bad_reasons.len(),
        5,
        "only the first few reasons are kept"
    );
    assert!(
        ds.bad_reasons[0].contains("skip.jsonl:2: invalid JSON"),
        "{:?}",
        ds.bad_reasons
    );
    assert!(ds.bad_reasons[2].contains("skip.jsonl:5: field 'messages' is empty"));

    // Without skip_bad the first bad line is the error.
    let err = load("skip2.jsonl", &text, &opts()).unwrap_err().to_string();
    assert!(err.contains("skip2.jsonl:2: invalid JSON"), "{err}");

    // A file with nothing usable is an error even with skip_bad.
    let err = load("allbad.jsonl", "nope\n{}\n", &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("allbad.jsonl") && err.contains("no usable records"),
        "{err}"
    );
    assert!(
        err.contains("; first: ") && err.contains("allbad.jsonl:1: invalid JSON"),
        "{err}"
    );
}

#[test]
fn loss_on_all_scores_every_token_after_the_first() {
    let resp = load("all_r.jsonl", GOOD, &opts()).unwrap();
    let o = DataOptions {
        loss_on: LossOn::All,
        ..opts()
    };
    let all = load("all_a.jsonl", GOOD, &o).unwrap();
    let (r, a) = (&resp.examples[0], &all.examples[0]);
    assert_eq!(a.ids, r.ids);
    assert!(!a.mask[0]);
    assert!(a.mask[1..].iter().all(|&m| m));
    assert!(a.scored() > r.scored());
}

#[test]
fn raw_template_concatenates_and_scores_response_plus_eos() {
    let (mut tok, chat) = tiny();
    let o = DataOptions {
        template: TemplateMode::Raw,
        ..opts()
    };
    let msgs = parse_record(r#"{"prompt": "the cat", "response": " in the hat"}"#).unwrap();
    let Built::Example(ex) = build_example(&msgs, &tok, &chat, &o, 7).unwrap() else {
        panic!()
    };
    let p = tok.encode("the cat").unwrap();
    let r = tok.encode(" in the hat").unwrap();
    let mut want = p.clone();
    want.extend(&r);
    want.push(2);
    assert_eq!(ex.ids, want);
    assert_eq!(ex.line, 7);
    assert_eq!(
        ex.mask,
        (0..want.len()).map(|t| t >= p.len()).collect::<Vec<_>>()
    );
    assert_eq!(
        scored_text(&tok, &ex.ids, &ex.mask),
        " in the hat<|im_end|>"
    );

    // With add_bos the BOS comes first and is never scored.
    tok.add_bos = true;
    let Built::Example(eb) = build_example(&msgs, &tok, &chat, &o, 7).unwrap() else {
        panic!()
    };
    assert_eq!(eb.ids[0], 1);
    assert_eq!(&eb.ids[1..], &want[..]);
    assert_eq!(&eb.mask[1..], &ex.mask[..]);
    assert!(!eb.mask[0]);

    // System + user + earlier turns become the prompt, joined by blank lines.
    let msgs = parse_record(r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}, {"role": "assistant", "content": "B"}]}"#).unwrap();
    tok.add_bos = false;
    let Built::Example(em) = build_example(&msgs, &tok, &chat, &o, 0).unwrap() else {
        panic!()
    };
    assert_eq!(tok.decode(&em.ids).unwrap(), "S\n\nU\n\nA\n\nVB<|im_end|>");
    assert_eq!(scored_text(&tok, &em.ids, &em.mask), "B<|im_end|>");

    // A boundary that BPE merges when prompt and response are tokenized together ("th" + "e")
    // is no error: each side is tokenized on its own and the ids concatenated, as TRL does.
    let msgs = parse_record(r#"{"prompt": "th", "response": "e end"}"#).unwrap();
    let joint = tok.encode("the end").unwrap();
    let (p, r) = (tok.encode("th").unwrap(), tok.encode("e end").unwrap());
    assert!(
        !joint.starts_with(&p),
        "the fixture must merge across the boundary for this check to mean anything"
    );
    let Built::Example(eb) = build_example(&msgs, &tok, &chat, &o, 0).unwrap() else {
        panic!()
    };
    assert_eq!(eb.ids, [p.clone(), r.clone(), vec![2]].concat());
    assert_eq!(
        eb.mask,
        (0..eb.ids.len()).map(|t| t >= p.len()).collect::<Vec<_>>()
    );
    assert_eq!(scored_text(&tok, &eb.ids, &eb.mask), "e end<|im_end|>");
}

#[test]
fn over_long_prompts_are_cut_from_the_left() {
    let (tok, chat) = tiny();
    let long_prompt = "the cat ".repeat(40);
    let rec = serde_json::json!({"prompt": long_prompt, "response": "in the hat"}).to_string();
    let msgs = parse_record(&rec).unwrap();
    let Built::Example(full) = build_example(&msgs, &tok, &chat, &opts(), 0).unwrap() else {
        panic!()
    };
    let first = full.mask.iter().position(|&m| m).unwrap();
    let last = full.mask.iter().rposition(|&m| m).unwrap();
    let scored = full.scored();
    assert_eq!(scored, last + 1 - first, "one contiguous span");

    let max_seq = scored + 5;
    assert!(full.ids.len() > max_seq);
    let o = DataOptions { max_seq, ..opts() };
    let Built::Example(cut) = build_example(&msgs, &tok, &chat, &o, 0).unwrap() else {
        panic!()
    };
    assert_eq!(cut.ids.len(), max_seq);
    // The kept ids are the tail of the prompt plus every scored token; trailing unscored
    // tokens after the last scored one are dropped.
    assert_eq!(cut.ids, full.ids[last + 1 - max_seq..=last]);
    assert_eq!(cut.scored(), scored);
    assert!(!cut.mask[0]);
    assert_eq!(
        scored_text(&tok, &cut.ids, &cut.mask),
        "in the hat<|im_end|>"
    );

    // Scored span + one context token fits exactly.
    let o = DataOptions {
        max_seq: scored + 1,
        ..opts()
    };
    let Built::Example(tight) = build_example(&msgs, &tok, &chat, &o, 0).unwrap() else {
        panic!()
    };
    assert_eq!(tight.ids.len(), scored + 1);
    assert_eq!(tight.scored(), scored);

    // One less and the record is too long; load_jsonl counts it.
    let o = DataOptions {
        max_seq: scored,
        ..opts()
    };
    assert!(matches!(
        build_example(&msgs, &tok, &chat, &o, 0).unwrap(),
        Built::TooLong { scored_span, .. } if scored_span == scored
    ));
    let text = format!("{rec}\n{GOOD}\n");
    let o = DataOptions {
        max_seq: 25,
        ..opts()
    };
    let ds = load("long.jsonl", &text, &o).unwrap();
    assert_eq!(
        ds.skipped_too_long, 0,
        "the long prompt is cut, not skipped"
    );
    assert!(ds.examples.iter().all(|e| e.ids.len() <= 25));
    let o = DataOptions {
        max_seq: 3,
        ..opts()
    };
    let err = load("long2.jsonl", &text, &o).unwrap_err().to_string();
    assert!(
        err.contains("no usable records") && err.contains("2 too long"),
        "{err}"
    );
}

/// A 100 MB record on one line, a million blank lines and a line of invalid UTF-8 (issue 16):
/// the long line is skipped and counted as it streams past (never parsed, rendered or
/// tokenized; before, `tune` grew past 7 GB on it), blank lines cost nothing, and the bad line
/// is an error naming its line (or a counted skip with `skip_bad`), all within seconds.
#[test]
fn a_100_mb_line_blank_lines_and_bad_utf8_are_skipped_or_named_quickly() {
    let start = std::time::Instant::now();
    let long = format!(
        r#"{{"prompt": "{}", "response": "r"}}"#,
        "x".repeat(100 << 20)
    );
    let text = format!("{GOOD}\n{long}\n{}{GOOD}\n", "\n".repeat(1_000_000));
    let ds = load("long_line.jsonl", &text, &opts()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.examples[1].line, 1_000_003);
    assert_eq!((ds.skipped_too_long, ds.skipped_over_bytes), (1, 1));
    assert!(
        start.elapsed().as_secs_f64() < 20.0,
        "{:?}",
        start.elapsed()
    );

    let (tok, chat) = tiny();
    let p = temp_file("bad_utf8.jsonl", "");
    std::fs::write(
        &p,
        [GOOD.as_bytes(), b"\n\xff\xfe{}\n", GOOD.as_bytes()].concat(),
    )
    .unwrap();
    let err = load_jsonl(&p, &tok, &chat, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad_utf8.jsonl:2") && err.contains("not valid UTF-8"),
        "{err}"
    );
    let o = DataOptions {
        skip_bad: true,
        ..opts()
    };
    let ds = load_jsonl(&p, &tok, &chat, &o).unwrap();
    assert_eq!((ds.examples.len(), ds.skipped_bad), (2, 1));
}
