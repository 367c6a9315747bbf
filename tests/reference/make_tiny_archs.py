#!/usr/bin/env python3
"""Tiny random Gemma 3 and Qwen3 models and their golden outputs (issue 11), in the layout of
make_tiny_models.py (whose tokenizer, records, golden helpers and PEFT adapter maker it reuses).

    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/make_tiny_archs.py [gemma3] [qwen3]
    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/train_golden.py gemma3 qwen3

What it writes, for arch in gemma3, qwen3:

    tests/golden/tiny/{arch}/hf_f32/          HF folder (config, safetensors, tokenizer.json)
    tests/golden/tiny/{arch}/{q8_0,q4_0}.gguf GGUF in llama.cpp's conventions (convert_hf_to_gguf)
    tests/golden/tiny/{arch}/peft_adapter/    a PEFT LoRA adapter with nonzero lora_B
    tests/golden/tiny/{arch}/golden.json      transformers' float32 outputs per variant

The tokenizer is the tiny byte-level BPE of make_tiny_models.py (288 ids, ChatML template): the
architectures under test do not depend on it. Gemma 3 specifics, as llama.cpp writes and reads them:
- GGUF norm weights hold 1 + w (convert_hf_to_gguf adds the 1; transformers' GGUF loader
  subtracts it again);
- llama.cpp takes every 6th layer as global, the local RoPE base as 10,000, and scales scores by
  1/sqrt(head_dim): the tiny model has 6 layers (layer 5 global), and its HF config uses
  query_pre_attn_scalar 24 (not head_dim 16), so the HF folder checks that the scale is read from
  config.json. The GGUF variants are run in transformers with query_pre_attn_scalar=head_dim, the
  scale llama.cpp (and edge-sft) use for a gemma3 GGUF.
- sliding_window 5: records of 20-60 tokens cross it everywhere.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as base  # noqa: E402
from common import CHATML_TEMPLATE  # noqa: E402

OUT = base.OUT
VOCAB = 288
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, MAX_POS, EPS = 32, 2, 1, 16, 64, 256, 1e-6
WINDOW = 5
QPAS = 24  # Gemma 3 query_pre_attn_scalar of the HF folder

ARCHS = {
    "gemma3": dict(layers=6, seed=3000, tied=True),
    "qwen3": dict(layers=2, seed=3001, tied=False),
    # Llama 3.x RoPE scaling (rope_type llama3): with head_dim 16 and base 10,000 the
    # wavelengths 6.3 .. 3e4 straddle original/high = 16 and original/low = 64, so frequencies
    # are kept, interpolated and divided by `factor`.
    "llama3": dict(layers=2, seed=3002, tied=False),
}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
QUANTS = {k: base.QUANTS[k] for k in ["q8_0", "q4_0"]}
# What transformers needs to run a GGUF the way llama.cpp does (see the module docstring).
# (transformers reads no head_dim for a qwen3 GGUF and defaults to 128.)
# (Nor does it read rope_freqs.weight: the llama3 scaling is passed in.)
GGUF_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": HEAD_DIM}, "qwen3": {"head_dim": HEAD_DIM},
                  "llama3": {"head_dim": HEAD_DIM, "rope_parameters": dict(LLAMA3_ROPE)}}


def make_config(arch: str):
    a = ARCHS[arch]
    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=a["layers"],
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS, rms_norm_eps=EPS, tie_word_embeddings=a["tied"],
        bos_token_id=base.BOS_ID, eos_token_id=base.EOS_ID, pad_token_id=base.PAD_ID,
    )
    if arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(
            hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=QPAS,
            sliding_window=WINDOW, final_logit_softcapping=None, attn_logit_softcapping=None,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            attention_bias=False, **common)
        cfg.architectures = ["Gemma3ForCausalLM"]
        assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"], cfg.layer_types
    elif arch == "llama3":
        cfg = transformers.LlamaConfig(hidden_act="silu", attention_bias=False, mlp_bias=False,
                                       rope_parameters=dict(LLAMA3_ROPE), **common)
        cfg.architectures = ["LlamaForCausalLM"]
    else:
        cfg = transformers.Qwen3Config(
            hidden_act="silu", attention_bias=False, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common)
        cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


def make_model(arch: str):
    cfg = make_config(arch)
    seed = ARCHS[arch]["seed"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                if arch == "gemma3":
                    # Gemma norms compute x̂·(1 + w): w around 0, so the gain is around 1.
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                # Gemma scales embeddings by sqrt(32): smaller rows keep the stream comparable.
                std = 0.1 if arch == "gemma3" else 0.5
                p.copy_(std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    if ARCHS[arch]["tied"]:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def save_hf(model, tok, dirpath: Path) -> None:
    import shutil

    if dirpath.exists():
        shutil.rmtree(dirpath)
    dirpath.mkdir(parents=True)
    model.save_pretrained(dirpath, safe_serialization=True)
    cfg = json.loads((dirpath / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    (dirpath / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    base.write_tokenizer(dirpath, tok)


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
HF_TO_GGUF_ARCH = {
    # gguf-py's tensor map: Gemma's post_attention_layernorm is the attention-output norm.
    "gemma3": {"post_attention_layernorm.weight": "post_attention_norm.weight",
               "pre_feedforward_layernorm.weight": "ffn_norm.weight",
               "post_feedforward_layernorm.weight": "post_ffw_norm.weight"},
    "qwen3": {"post_attention_layernorm.weight": "ffn_norm.weight"},
    "llama3": {"post_attention_layernorm.weight": "ffn_norm.weight"},
}


def llama3_rope_freqs() -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: one divisor per frequency."""
    r = LLAMA3_ROPE
    base, dim = r["rope_theta"], HEAD_DIM
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = r["original_max_position_embeddings"] / r["low_freq_factor"]
    high_wavelen = r["original_max_position_embeddings"] / r["high_freq_factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(r["factor"])
        else:
            smooth = (r["original_max_position_embeddings"] / wavelen - r["low_freq_factor"]) / (
                r["high_freq_factor"] - r["low_freq_factor"])
            out.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def gguf_tensors(model, arch: str) -> list[tuple[str, np.ndarray]]:
    """(gguf name, float32 [out, in]) as convert_hf_to_gguf.py writes them: no Q/K permutation
    (NEOX RoPE for both), Gemma norm weights + 1."""
    sd = {k: v.detach().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}
    shift = 1.0 if arch == "gemma3" else 0.0
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    if arch == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_freqs()))
    names = {**HF_TO_GGUF, **HF_TO_GGUF_ARCH[arch]}
    for i in range(ARCHS[arch]["layers"]):
        for hk, gk in names.items():
            key = f"model.layers.{i}.{hk}"
            if key not in sd:
                continue
            w = sd[key]
            if "norm" in hk:
                w = w + shift
            if arch == "llama3" and hk == "self_attn.q_proj.weight":
                w = base.llama_permute(w, HEADS, HEADS)
            elif arch == "llama3" and hk == "self_attn.k_proj.weight":
                w = base.llama_permute(w, HEADS, KV_HEADS)
            out.append((f"blk.{i}.{gk}", w))
    out.append(("output_norm.weight", sd["model.norm.weight"] + shift))
    if not ARCHS[arch]["tied"]:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def write_gguf(model, arch: str, path: Path, qname: str) -> None:
    qtype, ftype = QUANTS[qname]
    w = gguf.GGUFWriter(str(path), "llama" if arch == "llama3" else arch)
    w.add_type("model")
    w.add_name(f"tiny-{arch}")
    w.add_block_count(ARCHS[arch]["layers"])
    w.add_context_length(MAX_POS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(LLAMA3_ROPE["rope_theta"] if arch == "llama3" else 1000000.0)
    if arch == "llama3":
        w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(EPS)
    if arch == "gemma3":
        w.add_sliding_window(WINDOW)
    w.add_file_type(ftype)
    w.add_vocab_size(VOCAB)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(base.vocab_list())
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * 285)
    w.add_token_merges([f"{x} {y}" for x, y in base.MERGES])
    w.add_bos_token_id(base.BOS_ID)
    w.add_eos_token_id(base.EOS_ID)
    w.add_unk_token_id(base.UNK_ID)
    w.add_pad_token_id(base.PAD_ID)
    w.add_chat_template(CHATML_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, arr in gguf_tensors(model, arch):
        if arr.ndim == 1:
            w.add_tensor(name, arr.astype(np.float32))
        else:
            q = gguf.quants.quantize(arr.astype(np.float32), qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_gguf_model(arch: str, adir: Path, gfile: str):
    m = AutoModelForCausalLM.from_pretrained(adir, gguf_file=gfile, dtype=torch.float32,
                                             attn_implementation="eager", **GGUF_OVERRIDES[arch])
    assert isinstance(m.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    if arch == "gemma3":
        c = m.config
        assert c.sliding_window == WINDOW and c.query_pre_attn_scalar == HEAD_DIM, c
        assert c.layer_types == ["sliding_attention"] * 5 + ["full_attention"], c.layer_types
        assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0, c.rope_parameters
        assert c.rope_parameters["full_attention"]["rope_theta"] == 1000000.0, c.rope_parameters
    m.eval()
    return m


def check_gguf_weights(model, loaded, qname: str) -> None:
    """transformers' dequantized GGUF weights == our quantize->dequantize of the HF weights."""
    qtype, _ = QUANTS[qname]
    sd, lsd = model.state_dict(), loaded.state_dict()
    for key in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"]:
        want = gguf.quants.dequantize(gguf.quants.quantize(sd[key].numpy(), qtype), qtype)
        assert np.array_equal(want, lsd[key].numpy()), key
    for key in sd:
        if "norm" in key:
            assert torch.allclose(sd[key], lsd[key], atol=1e-6), key
    if "llama3" in str(type(loaded.config)).lower() or getattr(loaded.config, "rope_parameters", {}).get(
            "rope_type") == "llama3":
        assert loaded.config.rope_parameters["rope_type"] == "llama3"


def build(arch: str) -> None:
    adir = OUT / arch
    adir.mkdir(parents=True, exist_ok=True)
    tok = base.build_tokenizer("smollm")
    model = make_model(arch)
    save_hf(model, tok, adir / "hf_f32")
    for qname in QUANTS:
        write_gguf(model, arch, adir / f"{qname}.gguf", qname)
    base.make_peft(arch, adir / "hf_f32", adir / "peft_adapter", seed=ARCHS[arch]["seed"] + 100)
    golden = {
        "arch": arch,
        "vocab_size": VOCAB,
        "vocab_subset": base.vocab_subset(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "variants": {},
    }
    hf_tok = AutoTokenizer.from_pretrained(adir / "hf_f32")
    assert hf_tok.chat_template == CHATML_TEMPLATE
    m = AutoModelForCausalLM.from_pretrained(adir / "hf_f32", dtype=torch.float32,
                                             attn_implementation="eager")
    golden["variants"]["hf_f32"] = base.golden_for(m, hf_tok, "hf_f32", "HF folder, float32")
    pm = base.with_adapter(m, adir / "peft_adapter")
    golden["variants"]["hf_f32+peft"] = base.golden_for(
        pm, hf_tok, "hf_f32+peft", "hf_f32 base + peft_adapter (PeftModel.from_pretrained), float32")
    for qname in QUANTS:
        gfile = f"{qname}.gguf"
        m = load_gguf_model(arch, adir, gfile)
        check_gguf_weights(model, m, qname)
        note = f"{gfile} dequantized by transformers (gguf_file=, {GGUF_OVERRIDES[arch]}), float32"
        golden["variants"][qname] = base.golden_for(m, hf_tok, qname, note)
        if qname == "q8_0":
            pm = base.with_adapter(m, adir / "peft_adapter")
            golden["variants"]["q8_0+peft"] = base.golden_for(
                pm, hf_tok, "q8_0+peft", "q8_0.gguf (as above) + peft_adapter, float32")
    (adir / "golden.json").write_text(base.compact_json(golden))
    total = sum(p.stat().st_size for p in adir.rglob("*") if p.is_file())
    print(f"{arch}: wrote {len(golden['variants'])} variants, {total / 1e3:.0f} KB")


def main() -> None:
    for arch in sys.argv[1:] or list(ARCHS):
        build(arch)


if __name__ == "__main__":
    main()
