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

and compares with `edge-sft eval --per-example-ids` on the same records (base, adapter and
merged).

Tokens: the chat template is rendered to text by transformers (--template model: the GGUF's
own template, or, as edge-sft does for a GGUF without one, the Gemma 3 turn format for a
vocabulary with <start_of_turn> and ChatML otherwise; --template gemma / chatml to choose) and
the text is tokenized by llama.cpp's tokenizer with special tokens parsed and nothing added (a
BOS comes from the template's {{ bos_token }}, as in edge-sft). The response mask comes from
prefix rendering, as everywhere in edge-sft: the prompt rendered with the generation prompt
must tokenize as a prefix of the full record; the scored tokens run from there through the
end-of-turn token that closes the response (<|im_end|>, <end_of_turn>, ...). edge-sft tokenizes
on its own (`eval --per-example-ids`); its ids and scored positions must equal llama.cpp's,
record by record, or the check stops and shows the first difference.

  python tests/reference/llamacpp_check.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --run runs/demo --data examples/extract_test.jsonl \\
      [--convert-script .../convert_lora_to_gguf.py --hf-base /tmp/smollm2-hf] \\
      [--merged /tmp/merged.gguf] --json benches/results/llamacpp_check.json

--write-hf-config DIR writes DIR/config.json for the base from the GGUF's metadata (Llama,
Gemma 3), the only base file llama.cpp's converter reads for a LoRA, and exits.
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
from common import GEMMA_TEMPLATE, record_messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# edge-sft's built-in ChatML (src/tokenize/chat.rs CHATML_TEMPLATE), for a GGUF with no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The end-of-turn tokens edge-sft knows (src/tokenize/mod.rs EOT_CANDIDATES), first found wins.
EOT_CANDIDATES = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"]


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
        """llama.cpp's ids for `text`: special tokens parsed, no BOS/EOS added."""
        raw = text.encode()
        buf = (self.L.llama_token * (len(raw) + 8))()
        n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return list(buf[:n])

    def single_token(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

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


def encode(scorer: LlamaScorer, render, eot: int, rec: dict) -> tuple[list[int], list[int]]:
    """(ids, mask) by prefix rendering with llama.cpp's tokenizer (see the module docstring)."""
    msgs = record_messages(rec)
    assert msgs[-1]["role"] == "assistant" and all(m["role"] != "assistant" for m in msgs[:-1]), \
        "this check scores single-response records"
    ids = scorer.tokenize(render(msgs, False))
    prefix = scorer.tokenize(render(msgs[:-1], True))
    assert ids[: len(prefix)] == prefix, "prompt rendering does not tokenize as a prefix"
    end = ids.index(eot, len(prefix))
    mask = [1 if len(prefix) <= t <= end else 0 for t in range(len(ids))]
    return ids, mask


def pick_template(choice: str, model_template: str | None, scorer: LlamaScorer) -> tuple[str, str]:
    """(name, Jinja source) as edge-sft chooses it for `--template choice`."""
    if choice == "gemma":
        return "gemma (built-in)", GEMMA_TEMPLATE
    if choice == "chatml":
        return "chatml (built-in)", CHATML_TEMPLATE
    if model_template:
        return "model (tokenizer.chat_template)", model_template
    if scorer.single_token("<start_of_turn>") is not None:
        return "gemma (built-in, the GGUF has no chat template)", GEMMA_TEMPLATE
    return "chatml (built-in, the GGUF has no chat template)", CHATML_TEMPLATE


def first_difference(a: list[int], b: list[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"lengths {len(a)} vs {len(b)}, first difference at {k}: "
            f"{a[max(0, k - 3): k + 3]} vs {b[max(0, k - 3): k + 3]}")


def edge_sft_eval(bin_path: str, model: str, data: str, adapter: str | None,
                  template: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "per.jsonl")
        cmd = [bin_path, "eval", "--model", model, "--data", data, "--per-example", out,
               "--per-example-ids", "--template", template, "--json"]
        if adapter:
            cmd += ["--adapter", adapter, "--adapter-only"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return [json.loads(line) for line in open(out)]


def write_hf_config(model_path: str, out_dir: str) -> dict:
    """An HF config.json for the base, from the GGUF's metadata: what llama.cpp's
    convert_lora_to_gguf.py reads (the architecture picks its tensor-name map; the sizes
    its block count). No weights, no tokenizer: the LoRA converter needs neither."""
    import gguf

    r = gguf.GGUFReader(model_path)

    def val(key: str, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = val("general.architecture")
    p = f"{arch}."
    names = {t.name for t in r.tensors}
    heads = int(val(p + "attention.head_count"))
    hidden = int(val(p + "embedding_length"))
    cfg = {
        "hidden_size": hidden,
        "intermediate_size": int(val(p + "feed_forward_length")),
        "num_hidden_layers": int(val(p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(val(p + "attention.head_count_kv", heads)),
        "head_dim": int(val(p + "attention.key_length", hidden // heads)),
        "rms_norm_eps": float(val(p + "attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(val(p + "context_length")),
        "vocab_size": len(r.fields["tokenizer.ggml.tokens"].data),
        "bos_token_id": val("tokenizer.ggml.bos_token_id"),
        "eos_token_id": val("tokenizer.ggml.eos_token_id"),
        "pad_token_id": val("tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False,
        "torch_dtype": "float32",
    }
    theta = float(val(p + "rope.freq_base", 10000.0))
    if arch == "llama":
        cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                   mlp_bias=False, rope_theta=theta,
                   rope_parameters={"rope_theta": theta, "rope_type": "default"})
    elif arch == "gemma3":
        n = cfg["num_hidden_layers"]
        # llama.cpp's Gemma 3: every 6th layer global (rope.freq_base), the others sliding
        # (window attention.sliding_window, RoPE base 10000); 1/sqrt(head_dim) attention scale.
        cfg.update(
            architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
            hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=cfg["head_dim"],
            sliding_window=int(val(p + "attention.sliding_window")),
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                         for i in range(n)],
            final_logit_softcapping=None, attn_logit_softcapping=None,
            rope_theta=theta, rope_local_base_freq=10000.0,
            rope_parameters={"full_attention": {"rope_theta": theta, "rope_type": "default"},
                             "sliding_attention": {"rope_theta": 10000.0,
                                                   "rope_type": "default"}})
    else:
        raise SystemExit(f"--write-hf-config: no HF config recipe for architecture {arch!r}")
    os.makedirs(out_dir, exist_ok=True)
    Path(out_dir, "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return cfg


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
    ap.add_argument("--run", help="a tune --out folder (PEFT files + adapter.gguf)")
    ap.add_argument("--data", default=str(ROOT / "examples" / "extract_test.jsonl"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "edge-sft"))
    ap.add_argument("--convert-script", help="llama.cpp's convert_lora_to_gguf.py")
    ap.add_argument("--hf-base", help="an HF folder (config.json) of the base, for the converter")
    ap.add_argument("--merged", help="a merged GGUF from `edge-sft merge` to score as well")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--template", choices=["model", "gemma", "chatml"], default="model",
                    help="as edge-sft's --template: the GGUF's own (or edge-sft's fallback for "
                         "a GGUF without one), or a built-in turn format")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--write-hf-config", metavar="DIR",
                    help="write DIR/config.json for --model from its GGUF metadata and exit")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    model = Path(args.model)
    if args.write_hf_config:
        cfg = write_hf_config(str(model), args.write_hf_config)
        print(json.dumps(cfg, indent=1))
        return
    if not args.run:
        ap.error("--run is required (a tune --out folder)")

    import gguf
    from transformers.utils.chat_template_utils import render_jinja_template

    meta = gguf.GGUFReader(str(model))

    def meta_val(key: str):
        f = meta.fields.get(key)
        return None if f is None else f.contents()

    tokens = meta.fields["tokenizer.ggml.tokens"].contents()
    special = {}
    for k in ("bos", "eos"):
        tid = meta_val(f"tokenizer.ggml.{k}_token_id")
        special[f"{k}_token"] = tokens[tid] if tid is not None else ""
    model_template = meta_val("tokenizer.chat_template")
    del meta, tokens
    records = [json.loads(line) for line in open(args.data) if line.strip()]

    conv = None
    if args.convert_script:
        conv = os.path.join(tempfile.mkdtemp(), "converted-lora.gguf")
        convert_peft(args.convert_script, args.hf_base, args.run, conv)
        tensors = compare_adapters(os.path.join(args.run, "adapter.gguf"), conv)
        print(f"adapter.gguf vs llama.cpp's conversion of the PEFT files: {tensors}")

    scorer = LlamaScorer(str(model), n_ctx=args.n_ctx, threads=args.threads)
    tmpl_name, tmpl = pick_template(args.template, model_template, scorer)
    eot = next((t for c in EOT_CANDIDATES if (t := scorer.single_token(c)) is not None), None)
    if eot is None:
        raise SystemExit(f"no end-of-turn token ({', '.join(EOT_CANDIDATES)}) in the vocabulary")
    print(f"template: {tmpl_name}; special tokens {special}; end of turn id {eot}")

    def render(msgs: list[dict], gen: bool) -> str:
        out, _ = render_jinja_template([msgs], chat_template=tmpl, add_generation_prompt=gen,
                                       **special)
        return out[0]

    encoded = [encode(scorer, render, eot, r) for r in records]
    counts = [sum(m) for _, m in encoded]
    adapter_gguf = os.path.join(args.run, "adapter.gguf")

    # edge-sft's own tokenization and mask (eval --per-example-ids) must be llama.cpp's.
    edge_template = "gemma" if args.template == "gemma" else (
        "model" if args.template == "model" else None)
    if edge_template is None:
        raise SystemExit("edge-sft has no --template chatml; use --template model")
    edge = {"base": edge_sft_eval(args.bin, str(model), args.data, None, edge_template),
            "adapter.gguf": edge_sft_eval(args.bin, str(model), args.data, adapter_gguf,
                                          edge_template)}
    if args.merged:
        edge["merged"] = edge_sft_eval(args.bin, args.merged, args.data, None, edge_template)
    for name, rows in edge.items():
        assert len(rows) == len(encoded), f"edge-sft scored {len(rows)} records ({name})"
        for r, (ids, mask) in zip(rows, encoded):
            if r["ids"] != ids:
                raise SystemExit(f"edge-sft and llama.cpp tokenize record line {r['line']} "
                                 f"differently ({name}): {first_difference(r['ids'], ids)}")
            scored = [t for t, m in enumerate(mask) if m]
            if r["scored"] != scored:
                raise SystemExit(f"edge-sft scores other positions than llama.cpp on line "
                                 f"{r['line']} ({name}): {r['scored'][:4]}..{r['scored'][-2:]} "
                                 f"vs {scored[:4]}..{scored[-2:]}")
    print(f"edge-sft and llama.cpp: the same ids and scored positions in all {len(encoded)} "
          f"records ({sum(len(i) for i, _ in encoded)} tokens, {sum(counts)} scored; "
          f"first ids {encoded[0][0][:3]})")

    def score_all(adapter: str | None, who: LlamaScorer) -> list[float]:
        who.use_adapter(adapter)
        out = []
        for i, (ids, mask) in enumerate(encoded):
            out.append(who.sum_logprob(ids, mask))
            if (i + 1) % 20 == 0:
                print(f"llama.cpp {adapter or 'base'}: {i + 1}/{len(encoded)}", file=sys.stderr)
        return out

    res: dict = {"model": model.name, "data": args.data, "records": len(records),
                 "scored_tokens": sum(counts), "template": tmpl_name,
                 "tokens_identical": True}
    llama = {"base": score_all(None, scorer), "adapter.gguf": score_all(adapter_gguf, scorer)}
    if conv:
        res["converted_tensors"] = tensors
        llama["converted"] = score_all(conv, scorer)
    if args.merged:
        merged = LlamaScorer(args.merged, n_ctx=args.n_ctx, threads=args.threads)
        for r, (ids, _) in zip(records, encoded):
            m = record_messages(r)
            assert merged.tokenize(render(m, False)) == ids, "the merged GGUF tokenizes otherwise"
        llama["merged"] = score_all(None, merged)

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
    res["llama_cpp_sum_logprob"] = {k: float(sum(v)) for k, v in llama.items()}
    res["edge_sft_sum_logprob"] = {k: float(sum(r["sum_logprob"] for r in v))
                                   for k, v in edge.items()}
    ln = res["llama_cpp_nll"]
    res["adapter_drop"] = 1 - ln["adapter.gguf"] / ln["base"]
    if "converted" in ln:
        res["edge_vs_converted"] = abs(ln["adapter.gguf"] - ln["converted"]) / ln["converted"]
    if "merged" in ln:
        res["merged_vs_adapter"] = (ln["merged"] - ln["adapter.gguf"]) / ln["adapter.gguf"]
        en = res["edge_sft_nll"]
        res["edge_sft_merged_vs_adapter"] = (en["merged"] - en["adapter.gguf"]) / en["adapter.gguf"]

    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")

    ok = res["adapter_drop"] >= 0.30
    print(f"adapter lowers llama.cpp's NLL by {res['adapter_drop']:.1%} (need ≥ 30%): "
          f"{'ok' if ok else 'FAIL'}")
    print(f"llama.cpp vs edge-sft, per-record Σ log Pr(y|x): base {per_rec['base']:.3%}, "
          f"with adapter {per_rec['adapter.gguf']:.3%}")
    nat = res["gap_nats_per_token"]
    ok3 = nat["adapter.gguf"] <= nat["base"]
    ok = ok and ok3
    print(f"llama.cpp vs edge-sft, |Δ mean NLL|: base {nat['base']:.5f} nats/token, "
          f"with adapter {nat['adapter.gguf']:.5f} (need with adapter ≤ base): "
          f"{'ok' if ok3 else 'FAIL'}")
    if "merged_vs_adapter" in res:
        print(f"llama.cpp, merged GGUF vs base + adapter.gguf: {res['merged_vs_adapter']:+.3%} "
              f"(merged {ln['merged']:.5f}, adapter {ln['adapter.gguf']:.5f}); edge-sft: "
              f"{res['edge_sft_merged_vs_adapter']:+.3%} (merged {en['merged']:.5f}, "
              f"adapter {en['adapter.gguf']:.5f})")
    if "edge_vs_converted" in res:
        ok2 = res["edge_vs_converted"] <= 0.005
        ok = ok and ok2
        print(f"edge-sft adapter.gguf vs llama.cpp-converted PEFT: {res['edge_vs_converted']:.4%} "
              f"(need ≤ 0.5%): {'ok' if ok2 else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
