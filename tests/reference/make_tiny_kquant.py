#!/usr/bin/env python3
"""K-quant GGUF versions of the tiny Gemma 3 and Qwen3 models, and their golden outputs (issue 11).

    HF_HUB_OFFLINE=1 /work/refenv/bin/python tests/reference/make_tiny_kquant.py [gemma3] [qwen3]

What it writes, for arch in gemma3, qwen3:

    tests/golden/tiny/{arch}_kquant/q4_k_m.gguf   a Q4_K_M-style GGUF (mixed tensor types)
    tests/golden/tiny/{arch}_kquant/golden.json   transformers' float32 outputs (variant q4_k_m)

The tiny models of make_tiny_archs.py have d_model 32, too narrow for K-quant super-blocks
(256 values of a row), so these are separate, wider random models: d_model 256, same tokenizer,
chat template, metadata layout and golden format (tests/model_golden.rs reads them like any
other tiny arch folder).

gguf-py has no K-quant quantizer, so the weights are written directly as blocks: random codes,
random 6-bit (Q4_K/Q5_K) or int8 (Q6_K) sub-block scales and small finite f16 super-block scales
chosen so every matrix has roughly the standard deviation asked for and rows stay centred
(Q4_K/Q5_K mins offset the codes' mean). Matrices whose rows are not a multiple of 256 get the
type llama.cpp falls back to for them (Q4_K -> Q5_0, Q6_K -> Q8_0), quantized by gguf-py from
random floats. The types follow llama.cpp's Q4_K_M rules (llama_tensor_get_type): Q6_K for the
output matrix (the token embedding when tied), Q6_K for attn_v and ffn_down in the
"use_more_bits" layers, Q4_K elsewhere; attn_k is Q5_K in even layers (not a Q4_K_M rule: it puts
Q5_K in the files). Norms are F32.

- gemma3: 6 layers (layer 5 global, as llama.cpp reads a gemma3 GGUF; sliding window 5 on 0-4),
  d_model 256, 2 heads / 1 kv head of 16, ffn 32, tied embeddings. Rows of length 256 (token_embd,
  attn_q/k/v, ffn_gate/up) are K-quants; attn_output (rows of 32) and ffn_down (rows of 32) are
  Q5_0, or Q8_0 in the use_more_bits layers. GGUF norm weights hold 1 + w. Score scale
  1/sqrt(head_dim): transformers runs it with query_pre_attn_scalar = head_dim.
- qwen3: 1 layer, d_model 256, 4 heads / 1 kv head of 64, ffn 256, untied output: every matrix
  has rows of 256 and is a K-quant (token_embd Q4_K, output Q6_K, attn_k Q5_K, attn_v and
  ffn_down Q6_K, the rest Q4_K).

(Layer counts and widths are what keeps each file near 300 KB: random K-quant bytes do not
compress, and every 256-wide matrix costs 144-210 bytes per row.)

transformers loads each GGUF (gguf_file=, dequantized to float32 by gguf-py); the script asserts
that every weight it got equals gguf-py's dequantization of the bytes written (norms: minus the
Gemma +1). Deterministic: re-running rewrites byte-identical files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_archs as archs  # noqa: E402
import make_tiny_models as base  # noqa: E402
from common import CHATML_TEMPLATE  # noqa: E402

OUT = base.OUT
VOCAB = 288
MAX_POS, EPS, WINDOW = 256, 1e-6, 5
QK_K = 256

ARCHS = {
    "gemma3": dict(layers=6, hidden=256, heads=2, kv_heads=1, head_dim=16, ffn=32, tied=True,
                   seed=4000, embd_std=0.08),
    "qwen3": dict(layers=1, hidden=256, heads=4, kv_heads=1, head_dim=64, ffn=256, tied=False,
                  seed=4001, embd_std=0.5),
}
# transformers' GGUF reader: as in make_tiny_archs.GGUF_OVERRIDES (llama.cpp's score scale for
# gemma3; qwen3's head_dim, which transformers does not read from the file).
GGUF_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": ARCHS["gemma3"]["head_dim"]},
                  "qwen3": {"head_dim": ARCHS["qwen3"]["head_dim"]}}
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits(i_layer, n_layers)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(-1, 2)


def pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[n, 8] 6-bit scales and mins -> [n, 12] bytes, the inverse of ggml's get_scale_min_k4."""
    s = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    for j in range(4):
        s[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        s[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
        s[:, j + 8] = (sc[:, j + 4] & 15) | ((m[:, j + 4] & 15) << 4)
    return s


def kquant_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int, std: float) -> np.ndarray:
    """[rows, cols/256 * type_size] random blocks of a K-quant whose values have about `std`."""
    _, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // QK_K
    blk = rng.integers(0, 256, (n, size), dtype=np.uint8)  # codes: uniform
    jitter = rng.uniform(0.7, 1.3, n)
    if qtype in (T.Q4_K, T.Q5_K):
        # x = d * sc * q - dmin * m. Sub-block scales sc in [4, 42]; mins m ~ 1.5 sc (+-2) with
        # dmin = d * mean(q) / 1.5, so each sub-block is roughly centred (not exactly: a swapped
        # scale/min would not cancel out). Every bit of the 6-bit fields gets used.
        mean_q, std_q = (7.5, 4.61) if qtype == T.Q4_K else (15.5, 9.23)
        sc = rng.integers(4, 43, (n, 8)).astype(np.uint8)
        m = np.clip(np.rint(1.5 * sc + rng.uniform(-2, 2, (n, 8))), 0, 63).astype(np.uint8)
        d = std / (23.0 * std_q) * jitter
        blk[:, 0:2] = f16_bytes(d)
        blk[:, 2:4] = f16_bytes(d * mean_q / 1.5)
        blk[:, 4:16] = pack_scale_min_k4(sc, m)
    elif qtype == T.Q6_K:
        # x = d * sc * (q - 32), sc int8 in +-[4, 48].
        sc = rng.integers(4, 49, (n, 16)) * rng.choice([-1, 1], (n, 16))
        blk[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        blk[:, 208:210] = f16_bytes(std / (26.0 * 18.47) * jitter)
    else:
        raise ValueError(qtype)
    return blk.reshape(rows, -1)


def matrix(rng: np.random.Generator, qtype: T, rows: int, cols: int, std: float) -> tuple[T, np.ndarray]:
    """(type, [rows, row bytes]) of a random matrix; non-K fallback for rows not of 256."""
    if cols % QK_K:
        qtype = FALLBACK[qtype]
        x = (std * rng.standard_normal((rows, cols))).astype(np.float32)
        return qtype, gguf.quants.quantize(x, qtype)
    return qtype, kquant_blocks(rng, qtype, rows, cols, std)


def gguf_tensors(arch: str) -> list[tuple[str, T, np.ndarray]]:
    """(GGUF name, type, data) in file order: F32 vectors or [rows, row bytes] blocks."""
    a = ARCHS[arch]
    rng = np.random.default_rng(a["seed"])
    d, hd, n = a["hidden"], a["head_dim"], a["layers"]
    qd, kvd = a["heads"] * hd, a["kv_heads"] * hd
    gemma = arch == "gemma3"

    def norm(size: int) -> np.ndarray:
        # Gemma: the file holds 1 + w (w around 0); Qwen3: the gain itself, around 1.
        return (1.0 + 0.2 * rng.standard_normal(size)).astype(np.float32)

    def w(rows: int, cols: int, qtype: T, gain: float = 0.9) -> tuple[T, np.ndarray]:
        return matrix(rng, qtype, rows, cols, gain / np.sqrt(cols))

    out = [("token_embd.weight", *matrix(rng, T.Q6_K if a["tied"] else T.Q4_K, VOCAB, d, a["embd_std"]))]
    for i in range(n):
        more = T.Q6_K if use_more_bits(i, n) else T.Q4_K
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", T.F32, norm(d)),
            (p + "attn_q.weight", *w(qd, d, T.Q4_K)),
            (p + "attn_k.weight", *w(kvd, d, T.Q5_K if i % 2 == 0 else T.Q4_K)),
            (p + "attn_v.weight", *w(kvd, d, more)),
            (p + "attn_q_norm.weight", T.F32, norm(hd)),
            (p + "attn_k_norm.weight", T.F32, norm(hd)),
            (p + "attn_output.weight", *w(d, qd, T.Q4_K)),
        ]
        if gemma:
            out += [(p + "post_attention_norm.weight", T.F32, norm(d))]
        out += [
            (p + "ffn_norm.weight", T.F32, norm(d)),
            (p + "ffn_gate.weight", *w(a["ffn"], d, T.Q4_K)),
            (p + "ffn_up.weight", *w(a["ffn"], d, T.Q4_K)),
            (p + "ffn_down.weight", *w(d, a["ffn"], more)),
        ]
        if gemma:
            out += [(p + "post_ffw_norm.weight", T.F32, norm(d))]
    out.append(("output_norm.weight", T.F32, norm(d)))
    if not a["tied"]:
        out.append(("output.weight", *matrix(rng, T.Q6_K, VOCAB, d, 0.1)))
    return out


def write_gguf(arch: str, path: Path, tensors) -> None:
    """Metadata as make_tiny_archs.write_gguf writes it, with this model's dimensions."""
    a = ARCHS[arch]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(f"tiny-{arch}-kquant")
    w.add_block_count(a["layers"])
    w.add_context_length(MAX_POS)
    w.add_embedding_length(a["hidden"])
    w.add_feed_forward_length(a["ffn"])
    w.add_head_count(a["heads"])
    w.add_head_count_kv(a["kv_heads"])
    w.add_key_length(a["head_dim"])
    w.add_value_length(a["head_dim"])
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(EPS)
    if arch == "gemma3":
        w.add_sliding_window(WINDOW)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
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
    for name, qtype, data in tensors:
        if qtype == T.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_name(arch: str, gname: str) -> str:
    """GGUF tensor name -> transformers state_dict key (make_tiny_archs' maps, inverted)."""
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if gname in fixed:
        return fixed[gname]
    _, i, rest = gname.split(".", 2)
    inv = {v: k for k, v in {**archs.HF_TO_GGUF, **archs.HF_TO_GGUF_ARCH[arch]}.items()}
    return f"model.layers.{i}." + inv[rest]


def load_and_check(arch: str, adir: Path, gfile: str, tensors):
    a = ARCHS[arch]
    m = AutoModelForCausalLM.from_pretrained(adir, gguf_file=gfile, dtype=torch.float32,
                                             attn_implementation="eager", **GGUF_OVERRIDES[arch])
    m.eval()
    c = m.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.intermediate_size, c.vocab_size) == (
        a["hidden"], a["layers"], a["heads"], a["kv_heads"], a["head_dim"], a["ffn"], VOCAB), c
    assert c.tie_word_embeddings == a["tied"], c
    if arch == "gemma3":
        assert c.sliding_window == WINDOW and c.query_pre_attn_scalar == a["head_dim"], c
        assert c.layer_types == ["sliding_attention"] * 5 + ["full_attention"], c.layer_types
        assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0, c.rope_parameters
        assert c.rope_parameters["full_attention"]["rope_theta"] == 1000000.0, c.rope_parameters
    # Every weight transformers got == gguf-py's dequantization of the bytes written.
    sd = m.state_dict()
    seen = set()
    for name, qtype, data in tensors:
        key = hf_name(arch, name)
        if qtype == T.F32:
            want = data - (1.0 if arch == "gemma3" else 0.0)
            assert np.allclose(sd[key].numpy(), want, atol=1e-6), key
        else:
            want = gguf.quants.dequantize(data, qtype)
            assert np.isfinite(want).all(), name
            got = sd[key].numpy()
            assert got.dtype == np.float32 and np.array_equal(got, want), key
            mean, std = float(want.mean()), float(want.std())
            assert abs(mean) < 0.25 * std, (name, mean, std)
        seen.add(key)
    assert seen | ({"lm_head.weight"} if a["tied"] else set()) == set(sd), set(sd) ^ seen
    return m


def build(arch: str) -> None:
    adir = OUT / f"{arch}_kquant"
    adir.mkdir(parents=True, exist_ok=True)
    gfile = "q4_k_m.gguf"
    tensors = gguf_tensors(arch)
    write_gguf(arch, adir / gfile, tensors)
    m = load_and_check(arch, adir, gfile, tensors)
    hf_tok = AutoTokenizer.from_pretrained(OUT / arch / "hf_f32")
    assert hf_tok.chat_template == CHATML_TEMPLATE
    types = sorted({q.name for _, q, _ in tensors})
    note = (f"{gfile} ({', '.join(types)}; random K-quant blocks) dequantized by transformers "
            f"(gguf_file=, {GGUF_OVERRIDES[arch]}), float32")
    golden = {
        "arch": f"{arch}_kquant",
        "vocab_size": VOCAB,
        "vocab_subset": base.vocab_subset(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "variants": {"q4_k_m": base.golden_for(m, hf_tok, "q4_k_m", note)},
    }
    (adir / "golden.json").write_text(base.compact_json(golden))
    seq = golden["variants"]["q4_k_m"]["sequences"]
    spread = max(abs(v) for s in seq for row in s["logits_subset"] for v in row)
    size = (adir / gfile).stat().st_size
    print(f"{arch}: {gfile} {size / 1e3:.0f} KB ({', '.join(types)}), max |logit| {spread:.2f}")


def main() -> None:
    for arch in sys.argv[1:] or list(ARCHS):
        build(arch)


if __name__ == "__main__":
    main()
