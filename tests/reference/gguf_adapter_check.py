#!/usr/bin/env python3
"""Check a GGUF LoRA adapter written by edge-sft with the `gguf` package (llama.cpp's own Python
reader), independently of the Rust code:

- metadata types as llama.cpp's adapter loader reads them: general.type / adapter.type /
  general.architecture STRING, adapter.lora.alpha FLOAT32 (an integer aborts the loader);
- every tensor is `<base tensor>.lora_a` / `.lora_b` of a tensor the base GGUF has, ggml dims
  lora_a = [n_in, r] and lora_b = [r, n_out], with n_in / n_out the base tensor's ne[0] / ne[1];
- the values equal the PEFT adapter's lora_A / lora_B (exactly in F32, to the dtype's rounding in
  F16/BF16), after undoing llama.cpp's RoPE row permutation of q/k lora_b for Llama;
- alpha / r equals PEFT's scale.

usage: gguf_adapter_check.py ADAPTER.gguf PEFT_DIR BASE.gguf
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from safetensors.numpy import load_file

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def field(r: GGUFReader, key: str, want_type: GGUFValueType):
    f = r.fields.get(key)
    assert f is not None, f"missing metadata {key}"
    assert f.types == [want_type], f"{key}: type {f.types}, expected {want_type.name}"
    return f.contents()


def unpermute(w: np.ndarray, head_dim: int) -> np.ndarray:
    """GGUF (adjacent-pair RoPE) row order back to Hugging Face (rotate_half) order: the inverse
    of convert_hf_to_gguf's reshape(n_head, 2, d/2, cols).swapaxes(1, 2)."""
    rows, cols = w.shape
    return w.reshape(rows // head_dim, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main() -> int:
    adapter, peft_dir, base_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    r = GGUFReader(adapter)
    base = GGUFReader(base_path)
    base_arch = base.fields["general.architecture"].contents()
    assert field(r, "general.type", GGUFValueType.STRING) == "adapter"
    assert field(r, "adapter.type", GGUFValueType.STRING) == "lora"
    arch = field(r, "general.architecture", GGUFValueType.STRING)
    assert arch == base_arch, f"adapter architecture {arch} vs base {base_arch}"
    alpha = field(r, "adapter.lora.alpha", GGUFValueType.FLOAT32)
    print(f"metadata: general.type=adapter, adapter.type=lora, general.architecture={arch} (STRING); "
          f"adapter.lora.alpha={alpha} (FLOAT32)")

    n_head = base.fields[f"{arch}.attention.head_count"].contents()
    d_model = base.fields[f"{arch}.embedding_length"].contents()
    kl = base.fields.get(f"{arch}.attention.key_length")
    head_dim = kl.contents() if kl is not None else d_model // n_head
    base_shapes = {t.name: [int(x) for x in t.shape] for t in base.tensors}

    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    peft = load_file(str(peft_dir / "adapter_model.safetensors"))
    rank = cfg["r"]
    peft_scale = cfg["lora_alpha"] / (rank ** 0.5 if cfg.get("use_rslora") else rank)
    tensors = {t.name: t for t in r.tensors}
    types = sorted({GGMLQuantizationType(t.tensor_type).name for t in r.tensors})
    assert len(tensors) == len(peft), f"{len(tensors)} GGUF tensors vs {len(peft)} PEFT tensors"

    worst = 0.0
    permuted = 0
    for key, want in peft.items():
        # base_model.model.model.layers.{i}.{parent}.{module}.lora_{A,B}.weight
        parts = key.split(".")
        layer, module, which = int(parts[4]), ".".join(parts[5:7]), parts[7]
        base_name = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
        name = f"{base_name}.lora_{which[-1].lower()}"
        t = tensors.get(name)
        assert t is not None, f"{name} missing (for {key})"
        ne = [int(x) for x in t.shape]
        n_in, n_out = base_shapes[base_name][:2]
        if which == "lora_A":
            assert ne == [n_in, rank], f"{name}: ggml dims {ne}, expected [n_in={n_in}, r={rank}]"
        else:
            assert ne == [rank, n_out], f"{name}: ggml dims {ne}, expected [r={rank}, n_out={n_out}]"
        got = np.asarray(t.data)
        if t.tensor_type == GGMLQuantizationType.BF16:
            got = (got.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        got = got.astype(np.float32).reshape(want.shape)  # row-major: numpy shape = reversed ne
        if arch == "llama" and which == "lora_B" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            got = unpermute(got, head_dim)
            permuted += 1
        err = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-30))) if want.size else 0.0
        if t.tensor_type == GGMLQuantizationType.F32:
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{name} != {key} (bits)"
        worst = max(worst, err)
    bound = {"F32": 0.0, "F16": 2.0 ** -11, "BF16": 2.0 ** -8}[types[0]]
    assert len(types) == 1 and worst <= bound, f"types {types}, worst relative error {worst:.3e}"
    assert abs(alpha / rank - peft_scale) <= 1e-6 * peft_scale, f"scale {alpha / rank} vs PEFT {peft_scale}"
    print(f"tensors: {len(tensors)} ({types[0]}), ggml dims lora_a [n_in, {rank}], lora_b [{rank}, n_out], "
          f"all names are base tensors of {base_path.name}")
    print(f"values vs PEFT: worst relative difference {worst:.3e} (bound {bound:.1e}); "
          f"{permuted} q/k lora_b un-permuted from GGUF row order (head_dim {head_dim})")
    print(f"scale alpha/r = {alpha / rank} = PEFT's {peft_scale}")
    print("GGUF adapter check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
