#!/usr/bin/env python3
"""Golden ids for the tiny reference models' tokenizers (tests/golden/tiny/{llama,qwen2}).

For each tiny model, transformers loads the tokenizer twice -- from the GGUF (q8_0.gguf:
tokenizer.ggml.pre 'smollm' / 'qwen2') and from the Hugging Face folder (hf_f32: tokenizer.json
+ tokenizer_config.json) -- and encodes the corpus of golden_tokenizer.py with
add_special_tokens=False. Writes tests/golden/tokenizer_tiny.json. Needs no real model.

Run: /work/refenv/bin/python tests/reference/golden_tokenizer_tiny.py
"""

import json
import os

from transformers import AutoTokenizer

from golden_tokenizer import CORPUS

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "golden", "tiny")
OUT = os.path.join(HERE, "..", "golden", "tokenizer_tiny.json")


def encode_all(tok):
    out = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    return out


def main():
    result = {}
    for name in ("llama", "qwen2"):
        d = os.path.join(TINY, name)
        gguf_tok = AutoTokenizer.from_pretrained(d, gguf_file="q8_0.gguf")
        hf_tok = AutoTokenizer.from_pretrained(os.path.join(d, "hf_f32"))
        result[name] = {
            "gguf": {"file": "q8_0.gguf", "bos_id": gguf_tok.bos_token_id, "eos_id": gguf_tok.eos_token_id,
                     "corpus": encode_all(gguf_tok)},
            "hf": {"dir": "hf_f32", "bos_id": hf_tok.bos_token_id, "eos_id": hf_tok.eos_token_id,
                   "corpus": encode_all(hf_tok)},
        }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
