#!/usr/bin/env python3
"""Make the tiny random models under tests/golden/tiny/ and their golden outputs.

Everything here is deterministic (fixed seeds, hand-written BPE merges) and built locally: no hub
access. Run from the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/reference/make_tiny_models.py

What it writes (see tests/reference/README.md for the exact formats):

    tests/golden/tiny/records.jsonl                    4 training records (three record shapes)
    tests/golden/tiny/tokenize.json                    tokenizer golden ids for both tiny tokenizers
    tests/golden/tiny/{llama,qwen2}/hf_{f32,bf16,f16}/  HF folders (config, safetensors, tokenizer)
    tests/golden/tiny/{llama,qwen2}/{q8_0,q4_0,q4_1}.gguf  GGUF files in llama.cpp's conventions
    tests/golden/tiny/{llama,qwen2}/peft_adapter/      a PEFT LoRA adapter with nonzero lora_B
    tests/golden/tiny/{llama,qwen2}/golden.json        transformers' float32 outputs per variant
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CHATML_TEMPLATE,
    GOLDEN_TOKENIZE_TEXTS,
    score_records,
    sequence_golden,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "tiny"

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

# ---------------------------------------------------------------------------------------------
# Tokenizer: 3 specials + 256 byte tokens + 29 hand-written merges = 288 ids.
# ---------------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 2

# Ordered by rank. Every merge is reachable (both halves are produced by earlier merges or bytes).
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġt", "he"),
    ("r", "e"), ("a", "t"), ("Ġ", "s"), ("e", "n"), ("o", "r"), ("Ġ", "o"), ("Ġ", "w"),
    ("i", "s"), ("a", "n"), ("Ġ", "c"), ("e", "s"), ("i", "t"), ("Ġ", "i"), ("Ġ", "b"),
    ("Ġ", "f"), ("a", "l"), ("o", "u"), ("Ġ", "p"), ("in", "g"), ("Ġ", "is"), ("Ġa", "n"),
    ("Ġ", "m"),
]

# Qwen2's split regex, as in its tokenizer.json and llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ARCH = {
    # pre: tokenizer.ggml.pre; the HF pre-tokenizer mirrors what that name means in llama.cpp.
    "llama": dict(pre="smollm", cls="LlamaForCausalLM", model_type="llama", rope_theta=10000.0,
                  tied=False, bias=False),
    "qwen2": dict(pre="qwen2", cls="Qwen2ForCausalLM", model_type="qwen2", rope_theta=1000000.0,
                  tied=True, bias=True),
}
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, MAX_POS, EPS = 32, 2, 4, 2, 8, 64, 256, 1e-6

QUANTS = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
}


def byte_vocab() -> list[str]:
    """The 256 byte-level symbols, in byte order (GPT-2's bytes_to_unicode)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    return [b2u[b] for b in range(256)]


def vocab_list() -> list[str]:
    toks = SPECIALS + byte_vocab() + [a + b for a, b in MERGES]
    assert len(set(toks)) == len(toks) == 288, len(toks)
    return toks


def build_tokenizer(pre: str) -> Tokenizer:
    toks = vocab_list()
    bpe = models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=list(MERGES),
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    if pre == "smollm":
        # SmolLM2's tokenizer.json: digits split one by one, then GPT-2's byte-level regex.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    elif pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    else:
        raise ValueError(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i
    assert tok.get_vocab_size() == 288
    return tok


def write_tokenizer(dirpath: Path, tok: Tokenizer) -> None:
    tok.save(str(dirpath / "tokenizer.json"))
    # Written by hand (not save_pretrained) so the chat template sits in tokenizer_config.json, as
    # in SmolLM2's own repository, rather than in a separate chat_template.jinja.
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "bos_token": SPECIALS[BOS_ID],
        "eos_token": SPECIALS[EOS_ID],
        "pad_token": SPECIALS[PAD_ID],
        "unk_token": SPECIALS[UNK_ID],
        "additional_special_tokens": SPECIALS[1:],
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POS,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in enumerate(SPECIALS)
        },
    }
    (dirpath / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def make_config(arch: str):
    a = ARCH[arch]
    common = dict(
        vocab_size=288, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS, rms_norm_eps=EPS, tie_word_embeddings=a["tied"],
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": a["rope_theta"]},
    )
    if arch == "llama":
        cfg = transformers.LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    else:
        cfg = transformers.Qwen2Config(use_sliding_window=False, **common)
    cfg.architectures = [a["cls"]]
    return cfg


def make_model(arch: str, seed: int):
    cfg = make_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                # RMSNorm gains around 1, so a wrong norm shows up in the logits.
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                # std 0.15 (not 0.02) so the logits are far from uniform.
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    if ARCH[arch]["tied"]:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def save_hf(model, tok: Tokenizer, dirpath: Path, dtype: torch.dtype, dtype_name: str, rope_theta):
    if dirpath.exists():
        shutil.rmtree(dirpath)
    dirpath.mkdir(parents=True)
    # A copy: casting in place would leave bf16-rounded weights behind for the later variants.
    m = copy.deepcopy(model).to(dtype)
    if ARCH[model.config.model_type]["tied"]:
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    m.save_pretrained(dirpath, safe_serialization=True)
    cfg = json.loads((dirpath / "config.json").read_text())
    # Legacy keys too, so a reader written against older transformers config.json files works.
    cfg["torch_dtype"] = dtype_name
    cfg["dtype"] = dtype_name
    cfg["rope_theta"] = rope_theta
    (dirpath / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_tokenizer(dirpath, tok)


# ---------------------------------------------------------------------------------------------
# GGUF, following llama.cpp's convert_hf_to_gguf.py
# ---------------------------------------------------------------------------------------------


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> ggml interleaved rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def gguf_tensors(model, arch: str) -> list[tuple[str, np.ndarray]]:
    """(gguf name, float32 array in HF [out, in] layout, Q/K already permuted for llama)."""
    sd = {k: v.detach().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    hf = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(LAYERS):
        for hk, gk in hf.items():
            key = f"model.layers.{i}.{hk}"
            if key not in sd:
                continue
            w = sd[key]
            if arch == "llama" and hk == "self_attn.q_proj.weight":
                w = llama_permute(w, HEADS, HEADS)
            elif arch == "llama" and hk == "self_attn.k_proj.weight":
                w = llama_permute(w, HEADS, KV_HEADS)
            out.append((f"blk.{i}.{gk}", w))
    out.append(("output_norm.weight", sd["model.norm.weight"]))
    if not ARCH[arch]["tied"]:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def write_gguf(model, arch: str, path: Path, qname: str) -> None:
    qtype, ftype = QUANTS[qname]
    a = ARCH[arch]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(f"tiny-{arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(MAX_POS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(a["rope_theta"])
    w.add_layer_norm_rms_eps(EPS)
    w.add_file_type(ftype)
    w.add_vocab_size(288)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(a["pre"])
    w.add_token_list(vocab_list())
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * 285)
    w.add_token_merges([f"{x} {y}" for x, y in MERGES])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_chat_template(CHATML_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, arr in gguf_tensors(model, arch):
        if arr.ndim == 1:
            w.add_tensor(name, arr.astype(np.float32))  # norms and biases stay F32
        else:
            q = gguf.quants.quantize(arr.astype(np.float32), qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf_roundtrip(model, arch: str, path: Path, qname: str, loaded) -> None:
    """transformers' dequantized weights == our quantize->dequantize of the HF weights, unpermuted."""
    qtype, _ = QUANTS[qname]
    sd = model.state_dict()
    lsd = loaded.state_dict()
    for key in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"]:
        ref = sd[key].numpy()
        want = gguf.quants.dequantize(gguf.quants.quantize(ref, qtype), qtype)
        got = lsd[key].numpy()
        assert np.array_equal(want, got), f"{path}: {key} differs after GGUF round trip"


# ---------------------------------------------------------------------------------------------
# Golden outputs
# ---------------------------------------------------------------------------------------------


def fixed_sequences() -> list[list[int]]:
    rng = np.random.RandomState(1234)
    a = [1] + rng.randint(3, 288, size=11).tolist()  # 12 ids, starts with <|im_start|>
    b = rng.randint(0, 288, size=20).tolist()  # 20 ids, anything in range
    b[7] = 2  # an <|im_end|> in the middle
    return [a, b]


def vocab_subset() -> list[int]:
    rng = np.random.RandomState(99)
    rest = rng.choice(np.arange(3, 288), size=45, replace=False).tolist()
    return sorted([0, 1, 2] + rest)


def load_records() -> list[dict]:
    return [json.loads(line) for line in (OUT / "records.jsonl").read_text().splitlines() if line.strip()]


def golden_for(model, tokenizer, label: str, note: str) -> dict:
    model.eval()
    subset = vocab_subset()
    seqs = [sequence_golden(model, ids, subset) for ids in fixed_sequences()]
    recs = score_records(model, tokenizer, load_records())
    return {"variant": label, "note": note, "sequences": seqs, "records": recs}


RECORDS = [
    {"prompt": "What is the sun?", "response": "The sun is a star at the center of our system."},
    {"instruction": "Add the two numbers.", "input": "12 and 30", "output": "12 + 30 = 42"},
    {"messages": [
        {"role": "system", "content": "You answer in one short line."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue, like the open sea."},
    ]},
    {"messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": "Now in French, caf\u00e9 style."},
        {"role": "assistant", "content": "Salut, on va au caf\u00e9 ?"},
    ]},
]


def write_records() -> None:
    with open(OUT / "records.jsonl", "w") as f:
        for r in RECORDS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def make_peft(arch: str, base_dir: Path, adapter_dir: Path, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"])
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "lora_B" in name:
                # Nonzero B, so the adapter changes the output (PEFT initialises B to zero).
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    pm.save_pretrained(adapter_dir, safe_serialization=True)
    # A relative base path instead of this machine's absolute one.
    acfg_path = adapter_dir / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = f"tests/golden/tiny/{arch}/hf_f32"
    acfg["target_modules"] = sorted(acfg["target_modules"])  # PEFT writes a set: fix the order
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    readme = adapter_dir / "README.md"
    if readme.exists():
        readme.unlink()


def with_adapter(model, adapter_dir: Path):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(model, adapter_dir)
    pm.eval()
    return pm


def tokenize_golden(toks: dict[str, Tokenizer]) -> dict:
    out = {"texts": GOLDEN_TOKENIZE_TEXTS}
    for arch, tok in toks.items():
        out[arch] = [tok.encode(t, add_special_tokens=False).ids for t in GOLDEN_TOKENIZE_TEXTS]
    return out


def compact_json(obj) -> str:
    """No spaces, a line per variant: small in git, still greppable."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace(',"hf_', ',\n"hf_').replace(',"q', ',\n"q') + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_records()
    toks = {}
    for ai, arch in enumerate(ARCH):
        a = ARCH[arch]
        adir = OUT / arch
        adir.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(a["pre"])
        toks[arch] = tok
        model = make_model(arch, seed=1000 + ai)
        for dname, dt in [("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)]:
            save_hf(model, tok, adir / f"hf_{dname}", dt,
                    {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dname], a["rope_theta"])
        for qname in QUANTS:
            write_gguf(model, arch, adir / f"{qname}.gguf", qname)
        make_peft(arch, adir / "hf_f32", adir / "peft_adapter", seed=2000 + ai)

        golden = {
            "arch": arch,
            "vocab_size": 288,
            "vocab_subset": vocab_subset(),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "variants": {},
        }
        hf_tok = AutoTokenizer.from_pretrained(adir / "hf_f32")
        assert hf_tok.chat_template == CHATML_TEMPLATE
        for dname in ["f32", "bf16", "f16"]:
            m = AutoModelForCausalLM.from_pretrained(adir / f"hf_{dname}", dtype=torch.float32,
                                                     attn_implementation="eager")
            note = "HF folder loaded with dtype=float32" + (
                "" if dname == "f32" else f" (the {dname} weights upcast exactly to f32)")
            golden["variants"][f"hf_{dname}"] = golden_for(m, hf_tok, f"hf_{dname}", note)
            if dname == "f32":
                pm = with_adapter(m, adir / "peft_adapter")
                golden["variants"]["hf_f32+peft"] = golden_for(
                    pm, hf_tok, "hf_f32+peft", "hf_f32 base + peft_adapter (PeftModel.from_pretrained), float32")
        for qname in QUANTS:
            gfile = f"{qname}.gguf"
            m = AutoModelForCausalLM.from_pretrained(adir, gguf_file=gfile, dtype=torch.float32,
                                                     attn_implementation="eager")
            assert isinstance(m.model.layers[0].self_attn.q_proj, torch.nn.Linear)
            assert m.config.tie_word_embeddings == a["tied"], (arch, m.config.tie_word_embeddings)
            check_gguf_roundtrip(model, arch, adir / gfile, qname, m)
            gtok = AutoTokenizer.from_pretrained(adir, gguf_file=gfile)
            for text in GOLDEN_TOKENIZE_TEXTS:
                want = tok.encode(text, add_special_tokens=False).ids
                got = gtok(text, add_special_tokens=False).input_ids
                if want != got:
                    print(f"note: transformers' GGUF tokenizer for {arch} differs on {text!r}: {got} vs {want}")
            note = f"{gfile} dequantized by transformers (gguf_file=), run in float32"
            # Records are tokenized with the tokenizer.json tokenizer, so ids match the HF variants.
            golden["variants"][qname] = golden_for(m, hf_tok, qname, note)
            if qname == "q8_0":
                pm = with_adapter(m, adir / "peft_adapter")
                golden["variants"]["q8_0+peft"] = golden_for(
                    pm, hf_tok, "q8_0+peft", "q8_0.gguf dequantized by transformers + peft_adapter, float32")
        (adir / "golden.json").write_text(compact_json(golden))
        print(f"{arch}: wrote {len(golden['variants'])} variants")
    (OUT / "tokenize.json").write_text(json.dumps(tokenize_golden(toks), indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/golden/tiny: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
