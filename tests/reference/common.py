"""Helpers shared by make_tiny_models.py and golden_smollm2.py.

Record rendering and masking follow DESIGN.md: masks come from prefix rendering, never from
searching marker strings. Scoring uses transformers' float32 logits, reduced in float64.
"""

from __future__ import annotations

import torch

# SmolLM2-Instruct's ChatML template, byte for byte.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Byte for byte the GEMMA_TEMPLATE of src/tokenize/chat.rs (edge-sft's `--template gemma`, and
# its choice for a Gemma GGUF with no chat template): the instruction-tuned Gemma 3 turn format.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = "
    "messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}"
    "{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
    "(first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# A varied tokenizer corpus: unicode, emoji, digits, code, runs of whitespace, special tokens.
GOLDEN_TOKENIZE_TEXTS = [
    "Hello world",
    "The cat is on the mat, and the dog is in the garden.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand \r\n crlf",
    "In 2024, 1234567 people paid $3.50 each (12.5%).",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 and \u4e2d\u6587",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
    "emoji: \U0001f600\U0001f680 \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>plain text after a special token<|im_end|>",
    "I'm sure they'll say it's the BEST, isn't it? We've seen it.",
    "x\u00b2 + y\u00b2 = z\u00b2; \u00bd \u2153 \u2460 \u0663\u0664",
    "                                        many spaces",
    "a\u00a0non-breaking\u2003em-space\u200bzero-width",
    "",
]


def record_messages(rec: dict) -> list[dict]:
    """The three record shapes of DESIGN.md as chat messages."""
    if "messages" in rec:
        return [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    if "instruction" in rec:
        inp = rec.get("input", "")
        user = rec["instruction"] + ("\n\n" + inp if inp else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    response = rec["response"] if "response" in rec else rec["completion"]
    return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": response}]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def encode_record(tokenizer, rec: dict) -> tuple[list[int], list[int]]:
    """(ids, mask) by prefix rendering; mask[t] = 1 when token t is scored (predicted at t-1).

    Scored: from the first token after `<|im_start|>assistant\\n` through the `<|im_end|>` that
    closes that assistant turn, for every assistant turn. The '\\n' after it is not scored.
    """
    msgs = record_messages(rec)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = _ids(tokenizer, full)
    mask = [0] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = _ids(tokenizer, tokenizer.apply_chat_template(msgs[:i], tokenize=False,
                                                               add_generation_prompt=True))
        assert ids[: len(prefix)] == prefix, "prefix rendering does not tokenize as a prefix"
        end = ids.index(eos, len(prefix))
        # Cross-check the end of the turn against the rendering that stops after this turn.
        upto = _ids(tokenizer, tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False))
        assert ids[: len(upto)] == upto and upto[-2] == eos and end == len(upto) - 2
        assert end > len(prefix), "empty response"
        for t in range(len(prefix), end + 1):
            mask[t] = 1
    assert sum(mask) > 0
    return ids, mask


def fmt(x: float) -> float:
    """9 significant digits: an f32 value round-trips exactly, and the JSON stays short."""
    return float(format(float(x), ".9g"))


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of one sequence (positions 0.., no padding)."""
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, attention_mask=torch.ones_like(x))
    logits = out.logits[0]
    assert logits.dtype == torch.float32
    return logits


def sequence_golden(model, ids: list[int], subset: list[int]) -> dict:
    logits = logits_of(model, ids).double()
    lse = torch.logsumexp(logits, dim=-1)
    top2 = logits.topk(2, dim=-1).values
    return {
        "ids": ids,
        "logsumexp": [fmt(v) for v in lse.tolist()],
        "argmax": logits.argmax(dim=-1).tolist(),
        # top-1 minus top-2 logit: argmax comparisons are only meaningful where this is not tiny.
        "top2_margin": [fmt(v) for v in (top2[:, 0] - top2[:, 1]).tolist()],
        "logits_subset": [[fmt(v) for v in row] for row in logits[:, subset].tolist()],
    }


def score_ids(model, ids: list[int], mask: list[int]) -> dict:
    """Σ log Pr over scored tokens (response-only), and over every token after the first."""
    logp = torch.log_softmax(logits_of(model, ids).double(), dim=-1)
    tok = torch.tensor(ids[1:])
    per = logp[:-1].gather(1, tok[:, None])[:, 0]  # per[t-1] = log Pr(ids[t] | ids[:t])
    m = torch.tensor(mask[1:], dtype=torch.bool)
    assert mask[0] == 0
    return {
        "sum_logprob": fmt(per[m].sum().item()),
        "scored_tokens": int(m.sum().item()),
        "sum_logprob_all": fmt(per.sum().item()),
        "scored_tokens_all": len(ids) - 1,
    }


def score_records(model, tokenizer, records: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        ids, mask = encode_record(tokenizer, rec)
        out.append({"ids": ids, "mask": mask, **score_ids(model, ids, mask)})
    return out
