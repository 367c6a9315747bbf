#!/usr/bin/env python3
"""Does llama.cpp itself load what edge-sft writes, and score with it what edge-sft scores? (#15)

Scores held-out records through llama.cpp's C API (llama-cpp-python's ctypes bindings, built
from the sdist with AMX off: see docs/llamacpp.md): the model's chat template, loss on the
response tokens only, per record Σ log Pr(y|x). It scores

  base                   the GGUF alone
  edge-sft adapter.gguf  the adapter file every `tune` writes
  converted adapter      the same run's PEFT files turned into a GGUF LoRA by llama.cpp's own
                         `convert_lora_to_gguf.py` (optional: --convert-script)
  merged                 a GGUF made by `edge-sft merge` (optional: --merged, no adapter)

and compares with `edge-sft eval --per-example` on the same records (base and adapter).

Tokens: the chat template is rendered to text by transformers (the GGUF's own template) and the
text is tokenized by llama.cpp's tokenizer with special tokens parsed. The response mask comes
from prefix rendering, as everywhere in edge-sft: the prompt rendered with the generation
prompt must tokenize as a prefix of the full record; the scored tokens run from there through
the closing <|im_end|>. edge-sft tokenizes on its own, so the token counts are compared too.

  python tests/reference/llamacpp_check.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --run runs/demo --data examples/extract_test.jsonl \\
      [--convert-script .../convert_lora_to_gguf.py --hf-base /tmp/smollm2-hf] \\
      [--merged /tmp/merged.gguf] --json benches/results/llamacpp_check.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import record_messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class LlamaScorer:
    """One llama.cpp model and context; scores records with or without a LoRA adapter."""

    def __init__(self, model_path: str, n_ctx: int, threads: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(model_path.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {model_path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise SystemExit("llama.cpp could not make a context")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        self.adapters = {}

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (self.L.llama_token * (len(raw) + 8))()
        n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return list(buf[:n])

    def use_adapter(self, path: str | None) -> None:
        L = self.L
        if path is None:
            rc = L.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            if path not in self.adapters:
                a = L.llama_adapter_lora_init(self.model, path.encode())
                if not a:
                    raise SystemExit(f"llama.cpp refused the adapter {path}")
                self.adapters[path] = a
            arr = (L.llama_adapter_lora_p_ctypes * 1)(self.adapters[path])
            scales = (ctypes.c_float * 1)(1.0)
            rc = L.llama_set_adapters_lora(self.ctx, arr, 1, scales)
        if rc != 0:
            raise SystemExit(f"llama_set_adapters_lora failed ({rc}) for {path}")

    def sum_logprob(self, ids: list[int], mask: list[int]) -> float:
        """Σ over t with mask[t] of log Pr(ids[t] | ids[:t]), reduced in float64."""
        L = self.L
        n = len(ids)
        if n > self.n_ctx:
            raise SystemExit(f"record of {n} tokens exceeds n_ctx {self.n_ctx}")
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, t in enumerate(ids):
                batch.token[i] = t
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                raise SystemExit(f"llama_decode failed ({rc})")
            ptr = L.llama_get_logits(self.ctx)
            logits = np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).astype(np.float64)
        finally:
            L.llama_batch_free(batch)
        total = 0.0
        for t in range(1, n):
            if mask[t]:
                row = logits[t - 1]
                m = row.max()
                lse = m + np.log(np.exp(row - m).sum())
                total += row[ids[t]] - lse
        return total


def encode(scorer: LlamaScorer, tok, rec: dict) -> tuple[list[int], list[int]]:
    """(ids, mask) by prefix rendering with llama.cpp's tokenizer (see the module docstring)."""
    msgs = record_messages(rec)
    assert msgs[-1]["role"] == "assistant" and all(m["role"] != "assistant" for m in msgs[:-1]), \
        "this check scores single-response records"
    ids = scorer.tokenize(tok.apply_chat_template(msgs, tokenize=False))
    prefix = scorer.tokenize(tok.apply_chat_template(msgs[:-1], tokenize=False,
                                                     add_generation_prompt=True))
    assert ids[: len(prefix)] == prefix, "prompt rendering does not tokenize as a prefix"
    eos = scorer.tokenize("<|im_end|>")
    assert len(eos) == 1
    end = ids.index(eos[0], len(prefix))
    mask = [1 if len(prefix) <= t <= end else 0 for t in range(len(ids))]
    return ids, mask


def edge_sft_eval(bin_path: str, model: str, data: str, adapter: str | None) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "per.jsonl")
        cmd = [bin_path, "eval", "--model", model, "--data", data, "--per-example", out, "--json"]
        if adapter:
            cmd += ["--adapter", adapter, "--adapter-only"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return [json.loads(line) for line in open(out)]


def mean_nll(sums: list[float], counts: list[int]) -> float:
    return -sum(sums) / sum(counts)


def convert_peft(script: str, hf_base: str, run: str, out: str) -> None:
    subprocess.run([sys.executable, script, "--base", hf_base, "--outfile", out, "--outtype",
                    "f32", run], check=True)


def compare_adapters(ours: str, theirs: str) -> dict:
    """Tensor by tensor: same names, shapes and values (max |difference|)."""
    import gguf

    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert set(a) == set(b), f"tensor names differ: {sorted(set(a) ^ set(b))[:6]}"
    worst = 0.0
    for name, t in a.items():
        x = np.asarray(t.data, dtype=np.float64)
        y = np.asarray(b[name].data, dtype=np.float64)
        assert x.shape == y.shape, f"{name}: {x.shape} vs {y.shape}"
        worst = max(worst, float(np.abs(x - y).max()))
    return {"tensors": len(a), "max_abs_diff": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--run", required=True, help="a tune --out folder (PEFT files + adapter.gguf)")
    ap.add_argument("--data", default=str(ROOT / "examples" / "extract_test.jsonl"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "edge-sft"))
    ap.add_argument("--convert-script", help="llama.cpp's convert_lora_to_gguf.py")
    ap.add_argument("--hf-base", help="an HF folder (config.json) of the base, for the converter")
    ap.add_argument("--merged", help="a merged GGUF from `edge-sft merge` to score as well")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    model = Path(args.model)
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    records = [json.loads(line) for line in open(args.data) if line.strip()]

    conv = None
    if args.convert_script:
        conv = os.path.join(tempfile.mkdtemp(), "converted-lora.gguf")
        convert_peft(args.convert_script, args.hf_base, args.run, conv)
        tensors = compare_adapters(os.path.join(args.run, "adapter.gguf"), conv)
        print(f"adapter.gguf vs llama.cpp's conversion of the PEFT files: {tensors}")

    scorer = LlamaScorer(str(model), n_ctx=1024, threads=args.threads)
    encoded = [encode(scorer, tok, r) for r in records]
    counts = [sum(m) for _, m in encoded]
    adapter_gguf = os.path.join(args.run, "adapter.gguf")

    def score_all(adapter: str | None, who: LlamaScorer) -> list[float]:
        who.use_adapter(adapter)
        out = []
        for i, (ids, mask) in enumerate(encoded):
            out.append(who.sum_logprob(ids, mask))
            if (i + 1) % 20 == 0:
                print(f"llama.cpp {adapter or 'base'}: {i + 1}/{len(encoded)}", file=sys.stderr)
        return out

    res: dict = {"model": model.name, "data": args.data, "records": len(records),
                 "scored_tokens": sum(counts)}
    llama = {"base": score_all(None, scorer), "adapter.gguf": score_all(adapter_gguf, scorer)}
    if conv:
        res["converted_tensors"] = tensors
        llama["converted"] = score_all(conv, scorer)
    if args.merged:
        merged = LlamaScorer(args.merged, n_ctx=1024, threads=args.threads)
        llama["merged"] = score_all(None, merged)

    edge = {"base": edge_sft_eval(args.bin, str(model), args.data, None),
            "adapter.gguf": edge_sft_eval(args.bin, str(model), args.data, adapter_gguf)}
    for name, rows in edge.items():
        got = [r["scored_tokens"] for r in rows]
        assert got == counts, f"edge-sft scores other tokens than llama.cpp ({name})"

    res["llama_cpp_nll"] = {k: mean_nll(v, counts) for k, v in llama.items()}
    res["edge_sft_nll"] = {k: mean_nll([r["sum_logprob"] for r in v], counts)
                           for k, v in edge.items()}
    gap = {k: abs(res["llama_cpp_nll"][k] - res["edge_sft_nll"][k]) / res["edge_sft_nll"][k]
           for k in edge}
    # Per record, Σ log Pr(y|x) relative gap (the measure), as a mean over records.
    per_rec = {k: float(np.mean([abs(a - b["sum_logprob"]) / abs(b["sum_logprob"])
                                 for a, b in zip(llama[k], edge[k])])) for k in edge}
    res["gap_mean_nll"] = gap
    # The same gap in nats per scored token: llama.cpp's 8-bit activation rounding costs about
    # the same absolute amount per token whatever the NLL, so once an adapter drives the NLL
    # towards 0 the relative gap grows while the absolute one does not.
    res["gap_nats_per_token"] = {k: abs(res["llama_cpp_nll"][k] - res["edge_sft_nll"][k])
                                 for k in edge}
    res["gap_per_record_mean"] = per_rec
    ln = res["llama_cpp_nll"]
    res["adapter_drop"] = 1 - ln["adapter.gguf"] / ln["base"]
    if "converted" in ln:
        res["edge_vs_converted"] = abs(ln["adapter.gguf"] - ln["converted"]) / ln["converted"]
    if "merged" in ln:
        res["merged_vs_adapter"] = (ln["merged"] - ln["adapter.gguf"]) / ln["adapter.gguf"]

    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")

    ok = res["adapter_drop"] >= 0.30
    print(f"adapter lowers llama.cpp's NLL by {res['adapter_drop']:.1%} (need ≥ 30%): "
          f"{'ok' if ok else 'FAIL'}")
    print(f"llama.cpp vs edge-sft, per-record Σ log Pr(y|x): base {per_rec['base']:.3%}, "
          f"with adapter {per_rec['adapter.gguf']:.3%}")
    nat = res["gap_nats_per_token"]
    print(f"llama.cpp vs edge-sft, |Δ mean NLL|: base {nat['base']:.5f} nats/token, "
          f"with adapter {nat['adapter.gguf']:.5f}")
    if "merged_vs_adapter" in res:
        print(f"llama.cpp, merged GGUF vs base + adapter.gguf: {res['merged_vs_adapter']:+.3%} "
              f"(merged {ln['merged']:.5f}, adapter {ln['adapter.gguf']:.5f})")
    if "edge_vs_converted" in res:
        ok2 = res["edge_vs_converted"] <= 0.005
        ok = ok and ok2
        print(f"edge-sft adapter.gguf vs llama.cpp-converted PEFT: {res['edge_vs_converted']:.4%} "
              f"(need ≤ 0.5%): {'ok' if ok2 else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
