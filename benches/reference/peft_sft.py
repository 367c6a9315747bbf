#!/usr/bin/env python3
"""PyTorch + PEFT supervised fine-tuning reference: what a user would otherwise run.

Loads the GGUF with transformers (gguf_file=, dequantized to float32), the tokenizer from the same
GGUF (its chat template is set to SmolLM2's ChatML, tests/reference/common.py CHATML_TEMPLATE, when
the GGUF carries none or a different one), applies PEFT LoRA r=8 alpha=16 dropout 0 on
q,k,v,o,gate,up,down, and trains on a JSONL file of records (prompt/response, instruction/input/
output or messages; encoded with common.encode_record: chat template, prefix-rendered mask, loss on
the assistant tokens through their <|im_end|> only).

Training: a plain loop over --epochs epochs; each epoch the records are shuffled with
random.Random(seed + epoch); --batch-size records per optimizer step (right-padded, attention mask
0 on padding); step loss = sum of the scored-token NLLs of the step / the number of scored tokens
of the step. AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), gradient norm clipped at 1.0.
Learning rate per step: lr*(step+1)/warmup for step < warmup, then lr*f(p) with
p = (step-warmup)/(total-warmup), f = 0.5*(1+cos(pi*p)) (cosine), 1-p (linear) or 1 (constant).

Before and after training, scores the --test file: mean NLL per scored response token over the
whole test set (sum of -log p over all scored tokens / total scored tokens; float32 logits, float64
log-softmax and reduction, one record at a time, no padding). Prints one JSON line and, with
--json-out PATH, appends it there.

Run (from the repository root):
  nice -n 10 /work/refenv/bin/python benches/reference/peft_sft.py \\
      --train benches/data/extract_train200.jsonl --test benches/data/extract_test.jsonl \\
      --batch-size 1 --epochs 2 --lr 2e-4 --schedule cosine --warmup 0 --threads 2 \\
      --json-out benches/results/peft_sft.jsonl
"""

import argparse
import json
import math
import os
import random
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))


def lr_at(step, total, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if a.schedule == "constant":
        return a.lr
    p = (step - a.warmup) / max(1, total - a.warmup)
    if a.schedule == "cosine":
        return a.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return a.lr * (1.0 - p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--train", required=True, help="training records (.jsonl)")
    ap.add_argument("--test", required=True, help="test records (.jsonl)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="cosine")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", help="append the result line to this file")
    ap.add_argument("--no-base", action="store_true", help="skip scoring the base model")
    a = ap.parse_args()

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(a.threads)
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common import CHATML_TEMPLATE, encode_record

    transformers.logging.set_verbosity_error()
    torch.manual_seed(a.seed)

    def load(path):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    d, fname = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    template_note = "gguf"
    if tok.chat_template != CHATML_TEMPLATE:
        template_note = "set" if not tok.chat_template else "replaced"
        tok.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32)

    train = [encode_record(tok, r) for r in load(a.train)]
    test = [encode_record(tok, r) for r in load(a.test)]
    print("peft_sft: %d train records (mean %.1f tokens, %.1f scored), %d test; template %s" % (
        len(train), sum(len(i) for i, _ in train) / len(train),
        sum(sum(m) for _, m in train) / len(train), len(test), template_note), file=sys.stderr)

    @torch.no_grad()
    def score(m):
        m.eval()
        nll, n = 0.0, 0
        for ids, mask in test:
            x = torch.tensor([ids])
            logits = m(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            per = logp[:-1].gather(1, x[0, 1:, None])[:, 0]
            sel = torch.tensor(mask[1:], dtype=torch.bool)
            nll -= per[sel].sum().item()
            n += int(sel.sum())
        return nll / n

    base_nll = None if a.no_base else score(model)
    if base_nll is not None:
        print("peft_sft: base test NLL %.5f" % base_nll, file=sys.stderr)

    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    per_epoch = math.ceil(len(train) / a.batch_size)
    total = per_epoch * a.epochs
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    model.train()
    step, t0, c0 = 0, time.perf_counter(), time.process_time()
    for epoch in range(a.epochs):
        order = list(range(len(train)))
        random.Random(a.seed + epoch).shuffle(order)
        for b in range(0, len(order), a.batch_size):
            batch = [train[i] for i in order[b:b + a.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            sel = torch.zeros((len(batch), width), dtype=torch.bool)
            for j, (i_, m_) in enumerate(batch):
                ids[j, :len(i_)] = torch.tensor(i_)
                att[j, :len(i_)] = 1
                sel[j, :len(m_)] = torch.tensor(m_, dtype=torch.bool)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, a)
            logits = model(input_ids=ids, attention_mask=att).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok_nll = -logp.gather(2, ids[:, 1:, None])[..., 0]
            s = sel[:, 1:]
            loss = tok_nll[s].sum() / s.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 25 == 0 or step == total:
                el = time.perf_counter() - t0
                print("peft_sft: step %d/%d loss %.4f lr %.3g %.3fs/step" % (
                    step, total, loss.item(), lr_at(step - 1, total, a), el / step),
                    file=sys.stderr)
    train_s = time.perf_counter() - t0
    train_cpu = time.process_time() - c0

    tuned_nll = score(model)
    out = {"data": a.train, "test": a.test, "records": len(train), "batch_size": a.batch_size,
           "epochs": a.epochs, "lr": a.lr, "schedule": a.schedule, "warmup": a.warmup,
           "steps": total, "base_nll": None if base_nll is None else round(base_nll, 6),
           "tuned_nll": round(tuned_nll, 6), "train_seconds": round(train_s, 2),
           # CPU seconds this process used while training: with --threads N and an idle machine
           # about N * train_seconds; much less means other processes competed for the cores.
           "train_cpu_seconds": round(train_cpu, 2),
           "threads": a.threads, "torch": torch.__version__, "peft": peft.__version__}
    line = json.dumps(out)
    print(line)
    if a.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
        with open(a.json_out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
