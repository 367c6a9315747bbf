//! Building a `tokenizers::Tokenizer` from GGUF tokenizer metadata.
//!
//! A GGUF carries no tokenizer.json: only the vocabulary (`tokenizer.ggml.tokens`), the merges,
//! per-token types and the name of a pre-tokenizer (`tokenizer.ggml.pre`). We rebuild the same
//! tokenizer that transformers builds from the same file (`integrations/gguf/
//! gguf_tokenizer_mapping.py`), as a tokenizer.json document that the `tokenizers` crate loads,
//! so our ids equal transformers' ids for `AutoTokenizer.from_pretrained(dir, gguf_file=...)`.
//!
//! One deliberate exception: `tokenizer.ggml.pre = "smollm"`. SmolLM2's original tokenizer.json
//! and llama.cpp (`LLAMA_VOCAB_PRE_TYPE_SMOLLM`: regex `\p{N}`, then GPT-2's) split every digit
//! before the byte-level regex, and the model was trained that way; transformers' GGUF converter
//! drops the digit step (a converter bug). We follow the original tokenizer and llama.cpp, so
//! "\n\n25" is `ĊĊ 2 5` (id 1116 for "\n\n"), where transformers' GGUF path gives `Ċ Ċ 2 5`.

use crate::error::{Error, Result};
use crate::format::gguf::Value;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama-3 split regex; transformers uses it for these `tokenizer.ggml.pre` names.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split regex: like Llama-3 but single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` name, or None for GPT-2's own ByteLevel regex
/// ('default', 'gpt2', 'smollm' and unknown names; 'smollm' also splits digits first, see
/// [`pre_tokenizer_json`]).
pub fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// The tokenizer.json `pre_tokenizer` for a `tokenizer.ggml.pre` name.
///
/// - a name with its own split regex: `Split(regex, Isolated)` then `ByteLevel(use_regex=false)`;
/// - 'smollm': `Digits(individual_digits)` then GPT-2's `ByteLevel(use_regex=true)`, as in
///   SmolLM2's tokenizer.json and llama.cpp, NOT as transformers' GGUF converter (which leaves
///   out `Digits`). The SmolLM vocabulary has no token holding a digit and another character,
///   so the digit step changes only the whitespace run before a digit, which GPT-2's regex
///   splits: "\n\n25" is `ĊĊ 2 5` (not `Ċ Ċ 2 5`), "a  1" is `a ĠĠ 1` (not `a Ġ Ġ 1`);
/// - anything else ('default', 'gpt2', unknown): GPT-2's `ByteLevel(use_regex=true)` alone.
pub fn pre_tokenizer_json(pre: &str) -> Json {
    let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    if let Some(re) = split_regex(pre) {
        return json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]});
    }
    match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            gpt2,
        ]}),
        _ => gpt2,
    }
}

/// GPT-2's byte → printable char table (`bytes_to_unicode` in transformers).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    table
}

/// Metadata accessors that accept any integer width, since writers differ.
pub fn md_int(md: &BTreeMap<String, Value>, key: &str) -> Option<i64> {
    md.get(key).and_then(value_int)
}

pub fn value_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x as i64,
        Value::I8(x) => x as i64,
        Value::U16(x) => x as i64,
        Value::I16(x) => x as i64,
        Value::U32(x) => x as i64,
        Value::I32(x) => x as i64,
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        Value::Bool(x) => x as i64,
        _ => return None,
    })
}

pub fn md_str<'a>(md: &'a BTreeMap<String, Value>, key: &str) -> Option<&'a str> {
    match md.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

pub fn md_bool(md: &BTreeMap<String, Value>, key: &str) -> Option<bool> {
    match md.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => value_int(v).map(|x| x != 0),
        None => None,
    }
}

/// A string array, or an error naming the key.
pub fn md_str_array<'a>(
    md: &'a BTreeMap<String, Value>,
    key: &str,
) -> Result<Option<Vec<&'a str>>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(Error::Tokenizer(format!(
                    "{key}: expected strings, found {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(Error::Tokenizer(format!(
            "{key}: expected an array, found {}",
            short(other)
        ))),
    }
}

fn md_int_array(md: &BTreeMap<String, Value>, key: &str) -> Result<Option<Vec<i64>>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                value_int(v).ok_or_else(|| Error::Tokenizer(format!("{key}: expected integers")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(Error::Tokenizer(format!(
            "{key}: expected an array, found {}",
            short(other)
        ))),
    }
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    s.chars().take(60).collect()
}

/// tokenizer.json text for a GGUF byte-level BPE vocabulary (`tokenizer.ggml.model == "gpt2"`).
pub fn byte_level_bpe_json(md: &BTreeMap<String, Value>) -> Result<String> {
    let tokens = md_str_array(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    let merges = md_str_array(md, "tokenizer.ggml.merges")?.ok_or_else(|| {
        Error::Tokenizer("GGUF byte-level BPE has no tokenizer.ggml.merges".into())
    })?;
    let types = md_int_array(md, "tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }

    // Tokens spelled outside the byte alphabet (a few writers store raw text) are respelled byte
    // by byte, as transformers does; a later duplicate key wins, as in a Python dict.
    let table = bytes_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| table.contains(&c));
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        let key = if in_alphabet(tok) {
            tok.to_string()
        } else {
            tok.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(key, json!(id));
    }

    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let mut it = m.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) => pairs.push(json!([a, b])),
            _ => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.merges[{i}] is not 'a b': {m:?}"
                )))
            }
        }
    }

    let added = added_tokens(md, &tokens, &types, &vocab, in_alphabet);

    let pre = md_str(md, "tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = pre_tokenizer_json(pre);

    let doc: Json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": pairs,
        },
    });
    Ok(doc.to_string())
}

/// Added tokens, as transformers' `add_gguf_special_tokens` makes them: control tokens and the
/// BOS/EOS/UNK/PAD tokens become special (so `<|im_start|>` in text stays whole); control
/// tokens `spelled_ok` rejects are llama.cpp mislabels and are skipped. User-defined tokens
/// become plain (non-special) added tokens when they are in the vocabulary.
fn added_tokens(
    md: &BTreeMap<String, Value>,
    tokens: &[&str],
    types: &[i64],
    vocab: &serde_json::Map<String, Json>,
    spelled_ok: impl Fn(&str) -> bool,
) -> Vec<Json> {
    let named: Vec<usize> = [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ]
    .iter()
    .filter_map(|k| md_int(md, k).and_then(|i| usize::try_from(i).ok()))
    .collect();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        let special = match ty {
            TOKEN_TYPE_CONTROL if spelled_ok(tok) => true,
            TOKEN_TYPE_USER_DEFINED if vocab.contains_key(*tok) => false,
            _ if named.contains(&id) && spelled_ok(tok) => true,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    added
}

/// tokenizer.json text for a GGUF SentencePiece vocabulary (`tokenizer.ggml.model == "llama"`),
/// as transformers' `LlamaTokenizer` builds it: BPE with byte fallback over the pieces as
/// spelled (`▁` for spaces), merges from the file or derived from the piece scores, a Metaspace
/// pre-tokenizer that prepends `▁` to the first section, and no normalizer.
pub fn sentencepiece_bpe_json(md: &BTreeMap<String, Value>) -> Result<String> {
    let arch = md_str(md, "general.architecture").unwrap_or("llama");
    let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
    if matches!(arch, "phi3") {
        return Err(Error::Tokenizer(format!(
            "SentencePiece GGUF vocabularies of architecture '{arch}' are not supported yet"
        )));
    }
    let tokens = md_str_array(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    if gemma {
        return gemma_bpe_json(md, &tokens);
    }
    let types = md_int_array(md, "tokenizer.ggml.token_type")?.unwrap_or_default();
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
    }
    let merges: Vec<Json> = match md_str_array(md, "tokenizer.ggml.merges")? {
        Some(list) => list
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                json!([a, b])
            })
            .collect(),
        None => {
            let scores = md_f32_array(md, "tokenizer.ggml.scores")?.ok_or_else(|| {
                Error::Tokenizer(
                    "GGUF SentencePiece vocabulary has neither merges nor scores".into(),
                )
            })?;
            if scores.len() != tokens.len() {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.scores has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            merges_from_scores(&tokens, &scores, &vocab)
                .into_iter()
                .map(|(a, b)| json!([a, b]))
                .collect()
        }
    };
    let added = added_tokens(md, &tokens, &types, &vocab, |_| true);
    let doc: Json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    Ok(doc.to_string())
}

/// tokenizer.json text for a Gemma GGUF vocabulary, as transformers' GGUF loader builds
/// `GemmaTokenizer` from it: tokens made only of spaces are respelled with `▁`; merges derived
/// from the vocabulary ranked by position in the file (Gemma's scores do not follow merge
/// order); a normalizer turning spaces into `▁` and no prefix space; byte fallback; `<unk>` as
/// the unknown token.
fn gemma_bpe_json(md: &BTreeMap<String, Value>, raw: &[&str]) -> Result<String> {
    let respelled: Vec<String> = raw
        .iter()
        .map(|t| {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let tokens: Vec<&str> = respelled.iter().map(String::as_str).collect();
    let types = md_int_array(md, "tokenizer.ggml.token_type")?.unwrap_or_default();
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
    }
    let rank: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
    let merges: Vec<Json> = merges_from_scores(&tokens, &rank, &vocab)
        .into_iter()
        .map(|(a, b)| json!([a, b]))
        .collect();
    let added = added_tokens(md, &tokens, &types, &vocab, |_| true);
    let unk = if vocab.contains_key("<unk>") {
        json!("<unk>")
    } else {
        Json::Null
    };
    let doc: Json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    Ok(doc.to_string())
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every piece into two
/// pieces of the vocabulary is a merge; merges rank by the piece's score, then by the lengths
/// of the two halves, best first (stable, like Python's `sorted(..., reverse=True)`).
fn merges_from_scores<'a>(
    tokens: &[&'a str],
    scores: &[f32],
    vocab: &serde_json::Map<String, Json>,
) -> Vec<(&'a str, &'a str)> {
    // A hash index of the vocabulary (the JSON map is ordered: slow for 262k-piece Gemma).
    let index: std::collections::HashMap<&str, u64> = vocab
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_u64()?)))
        .collect();
    let id = |s: &str| index.get(s).copied();
    // dict(zip(tokens, scores)): first position of each piece, last score.
    let mut order: Vec<(&str, f32)> = Vec::with_capacity(tokens.len());
    let mut pos = std::collections::HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        match pos.get(t) {
            Some(&i) => order[i] = (*t, s),
            None => {
                pos.insert(*t, order.len());
                order.push((*t, s));
            }
        }
    }
    // (left, right, score, chars(left), chars(right))
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for (piece, score) in order {
        let mut local: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
        let n_chars = piece.chars().count();
        for (k, (b, _)) in piece.char_indices().skip(1).enumerate() {
            let (l, r) = piece.split_at(b);
            if id(l).is_some() && id(r).is_some() {
                local.push((l, r, score, k + 1, n_chars - k - 1));
            }
        }
        local.sort_by_key(|m| (id(m.0), id(m.1)));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        (b.2, b.3, b.4)
            .partial_cmp(&(a.2, a.3, a.4))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges.into_iter().map(|m| (m.0, m.1)).collect()
}

fn md_f32_array(md: &BTreeMap<String, Value>, key: &str) -> Result<Option<Vec<f32>>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match *v {
                Value::F32(x) => Ok(x),
                Value::F64(x) => Ok(x as f32),
                ref other => value_int(other)
                    .map(|x| x as f32)
                    .ok_or_else(|| Error::Tokenizer(format!("{key}: expected numbers"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(Error::Tokenizer(format!(
            "{key}: expected an array, found {}",
            short(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'\t' as usize], 'ĉ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xad], 'Ń');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256, "table must be a bijection");
    }

    /// Every pre-tokenizer regex compiles in the tokenizers crate (onig) and byte-level
    /// round-trips text, on a vocabulary of the 256 byte tokens plus one merge.
    #[test]
    fn every_pre_tokenizer_builds_and_round_trips() {
        let table = bytes_to_unicode();
        let mut tokens: Vec<Value> = vec![Value::String("<|im_end|>".into())];
        tokens.extend(table.iter().map(|c| Value::String(c.to_string())));
        tokens.push(Value::String("he".into()));
        let n = tokens.len();
        for pre in [
            "default",
            "smollm",
            "llama-bpe",
            "qwen2",
            "qwen35",
            "tekken",
            "gpt-4o",
        ] {
            let mut md = BTreeMap::new();
            md.insert("tokenizer.ggml.pre".to_string(), Value::String(pre.into()));
            md.insert(
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.clone()),
            );
            let mut types = vec![Value::I32(1); n];
            types[0] = Value::I32(TOKEN_TYPE_CONTROL as i32);
            md.insert("tokenizer.ggml.token_type".to_string(), Value::Array(types));
            md.insert(
                "tokenizer.ggml.merges".to_string(),
                Value::Array(vec![Value::String("h e".into())]),
            );
            let json = byte_level_bpe_json(&md).unwrap();
            let tok: tokenizers::Tokenizer = json.parse().unwrap();
            let text = "Hello, the world!  It's 12345 — ünï 日本 🎉\n\tend<|im_end|>";
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(*ids.last().unwrap(), 0, "{pre}: control token kept whole");
            assert!(ids.contains(&(n as u32 - 1)), "{pre}: merge 'h e' applied");
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
        }
    }

    #[test]
    fn pre_names() {
        assert!(split_regex("smollm").is_none());
        assert!(split_regex("gpt2").is_none());
        assert_eq!(split_regex("llama-bpe"), Some(LLAMA3_SPLIT));
        assert_eq!(split_regex("qwen2"), Some(QWEN2_SPLIT));
        let gpt2 = pre_tokenizer_json("gpt2");
        assert_eq!(gpt2["type"], "ByteLevel");
        assert_eq!(pre_tokenizer_json("default"), gpt2);
        let smollm = pre_tokenizer_json("smollm");
        assert_eq!(smollm["pretokenizers"][0]["type"], "Digits");
        assert_eq!(smollm["pretokenizers"][1], gpt2);
    }

    /// 'smollm' splits digits before GPT-2's regex (SmolLM2's tokenizer.json, llama.cpp), so a
    /// whitespace run before a digit stays whole; 'gpt2' splits its last space off.
    #[test]
    fn smollm_splits_digits_first() {
        let table = bytes_to_unicode();
        let mut tokens: Vec<Value> = table.iter().map(|c| Value::String(c.to_string())).collect();
        tokens.push(Value::String("ĊĊ".into())); // id 256
        tokens.push(Value::String("ĠĠ".into())); // id 257
        let merges = vec![Value::String("Ċ Ċ".into()), Value::String("Ġ Ġ".into())];
        let build = |pre: &str| -> tokenizers::Tokenizer {
            let mut md = BTreeMap::new();
            md.insert("tokenizer.ggml.pre".to_string(), Value::String(pre.into()));
            md.insert(
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.clone()),
            );
            md.insert(
                "tokenizer.ggml.merges".to_string(),
                Value::Array(merges.clone()),
            );
            byte_level_bpe_json(&md).unwrap().parse().unwrap()
        };
        let ids = |tok: &tokenizers::Tokenizer, text: &str| -> Vec<u32> {
            tok.encode(text, false).unwrap().get_ids().to_vec()
        };
        let id = |c: char| table.iter().position(|&t| t == c).unwrap() as u32;
        let (smollm, gpt2) = (build("smollm"), build("gpt2"));
        assert_eq!(ids(&smollm, "\n\n25"), [256, id('2'), id('5')]);
        assert_eq!(ids(&gpt2, "\n\n25"), [id('Ċ'), id('Ċ'), id('2'), id('5')]);
        assert_eq!(ids(&smollm, "a  1"), [id('a'), 257, id('1')]);
        assert_eq!(ids(&gpt2, "a  1"), [id('a'), id('Ġ'), id('Ġ'), id('1')]);
        assert_eq!(
            smollm.decode(&ids(&smollm, "x  123\n\n4"), false).unwrap(),
            "x  123\n\n4"
        );
    }
}
