#!/usr/bin/env python3
"""Golden scores and greedy generations for the real Gemma 3 270M (base) Q4_K_M GGUF (issue 11).

The model and its tokenizer both come from the GGUF file (scripts/fetch_gemma3.sh), loaded by
transformers (gguf_file=, dequantized to float32, eager attention). The base model has no chat
template: records are rendered with the instruction-tuned Gemma 3 turn format (GEMMA_TEMPLATE,
the same text as edge-sft's built-in `--template gemma`). Run from the repository root:

    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/golden_gemma3.py [models/gemma-3-270m-q4_k_m.gguf]

Reads tests/golden/eval_smollm2.jsonl (26 varied records). Writes tests/golden/gemma3_eval.json
(ids, masks and Σ log Pr(y|x) per record, both objectives) and tests/golden/gemma3_generate.json
(greedy generations, 24 new tokens, 4 prompts, with the top-1 − top-2 logit margins).

Masks: prefix rendering as everywhere (tests/reference/README.md); the scored span of an
assistant turn runs from the first token after `<start_of_turn>model\\n` through the
`<end_of_turn>` that closes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GEMMA_TEMPLATE, fmt, logits_of, record_messages, score_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
DEFAULT_MODEL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
torch.set_num_threads(2)

GENERATE_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Explain in a few sentences how a bicycle works."}],
    [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give me some tips for sleeping better."}],
]
NEW_TOKENS = 24


def render(tok, msgs, gen: bool) -> list[int]:
    text = tok.apply_chat_template(msgs, chat_template=GEMMA_TEMPLATE, tokenize=False,
                                   add_generation_prompt=gen)
    return list(tok(text, add_special_tokens=False).input_ids)


def encode(tok, rec: dict) -> tuple[list[int], list[int]]:
    msgs = record_messages(rec)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    ids = render(tok, msgs, False)
    mask = [0] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = render(tok, msgs[:i], True)
        through = render(tok, msgs[: i + 1], False)
        assert ids[: len(start)] == start and ids[: len(through)] == through
        span = ids[len(start): len(through)]
        end = len(start) + len(span) - span[::-1].index(eot)  # through the closing <end_of_turn>
        for t in range(len(start), end):
            mask[t] = 1
    mask[0] = 0
    return ids, mask


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
    d, f = str(path.parent), path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    c = model.config
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    print(f"config: layers {c.num_hidden_layers} hidden {c.hidden_size} heads {c.num_attention_heads}/"
          f"{c.num_key_value_heads} head_dim {c.head_dim} window {c.sliding_window} "
          f"qpas {c.query_pre_attn_scalar} rope {c.rope_parameters} layer_types {c.layer_types}")
    assert c.query_pre_attn_scalar == c.head_dim, "llama.cpp scales by 1/sqrt(head_dim)"
    assert tok.bos_token == "<bos>"
    records = [json.loads(line) for line in (GOLDEN / "eval_smollm2.jsonl").read_text().splitlines()
               if line.strip()]
    per = []
    for i, rec in enumerate(records):
        ids, mask = encode(tok, rec)
        s = score_ids(model, ids, mask)
        per.append({"line": i + 1, "ids": ids, "mask": mask, **s})
        print(f"record {i + 1}: {len(ids)} tokens, {s['scored_tokens']} scored, "
              f"sum_logprob {s['sum_logprob']:.4f}")
    out = {
        "model": path.name,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "template": "GEMMA_TEMPLATE (edge-sft --template gemma)",
        "reference": f"transformers {transformers.__version__} (gguf_file=, dequantized), float32 "
                     f"eager forward, log-softmax in float64; torch {torch.__version__}",
        "data": "tests/golden/eval_smollm2.jsonl",
        "records": per,
    }
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    (GOLDEN / "gemma3_eval.json").write_text(text.replace('{"line"', '\n{"line"') + "\n")

    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    eos = tok.eos_token_id
    gens = []
    for msgs in GENERATE_PROMPTS:
        ids = render(tok, msgs, True)
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                               do_sample=False, eos_token_id=[eos, eot], pad_token_id=eos)
        new = y[0, len(ids):].tolist()
        full = logits_of(model, ids + new)[len(ids) - 1: len(ids) - 1 + len(new)]
        top2 = full.topk(2, dim=-1).values
        assert full.argmax(dim=-1).tolist() == new, "cached greedy run disagrees with a full forward"
        gens.append({"messages": msgs, "prompt_ids": ids, "generated_ids": new,
                     "top2_margin": [fmt(v) for v in (top2[:, 0] - top2[:, 1]).tolist()],
                     "text": tok.decode(new, skip_special_tokens=False)})
        print(f"generate: {gens[-1]['text']!r}")
    gen_out = {"model": path.name, "max_new_tokens": NEW_TOKENS, "stop_ids": [eos, eot],
               "reference": out["reference"], "prompts": gens}
    text = json.dumps(gen_out, separators=(",", ":"), ensure_ascii=False)
    (GOLDEN / "gemma3_generate.json").write_text(text.replace('{"messages"', '\n{"messages"') + "\n")


if __name__ == "__main__":
    main()
