#!/usr/bin/env python3
"""PyTorch + PEFT LoRA training-step benchmark: what a user would otherwise run.

Loads the GGUF with transformers (gguf_file=, dequantized to float32 nn.Linear weights; with
--dtype bf16 the frozen base is then cast to bfloat16), applies PEFT LoRA r=8 alpha=16 on
q,k,v,o,gate,up,down (dropout 0; PEFT keeps the adapter weights in float32 for a bf16 base),
and trains with AdamW (lr 2e-4, no weight decay, gradient norm clipped to 1, as edge-sft's
defaults) on the records of a seqSEQ.ids.jsonl file written by bench_data.py: one record per
optimizer step (or --records-per-step of them, batched), loss on response tokens only (labels
-100 on the prompt).

Measures each optimizer step (forward, backward, clip, AdamW step, zero_grad) with a wall
clock. tokens/s of a step = all tokens of the step / step time; the reported figure is the
median over the steps after --warmup warm-up steps. Peak RSS is getrusage(RUSAGE_SELF).ru_maxrss
of this process at the end (it includes the GGUF dequantization while loading; "rss_loaded_mb"
is the RSS once the model is ready, before the first step).

Prints one JSON line. Run (from the repository root):
  python benches/reference/peft_bench.py --model models/X.gguf --ids seq256.ids.jsonl \\
      --steps 5 --threads 2 [--dtype fp32|bf16]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings


def rss_mb():
    """Current resident set size, from /proc (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def cpu_line():
    """The machine-wide "cpu" line of /proc/stat as jiffies, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None


def other_cores(stat0, stat1, own_s, wall_s):
    """CPU time other processes used meanwhile, in cores (busy machine time minus ours / wall)."""
    if stat0 is None or stat1 is None or wall_s <= 0:
        return None
    d = [y - x for x, y in zip(stat0, stat1)]
    busy = (d[0] + d[1] + d[2] + d[5] + d[6] + d[7]) / os.sysconf("SC_CLK_TCK")
    return round(max(0.0, busy - own_s) / wall_s, 2)


def own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the .gguf file")
    ap.add_argument("--ids", required=True, help="seqSEQ.ids.jsonl from bench_data.py")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="frozen base weights and activations; LoRA weights stay float32")
    ap.add_argument("--records-per-step", type=int, default=1)
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the GPU check of issue 18)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop early once the steps took this long (0 = never), after at least "
                         "--warmup + 1 steps; the steps run are reported")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        raise SystemExit("peft_bench: --steps must be larger than --warmup")

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(a.threads)
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    with open(a.ids) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    need = a.steps * a.records_per_step
    recs = [recs[i % len(recs)] for i in range(need)]
    seq = len(recs[0]["ids"])
    if any(len(r["ids"]) != seq for r in recs):
        raise SystemExit("peft_bench: records of different lengths in %s" % a.ids)

    t0 = time.perf_counter()
    d, fname = os.path.split(os.path.abspath(a.model))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32,
                                                 attn_implementation=a.attn)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    dev = torch.device(a.device)
    model = model.to(dev)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    lora_dtype = str(params[0].dtype).replace("torch.", "")
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()

    times, losses, scored = [], [], []
    stat0, cpu0, wall0 = cpu_line(), own_cpu_s(), time.perf_counter()
    for step in range(a.steps):
        if a.max_seconds and step > a.warmup and sum(times) > a.max_seconds:
            break
        batch = recs[step * a.records_per_step:(step + 1) * a.records_per_step]
        ids = torch.tensor([r["ids"] for r in batch], dtype=torch.long, device=dev)
        labels = torch.tensor([r["labels"] for r in batch], dtype=torch.long, device=dev)
        t = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are queued, not done, until here
        times.append(time.perf_counter() - t)
        losses.append(float(out.loss))
        # transformers shifts labels by one: the first token's label is never scored.
        scored.append(int((labels[:, 1:] != -100).sum()))
        print("peft_bench: step %d/%d loss %.4f %.0f tok/s" %
              (step + 1, a.steps, losses[-1], ids.numel() / times[-1]), file=sys.stderr)

    own_s, wall_s = own_cpu_s() - cpu0, time.perf_counter() - wall0
    others = other_cores(stat0, cpu_line(), own_s, wall_s)
    tokens = seq * a.records_per_step
    tps = [tokens / t for t in times]
    print(json.dumps({
        "impl": "pytorch+peft",
        "dtype": a.dtype,
        "lora_dtype": lora_dtype,
        "attn": a.attn,
        "seq": seq,
        "records_per_step": a.records_per_step,
        "tokens_per_step": tokens,
        "scored_tokens_per_step": scored,
        "threads": a.threads,
        "steps": len(times),
        "warmup": a.warmup,
        "tokens_per_s": statistics.median(tps[a.warmup:]),
        "tokens_per_s_steps": [round(x, 2) for x in tps],
        "step_s": [round(x, 4) for x in times],
        "loss": [round(x, 5) for x in losses],
        "trainable_params": n_train,
        "load_s": round(load_s, 2),
        "rss_loaded_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "torch_threads": torch.get_num_threads(),
        "device": a.device,
        "peak_device_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                     if dev.type == "cuda" else None),
        # Over the training steps only: CPU seconds this process used per wall second, and what
        # other processes used meanwhile (in cores); see benches/README.md.
        "own_cpu_cores_steps": round(own_s / wall_s, 2),
        "other_cores_steps": others,
    }))


if __name__ == "__main__":
    main()
