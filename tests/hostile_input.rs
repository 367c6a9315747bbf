//! Allocation bounds from the file (issue 16): no count or length read from a file makes
//! edge-sft allocate more than the file could justify. Each lie below must be a clear error
//! naming the file and the field, returned at once (these tests would take minutes or abort on
//! an allocation failure if the count were believed).

use edge_sft::format::gguf::{GgufFile, MAX_METADATA_VALUES};
use edge_sft::model::load::gguf_config;
use std::path::Path;
use std::time::Instant;

const NAME: &str = "hostile.gguf";

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 header with these counts.
fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

/// Parse `bytes` and return the error text; fails the test if it parses or takes long.
fn open_err(bytes: &[u8]) -> String {
    let t = Instant::now();
    let r = GgufFile::from_bytes(Path::new(NAME), bytes);
    assert!(t.elapsed().as_secs_f64() < 2.0, "took {:?}", t.elapsed());
    let e = r.err().expect("a lying file must not parse").to_string();
    assert!(e.contains(NAME), "error does not name the file: {e}");
    e
}

#[test]
fn tensor_count_of_2_pow_40() {
    let mut b = header(1 << 40, 0);
    b.resize(64, 0);
    let e = open_err(&b);
    assert!(
        e.contains("1099511627776 tensors") && e.contains("cannot fit"),
        "{e}"
    );
}

#[test]
fn metadata_count_of_u64_max() {
    let mut b = header(0, u64::MAX);
    b.resize(64, 0);
    let e = open_err(&b);
    assert!(
        e.contains("metadata entries") && e.contains("cannot fit"),
        "{e}"
    );
}

#[test]
fn array_of_2_pow_32_strings() {
    let mut b = header(0, 1);
    gguf_string(&mut b, "tokenizer.ggml.merges");
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&8u32.to_le_bytes()); // of strings
    b.extend_from_slice(&(1u64 << 32).to_le_bytes());
    b.resize(b.len() + 256, 0);
    let e = open_err(&b);
    assert!(
        e.contains("tokenizer.ggml.merges") && e.contains("does not fit"),
        "{e}"
    );
}

#[test]
fn vocabulary_of_a_billion_tokens() {
    let mut b = header(0, 1);
    gguf_string(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&1_000_000_000u64.to_le_bytes());
    // A few real tokens, then the file ends.
    for t in ["<s>", "a", "b"] {
        gguf_string(&mut b, t);
    }
    let e = open_err(&b);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("1000000000"),
        "{e}"
    );
}

#[test]
fn string_length_of_2_pow_60() {
    let mut b = header(0, 1);
    gguf_string(&mut b, "tokenizer.chat_template");
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.resize(b.len() + 64, b'x');
    let e = open_err(&b);
    assert!(
        e.contains("tokenizer.chat_template") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn tensor_name_length_of_2_pow_60() {
    let mut b = header(1, 0);
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.resize(b.len() + 64, b'x');
    let e = open_err(&b);
    assert!(e.contains("tensor name") && e.contains("truncated"), "{e}");
}

/// Arrays of arrays whose counts each fit in the bytes left but nest to a huge total.
#[test]
fn nested_arrays_deeper_than_the_limit() {
    let mut b = header(0, 1);
    gguf_string(&mut b, "t.nested");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..40 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.resize(b.len() + 64, 0);
    let e = open_err(&b);
    assert!(e.contains("t.nested") && e.contains("nested deeper"), "{e}");
}

/// More metadata values than any model holds: each would cost a 32-byte `Value` for one byte
/// of file, so the count is capped, not only checked against the bytes left.
#[test]
fn more_metadata_values_than_the_cap() {
    let n = MAX_METADATA_VALUES + 1;
    let mut b = header(0, 1);
    gguf_string(&mut b, "t.bytes");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // u8
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(b.len() + n as usize, 0);
    let e = open_err(&b);
    assert!(
        e.contains("t.bytes") && e.contains("metadata values"),
        "{e}"
    );
}

/// One tensor's bytes named many times (here: every layer's norm) would make each per-tensor
/// allocation repeat beyond what the file holds; tensors may not share data.
#[test]
fn tensors_sharing_data_are_refused() {
    let mut b = header(3, 0);
    for name in [
        "blk.0.attn_norm.weight",
        "blk.1.attn_norm.weight",
        "blk.2.attn_norm.weight",
    ] {
        gguf_string(&mut b, name);
        b.extend_from_slice(&1u32.to_le_bytes()); // n_dims
        b.extend_from_slice(&64u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes()); // offset 0 for all three
    }
    b.resize(b.len().div_ceil(32) * 32 + 256, 0);
    let e = open_err(&b);
    assert!(e.contains("overlaps") && e.contains("attn_norm"), "{e}");
}

/// A real tiny model opened from bytes reads like the file, and a config builds from it.
#[test]
fn real_tiny_model_from_bytes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/q8_0.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let a = GgufFile::open(&path).unwrap();
    let b = GgufFile::from_bytes(&path, &bytes).unwrap();
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.tensors.len(), b.tensors.len());
    assert_eq!(
        gguf_config(&a).unwrap().d_model,
        gguf_config(&b).unwrap().d_model
    );
}

/// A model-supplied chat template that loops for ever (or nearly) stops on fuel, at once.
#[test]
fn chat_template_that_loops_runs_out_of_fuel() {
    use edge_sft::tokenize::chat::{ChatTemplate, Message};
    let src =
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let start = Instant::now();
    let e = t.render(&[Message::new("user", "hi")], true).unwrap_err();
    assert!(
        start.elapsed().as_secs_f64() < 10.0,
        "{:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("fuel"), "{e}");
}

/// A template that prints big strings in a loop, or asks for a huge indent, gets an error before
/// it fills memory: each 1 MB line is within minijinja's repeat limit, and fuel allows 100,000
/// of them (100 GB); the output cap stops it at 8 MB. An indent of 10^9 spaces would be one
/// 1 GB allocation before any check of minijinja's own.
#[test]
fn chat_template_that_prints_without_bound_is_refused() {
    use edge_sft::tokenize::chat::{ChatTemplate, Message};
    let msgs = [Message::new("user", "hi")];
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let e = t.render(&msgs, true).unwrap_err();
    assert!(e.to_string().contains("printed more than 8 MB"), "{e}");
    for src in [
        "{{ messages[0].content | indent(1000000000) }}",
        "{{ messages[0].content | indent(width=1000000000, first=true) }}",
        "{{ messages | tojson(indent=1000000000) }}",
    ] {
        let t = ChatTemplate::new(src, None, None).unwrap();
        let e = t.render(&msgs, true).unwrap_err();
        assert!(
            e.to_string().contains("wider than the 64 allowed"),
            "{src}: {e}"
        );
    }
    // A list repeated 10^8 times is one instruction of fuel; printing it took 8.8 s before the
    // output cap (fuzz finding, a timeout), and `~` or `==` on it has no bound at all. `*` on
    // anything but numbers and string literals is refused when the template is loaded
    // (template_growth.rs); a value of over 10^6 items is not printed.
    for src in [
        "{{ 999 * messages * 100000000 }}",
        "{{999~90999*messages*999998 }}",
        "{{999999999090999*messages*999998 }}",
    ] {
        let e = ChatTemplate::new(src, None, None).err().expect(src);
        assert!(
            e.to_string().contains("`*` on a value that may be a list"),
            "{src}: {e}"
        );
    }
    let t = ChatTemplate::new(
        "{{ messages + messages }}{% set b = [messages] %}",
        None,
        None,
    )
    .unwrap();
    assert!(t.render(&msgs, true).is_ok());
    let t = ChatTemplate::new("{{ [[1, 2], {'a': 3}] }}", None, None).unwrap();
    assert_eq!(t.render(&msgs, true).unwrap(), "[[1, 2], {\"a\": 3}]");
    // A namespace that holds itself (fuzz findings): tojson would walk it for ever, and
    // minijinja's own `string`, `join`, `pprint`, `~` and `+` recurse through it until the
    // stack overflows (SIGSEGV, no artifact). Such a template is refused when it is loaded
    // (template_namespaces.rs), before anything renders.
    for show in [
        "ns | tojson",
        "[ns] | string",
        "[ns] | join",
        "[ns] | pprint",
        "ns ~ 'a'",
        "[ns] + [1]",
    ] {
        for store in [
            "{% set ns.s = ns %}",
            "{% set x = [ns] %}{% set ns.s = x %}",
        ] {
            let src = format!("{{% set ns = namespace(s='ab') %}}{store}{{{{ {show} }}}}");
            let e = ChatTemplate::new(&src, None, None).err().expect(&src);
            assert!(
                e.to_string()
                    .contains("may store a namespace into a namespace"),
                "{src}: {e}"
            );
        }
    }
    let t =
        ChatTemplate::new("{{ ['a', 'b'] | join(', ') }}|{{ 3 | string }}", None, None).unwrap();
    assert_eq!(t.render(&msgs, true).unwrap(), "a, b|3");
    // Real widths still work.
    let t = ChatTemplate::new("{{ messages | tojson(indent=2) }}", None, None).unwrap();
    assert!(t.render(&msgs, true).unwrap().contains("\n  {"));
}

/// A template nested deep in its source, `{{ 1+1+…+1 }}` 300,000 levels (600 KB): minijinja's
/// parser and compiler recurse once per level and overflowed an 8 MB stack at 50,000 (the
/// process gone). It now compiles on a thread with a large stack; a source over 1 MB is
/// refused.
#[test]
fn chat_template_nested_deep_in_its_source_compiles() {
    use edge_sft::tokenize::chat::{ChatTemplate, Message};
    let src = format!("{{{{ {}1 }}}}", "1+".repeat(300_000));
    let t = ChatTemplate::new(&src, None, None).unwrap();
    assert_eq!(
        t.render(&[Message::new("user", "hi")], true).unwrap(),
        "300001"
    );
    let src = format!("{{{{ {}1 }}}}", "1+".repeat(600_000));
    let e = ChatTemplate::new(&src, None, None).err().unwrap();
    assert!(e.to_string().contains("over the 1024 KB"), "{e}");
}

/// A template that recurses without end stops at the recursion limit, not a stack overflow.
#[test]
fn chat_template_that_recurses_hits_the_limit() {
    use edge_sft::tokenize::chat::{ChatTemplate, Message};
    let src = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let e = t.render(&[Message::new("user", "hi")], true).unwrap_err();
    assert!(e.to_string().contains("recursion"), "{e}");
}

/// A value nested 120,000 deep, built by a loop (fuzz finding, issue 16): minijinja drops and
/// prints values recursively, and this overflowed an 8 MB stack (SIGSEGV, the whole process
/// gone). Rendering now runs on a thread with a stack sized for the depth fuel allows. A stack
/// overflow aborts the process, so the render runs in a child (this test binary, running
/// `deeply_nested_value_child`), and the parent checks that the child finished.
#[test]
fn chat_template_that_nests_a_value_deeply_does_not_overflow() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "deeply_nested_value_child", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by chat_template_that_nests_a_value_deeply_does_not_overflow in a child"]
fn deeply_nested_value_child() {
    use edge_sft::tokenize::chat::{ChatTemplate, Message};
    let src = "{% set ns = namespace(x=[]) %}{% for i in range(12000) %}\
        {% set ns.x = [[[[[[[[[[ns.x]]]]]]]]]] %}{% endfor %}{{ ns.x }}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let out = t.render(&[Message::new("user", "hi")], true).unwrap();
    assert_eq!(out.len(), 2 * 120_001, "{}", &out[..64]);
}

/// A model whose own chat template is refused at load (here: a list repeated 10^9 times) is
/// still usable with `--template raw`; with the model's template, `eval` stops at once with an
/// error naming the model and the way out, and `inspect` says why.
#[test]
fn a_model_with_a_refused_template_says_so_and_works_with_raw() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/hf_f32");
    let dir = std::env::temp_dir().join(format!("edge_sft_refused_tpl_{}", std::process::id()));
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = model.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = "{{ messages * 1000000000 ~ 'x' }}".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let data = dir.join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a b\", \"response\": \"c d\"}\n").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
            .args(args)
            .output()
            .unwrap()
    };
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = run(&["eval", "--model", m, "--data", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(m) && err.contains("refused") && err.contains("--template raw"),
        "{err}"
    );
    let out = run(&["eval", "--model", m, "--data", d, "--template", "raw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["inspect", m]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("chat template unusable"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
