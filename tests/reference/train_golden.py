#!/usr/bin/env python3
"""Golden values for LoRA training on the tiny models: one-step gradients and AdamW trajectories.

Run from the repository root, after make_tiny_models.py (and make_tiny_archs.py):

    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/train_golden.py [ARCH ...]

(default: llama qwen2; the issue-11 architectures are gemma3 and qwen3)

What it writes, for arch in llama, qwen2 (layout in tests/reference/README.md, "Training golden"):

    tests/golden/tiny/{arch}/train_init/         PEFT LoRA adapter (r=4, alpha=8), the start point
    tests/golden/tiny/{arch}/train_golden.json   loss + every LoRA gradient (hf_f32 and q8_0 bases,
                                                 loss on response / on all), two 20-step AdamW runs

Loss (the one edge-sft trains on): the 4 records of tests/golden/tiny/records.jsonl form ONE batch,
each record run as its own sequence (positions from 0, no padding); loss = Σ_records Σ_scored t
−log softmax(logits[t−1])[ids[t]] / (scored tokens over the 4 records). Float32 autograd.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "golden" / "tiny"
ARCHS = ["llama", "qwen2"]
# How transformers must load each tiny GGUF to run it as llama.cpp does (make_tiny_archs.py).
GGUF_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": 16}, "qwen3": {"head_dim": 16},
                  "llama3": {"head_dim": 16, "rope_parameters": {
                      "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}}

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INIT_SEED = 1234
B_STD = 0.05
STEPS = 20
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WD2 = 0.01
CLIP2 = 1.0
WARMUP = 3


def schedule() -> list[float]:
    """Per-step lr of the second trajectory: linear warmup over 3 steps, then cosine to 0."""
    out = []
    for s in range(STEPS):
        if s < WARMUP:
            out.append(LR * (s + 1) / WARMUP)
        else:
            out.append(LR * 0.5 * (1.0 + math.cos(math.pi * (s - WARMUP) / (STEPS - WARMUP))))
    return out


def fmt(x: float) -> float:
    """9 significant digits: a float32 value round-trips exactly."""
    return float(format(float(x), ".9g"))


def nested(t: torch.Tensor):
    return [[fmt(v) for v in row] for row in t.detach().to(torch.float32).tolist()]


def load_base(arch: str, base: str):
    if base == "hf_f32":
        m = AutoModelForCausalLM.from_pretrained(TINY / arch / "hf_f32", dtype=torch.float32,
                                                 attn_implementation="eager")
    elif base == "q8_0":
        # transformers dequantizes to float32 and undoes llama.cpp's Q/K row permutation, so the
        # model (and PEFT's lora_B rows) are in Hugging Face order.
        m = AutoModelForCausalLM.from_pretrained(TINY / arch, gguf_file="q8_0.gguf", dtype=torch.float32,
                                                 attn_implementation="eager",
                                                 **GGUF_OVERRIDES.get(arch, {}))
        assert isinstance(m.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    else:
        raise ValueError(base)
    m.eval()  # no dropout anywhere (attention_dropout 0, lora_dropout 0): eval == train here
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def peft_key(name: str) -> str:
    """PEFT parameter name -> key in adapter_model.safetensors (save_pretrained drops '.default')."""
    assert ".default." in name, name
    return name.replace(".default.", ".")


def lora_params(pm) -> list[tuple[str, torch.nn.Parameter]]:
    """(safetensors key, parameter) for every LoRA tensor, sorted by key."""
    out = [(peft_key(n), p) for n, p in pm.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for _, p in out)
    assert sum(p.requires_grad for p in pm.parameters()) == len(out)
    return sorted(out, key=lambda kv: kv[0])


def make_init(arch: str) -> None:
    """tests/golden/tiny/{arch}/train_init/: PEFT kaiming A, random nonzero B (normal, std 0.05)."""
    base = load_base(arch, "hf_f32")
    torch.manual_seed(INIT_SEED)  # PEFT draws lora_A (kaiming_uniform, a=sqrt(5)) from this
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=list(TARGETS))
    pm = get_peft_model(base, cfg)
    with torch.no_grad():
        for key, p in lora_params(pm):
            if ".lora_B." in key:
                assert torch.count_nonzero(p) == 0  # PEFT's default B is zero
                p.copy_(B_STD * torch.randn(p.shape))  # same global generator, in key order
            else:
                assert torch.count_nonzero(p) == p.numel()
    out = TINY / arch / "train_init"
    if out.exists():
        shutil.rmtree(out)
    pm.save_pretrained(out, safe_serialization=True)
    acfg_path = out / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = f"tests/golden/tiny/{arch}/hf_f32"
    acfg["target_modules"] = sorted(acfg["target_modules"])  # PEFT writes a set: fix the order
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()
    # The file holds exactly our parameters, float32, under the keys we use in the JSON.
    saved = load_file(str(out / "adapter_model.safetensors"))
    params = dict(lora_params(pm))
    assert sorted(saved) == sorted(params), (sorted(saved)[:3], sorted(params)[:3])
    for k, v in saved.items():
        assert v.dtype == torch.float32 and torch.equal(v, params[k].detach()), k


def load_trainable(arch: str, base: str):
    pm = PeftModel.from_pretrained(load_base(arch, base), TINY / arch / "train_init", is_trainable=True)
    pm.eval()
    saved = load_file(str(TINY / arch / "train_init" / "adapter_model.safetensors"))
    params = lora_params(pm)
    assert [k for k, _ in params] == sorted(saved)
    for k, p in params:
        assert torch.equal(p.detach(), saved[k]), k
    return pm, params


def records(arch: str) -> list[dict]:
    golden = json.loads((TINY / arch / "golden.json").read_text())
    recs = golden["variants"]["hf_f32"]["records"]
    # Every variant tokenizes the records the same way (with the tokenizer.json tokenizer).
    assert all(v["records"][i]["ids"] == r["ids"] for v in golden["variants"].values()
               for i, r in enumerate(recs))
    assert len(recs) == 4
    return [{"ids": r["ids"], "mask": r["mask"]} for r in recs]


def masks(recs: list[dict], mode: str) -> list[list[int]]:
    if mode == "response":
        return [r["mask"] for r in recs]
    assert mode == "all"
    return [[0] + [1] * (len(r["ids"]) - 1) for r in recs]


def batch_loss(pm, recs: list[dict], mode: str) -> tuple[torch.Tensor, float]:
    """(float32 loss with autograd, the same loss reduced in float64 from the float32 logits)."""
    ms = masks(recs, mode)
    n = sum(sum(m[1:]) for m in ms)
    total = torch.zeros((), dtype=torch.float32)
    total64 = 0.0
    for r, m in zip(recs, ms):
        assert m[0] == 0
        x = torch.tensor([r["ids"]], dtype=torch.long)
        logits = pm(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]  # [T, vocab]
        assert logits.dtype == torch.float32
        logp = torch.log_softmax(logits[:-1], dim=-1)  # row t-1 predicts ids[t]
        tgt = torch.tensor(r["ids"][1:])
        sel = torch.tensor(m[1:], dtype=torch.bool)
        nll = -logp.gather(1, tgt[:, None])[:, 0]  # [T-1]
        total = total + nll[sel].sum()
        with torch.no_grad():
            lp64 = torch.log_softmax(logits[:-1].double(), dim=-1)
            total64 += -lp64.gather(1, tgt[:, None])[:, 0][sel].sum().item()
    return total / n, total64 / n


def check_against_golden(arch: str, pm, recs: list[dict]) -> None:
    """batch_loss on the base model alone == golden.json's hf_f32 record scores (same loss definition)."""
    golden = json.loads((TINY / arch / "golden.json").read_text())["variants"]["hf_f32"]["records"]
    with torch.no_grad(), pm.disable_adapter():
        for mode, key, nkey in [("response", "sum_logprob", "scored_tokens"),
                                ("all", "sum_logprob_all", "scored_tokens_all")]:
            _, loss64 = batch_loss(pm, recs, mode)
            want = -sum(r[key] for r in golden) / sum(r[nkey] for r in golden)
            assert abs(loss64 - want) < 1e-6 * abs(want), (arch, mode, loss64, want)


def grad_norm(params) -> float:
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad.detach(), 2.0) for _, p in params]), 2.0).item()


def one_step(arch: str, base: str, recs: list[dict]) -> dict:
    out = {}
    for mode in ["response", "all"]:
        pm, params = load_trainable(arch, base)
        loss, loss64 = batch_loss(pm, recs, mode)
        loss.backward()
        out[mode] = {
            "loss": fmt(loss.item()),
            "loss_f64": fmt(loss64),
            "scored_tokens": sum(sum(m[1:]) for m in masks(recs, mode)),
            "grad_norm": fmt(grad_norm(params)),
            "grads": {k: nested(p.grad) for k, p in params},
        }
        print(f"{arch} {base} {mode}: loss {loss.item():.6f} grad norm {out[mode]['grad_norm']:.6f}")
    return out


def trajectory(arch: str, recs: list[dict], weight_decay: float, clip: float | None,
               lrs: list[float]) -> tuple[dict, dict]:
    """(summary for the JSON, final params by key)."""
    pm, params = load_trainable(arch, "hf_f32")
    plist = [p for _, p in params]
    opt = torch.optim.AdamW(plist, lr=lrs[0], betas=BETAS, eps=EPS, weight_decay=weight_decay)
    losses, norms = [], []
    for s in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lrs[s]
        opt.zero_grad(set_to_none=True)
        loss, _ = batch_loss(pm, recs, "response")
        loss.backward()
        losses.append(fmt(loss.item()))
        if clip is not None:
            # Returns the total norm before clipping; scales by clip / (norm + 1e-6) if above clip.
            norms.append(fmt(torch.nn.utils.clip_grad_norm_(plist, clip).item()))
        else:
            norms.append(fmt(grad_norm(params)))
        opt.step()
    with torch.no_grad():
        final_loss, _ = batch_loss(pm, recs, "response")
    final = {k: p.detach().clone() for k, p in params}
    summary = {
        "losses": losses,
        "grad_norms": norms,
        "loss_after": fmt(final_loss.item()),
        "clipped": [clip is not None and n > clip for n in norms],
        "final_sum": {k: fmt(v.double().sum().item()) for k, v in final.items()},
        "final_l2": {k: fmt(torch.linalg.vector_norm(v.double()).item()) for k, v in final.items()},
    }
    print(f"{arch} trajectory wd={weight_decay} clip={clip}: {losses[0]:.5f} -> {losses[-1]:.5f}"
          f" (after: {summary['loss_after']:.5f})")
    return summary, final


LOSS_DEF = ("all records form one batch; each record is its own sequence (positions from 0, no "
            "padding); loss = sum over records and scored t of -log softmax(logits[t-1])[ids[t]], "
            "divided by the number of scored tokens over all records; float32 autograd")


def build(arch: str) -> dict:
    make_init(arch)
    recs = records(arch)
    lrs2 = schedule()
    adamw = {"betas": list(BETAS), "eps": EPS, "amsgrad": False, "maximize": False,
             "implementation": "torch.optim.AdamW (foreach, float32): m=b1*m+(1-b1)*g; v=b2*v+(1-b2)*g^2; "
                               "p*=1-lr*wd; p-=lr/(1-b1^t)*m/(sqrt(v)/sqrt(1-b2^t)+eps), t from 1"}
    traj1, final1 = trajectory(arch, recs, 0.0, None, [LR] * STEPS)
    traj2, final2 = trajectory(arch, recs, WD2, CLIP2, lrs2)
    traj1.update({"base": "hf_f32", "mode": "response", "steps": STEPS, "lr": [LR] * STEPS,
                  "weight_decay": 0.0, "clip_grad_norm": None, **adamw})
    if arch in ARCHS:
        # Full final params only for the original two (the newer, deeper tiny models keep the
        # file small with final_sum/final_l2).
        traj1["final_params"] = {k: nested(v) for k, v in final1.items()}
    traj2.update({"base": "hf_f32", "mode": "response", "steps": STEPS, "lr": [fmt(x) for x in lrs2],
                  "lr_schedule": f"lr[s] = {LR}*(s+1)/{WARMUP} for s<{WARMUP}; "
                                 f"{LR}*0.5*(1+cos(pi*(s-{WARMUP})/({STEPS}-{WARMUP}))) for s>={WARMUP}; "
                                 "s = 0-based step index",
                  "weight_decay": WD2, "clip_grad_norm": CLIP2,
                  "clip_note": "torch.nn.utils.clip_grad_norm_(params, 1.0) after backward, before step: "
                               "total L2 norm over all LoRA grads; if norm > 1, grads *= 1/(norm+1e-6); "
                               "grad_norms are the norms before clipping; clipped[s] says whether step s "
                               "was scaled", "lr_note": "lr values in the JSON are rounded to 9 digits; "
                               "the run used the float64 values of lr_schedule", **adamw})
    # Full final params of the second run would push the file past ~300 KB: final_sum/final_l2 only.
    del final2
    pm0, params0 = load_trainable(arch, "hf_f32")
    check_against_golden(arch, pm0, recs)
    return {
        "arch": arch,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "lora": {"r": R, "lora_alpha": ALPHA, "scale": ALPHA / R, "lora_dropout": 0.0,
                 "target_modules": TARGETS, "adapter_dir": f"tests/golden/tiny/{arch}/train_init",
                 "init": f"torch.manual_seed({INIT_SEED}); PEFT kaiming_uniform lora_A; every lora_B "
                         f"= {B_STD} * torch.randn (same generator, keys in sorted order)"},
        "loss_definition": LOSS_DEF,
        "records": recs,
        "params": {k: list(p.shape) for k, p in params0},
        "one_step": {base: one_step(arch, base, recs) for base in ["hf_f32", "q8_0"]},
        "trajectories": {"adamw": traj1, "adamw_wd_clip_sched": traj2},
    }


def main() -> None:
    import sys

    for arch in sys.argv[1:] or ARCHS:
        out = build(arch)
        text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
        # A line per top-level section / base / trajectory: small in git, still greppable.
        for k in ['"records"', '"params"', '"one_step"', '"hf_f32"', '"q8_0"', '"response"', '"all"',
                  '"trajectories"', '"adamw"', '"adamw_wd_clip_sched"', '"final_params"', '"grads"']:
            text = text.replace("," + k + ":", ",\n" + k + ":").replace("{" + k + ":", "{\n" + k + ":")
        path = TINY / arch / "train_golden.json"
        path.write_text(text + "\n")
        json.loads(path.read_text())
        print(f"{arch}: wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
