"""Check a Hugging Face folder `edge-sft merge --format hf` wrote, with transformers.

    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/merge_hf_check.py \
        --hf MERGED_HF_DIR --gguf MERGED_F32.gguf [--data examples/extract_test.jsonl]

transformers loads the folder (AutoModelForCausalLM, AutoTokenizer) and, independently, the f32
GGUF merge of the same adapter (`gguf_file=`: transformers' own dequantization and q/k
un-permutation). Checks: both tokenizers give the same ids for the chat-template rendering of a
few records; the folder's chat template renders them like the GGUF's; the logits of both models
agree to float32 summation order (relative max difference < 1e-4); and a tied base stays tied.
Exits non-zero on any failure.
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--hf", required=True)
p.add_argument("--gguf", required=True)
p.add_argument("--data", default="examples/extract_test.jsonl")
p.add_argument("--records", type=int, default=3)
args = p.parse_args()

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


gdir, gname = os.path.split(os.path.abspath(args.gguf))
tok_h = AutoTokenizer.from_pretrained(args.hf)
tok_g = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
m_h = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32, attn_implementation="eager").eval()
m_g = AutoModelForCausalLM.from_pretrained(
    gdir, gguf_file=gname, dtype=torch.float32, attn_implementation="eager"
).eval()

if m_h.config.tie_word_embeddings != m_g.config.tie_word_embeddings:
    fail(f"tie_word_embeddings {m_h.config.tie_word_embeddings} vs GGUF {m_g.config.tie_word_embeddings}")

records = [json.loads(l) for l in open(args.data) if l.strip()][: args.records]
worst = 0.0
for i, r in enumerate(records):
    if "messages" in r:
        msgs = r["messages"]
    else:
        prompt = r.get("prompt") or "\n\n".join(x for x in (r.get("instruction"), r.get("input")) if x)
        msgs = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": r.get("response") or r.get("completion") or r.get("output")},
        ]
    text_h = tok_h.apply_chat_template(msgs, tokenize=False)
    text_g = tok_g.apply_chat_template(msgs, tokenize=False)
    if text_h != text_g:
        fail(f"record {i}: chat template renders differently")
    ids_h = tok_h(text_h, add_special_tokens=False)["input_ids"]
    ids_g = tok_g(text_h, add_special_tokens=False)["input_ids"]
    if ids_h != ids_g:
        fail(f"record {i}: token ids differ ({len(ids_h)} vs {len(ids_g)})")
    with torch.no_grad():
        x = torch.tensor([ids_h])
        a = m_h(x).logits[0].double()
        b = m_g(x).logits[0].double()
    err = ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()
    worst = max(worst, err)
    print(f"record {i}: {len(ids_h)} tokens, logits max rel diff {err:.2e}")
    if err > 1e-4:
        fail(f"record {i}: logits differ by {err:.2e}")

print(f"HF folder vs f32 GGUF merge in transformers: worst logit difference {worst:.2e}")
print("OK" if not failures else f"{len(failures)} failures")
sys.exit(1 if failures else 0)
