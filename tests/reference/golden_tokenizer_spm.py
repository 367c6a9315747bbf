#!/usr/bin/env python3
"""A tiny SentencePiece-style GGUF vocabulary and transformers' ids for it.

Writes tests/golden/tokenizer_spm_tiny.gguf (metadata only, no tensors: tokenizer.ggml.model
'llama', pieces with scores and no merges, byte-fallback tokens <0x00>..<0xFF>, control tokens,
a Llama-2 style chat template) and tests/golden/tokenizer_spm_tiny.json with
tok.encode(text, add_special_tokens=False) / tok.decode for a corpus and ids + scored spans for
the chat records of tests/golden/records_smollm2.jsonl (first 12 lines), by the same prefix
rule as golden_tokenizer.py (end-of-turn is EOS '</s>' here).

Run: /work/refenv/bin/python tests/reference/golden_tokenizer_spm.py
"""

import collections
import json
import os
import shutil
import tempfile

import gguf
from transformers import AutoTokenizer

from golden_tokenizer import model_mask, spans_of, to_messages

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden")
NAME = "tokenizer_spm_tiny.gguf"

TRAIN = (
    "the quick brown fox jumps over the lazy dog. the theory of everything is in the air; there "
    "they are, then and there. hello world, a man a plan a canal panama. what is the capital of "
    "france? the capital of france is paris. write a short poem about the sea and the sky. "
    "instruction input output response assistant user system answer question"
)

TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}\n"
    "  {% if m['role'] == 'user' %}\n"
    "    {% if loop.first and sys %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'].strip() + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}{% endif %}\n"
    "  {% elif m['role'] == 'assistant' %}\n"
    "    {{ ' ' + m['content'].strip() + ' ' + eos_token }}\n"
    "  {% else %}{{ raise_exception('roles must be user/assistant/system') }}{% endif %}\n"
    "{% endfor %}"
)

CORPUS = [
    "",
    "the theory",
    " leading space",
    "two  spaces   three",
    "  ",
    "Hello World",
    "line\nbreak\n\nand\ttab",
    "<s>[INST] hi [/INST] there </s>",
    "hello <|im_start|>world<|im_end|> x",
    "Grüße, ünïcödé: 日本語 🎉",
    "1234567 and 3.14",
    "what is the capital of france?",
    "<unk> is a token",
]


def write_gguf(path):
    text = "\u2581" + TRAIN.replace(" ", "\u2581")
    words = ["\u2581" + w for w in TRAIN.split(" ")]
    counts = collections.Counter(w[i : i + n] for w in words for n in range(2, 7) for i in range(len(w) - n + 1))
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["<|im_start|>", "<|im_end|>"]
    types = [2, 3, 3] + [6] * 256 + [3, 3]
    scores = [0.0] * len(tokens)
    for i, (piece, _) in enumerate(counts.most_common(300)):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(i))
    for i, c in enumerate(sorted(set(text))):
        if c not in tokens:
            tokens.append(c)
            types.append(1)
            scores.append(-1000.0 - i)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    tmp = tempfile.mkdtemp()
    try:
        write_gguf(os.path.join(tmp, NAME))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=NAME)
        shutil.copy(os.path.join(tmp, NAME), os.path.join(GOLDEN, NAME))
    finally:
        shutil.rmtree(tmp)
    corpus = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        corpus.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    records = []
    with open(os.path.join(GOLDEN, "records_smollm2.jsonl"), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if lineno > 12:
                break
            ids, mask = model_mask(tok, to_messages(json.loads(line)), tok.eos_token_id)
            records.append({"line": lineno, "ids": ids, "spans": spans_of(mask)})
    out = {
        "source": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=%r)" % NAME,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "add_bos": bool(getattr(tok, "add_bos_token", False)),
        "vocab_size": len(tok),
        "corpus": corpus,
        "records": records,
    }
    path = os.path.join(GOLDEN, "tokenizer_spm_tiny.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, "corpus", len(corpus), "records", len(records))


if __name__ == "__main__":
    main()
