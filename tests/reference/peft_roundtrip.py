#!/usr/bin/env python3
"""PEFT round trip on the real model: load the GGUF with transformers (dequantized, float32),
apply an adapter that `edge-sft tune` wrote with PEFT's own loader, score a held-out JSONL, and
compare per record with `edge-sft eval --adapter --per-example` (within 1e-3 relative).

This proves that the adapter's key names, shapes, scale and Q/K row order (Hugging Face order,
not GGUF's permuted one) are what PEFT expects.

usage: peft_roundtrip.py MODEL.gguf ADAPTER_DIR HELDOUT.jsonl EDGE_SFT_PER_EXAMPLE.jsonl
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import encode_record, score_ids  # noqa: E402
from golden_smollm2 import smollm_reference_pretokenizer  # noqa: E402


def main() -> int:
    model_path, adapter, data, ours_path = map(Path, sys.argv[1:5])
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    d, f = str(model_path.parent), model_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # SmolLM2's own pre-tokenizer splits digits (see golden_smollm2.py).
    tok.backend_tokenizer.pre_tokenizer = smollm_reference_pretokenizer(tok).pre_tokenizer
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    base.eval()
    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    encoded = [encode_record(tok, r) for r in records]
    base_scores = [score_ids(base, ids, mask)["sum_logprob"] for ids, mask in encoded]
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    peft_scores = [score_ids(model, ids, mask)["sum_logprob"] for ids, mask in encoded]

    ours = [json.loads(line) for line in ours_path.read_text().splitlines() if line.strip()]
    assert len(ours) == len(records), f"{len(ours)} edge-sft rows vs {len(records)} records"
    worst = 0.0
    for i, (o, p) in enumerate(zip(ours, peft_scores)):
        assert o["scored_tokens"] == sum(encoded[i][1]), f"record {i + 1}: scored token counts differ"
        rel = abs(o["sum_logprob"] - p) / max(abs(p), 1e-9)
        worst = max(worst, rel)
        if rel > 1e-3:
            print(f"record {i + 1}: edge-sft {o['sum_logprob']:.6f} vs PEFT {p:.6f} (rel {rel:.2e})")
    n = sum(sum(m) for _, m in encoded)
    sb, sp, so = sum(base_scores), sum(peft_scores), sum(o["sum_logprob"] for o in ours)
    print(f"records {len(records)}, scored tokens {n}")
    print(f"base  (transformers):          sum log Pr(y|x) {sb:.4f}, mean NLL {-sb / n:.4f}")
    print(f"adapter (transformers + PEFT): sum log Pr(y|x) {sp:.4f}, mean NLL {-sp / n:.4f}")
    print(f"adapter (edge-sft eval):       sum log Pr(y|x) {so:.4f}, mean NLL {-so / n:.4f}")
    print(f"worst per-record relative difference edge-sft vs PEFT: {worst:.2e}")
    ok = worst <= 1e-3 and abs(so - sp) / abs(sp) <= 1e-3
    print("PEFT round trip:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
