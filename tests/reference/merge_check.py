"""Check a model `edge-sft merge` wrote, with the `gguf` Python package (llama.cpp's gguf-py).

    /work/refenv/bin/python tests/reference/merge_check.py --base BASE.gguf \
        --adapter ADAPTER.gguf --merged-f32 MERGED_F32.gguf [--quantized MERGED_Q.gguf ...]

For every merged file: gguf-py reads it; its metadata equals the base's (general.file_type
aside); it holds the base's tensors in the base's order and shapes; tensors without a LoRA pair
are byte-identical to the base's; a base without output.weight (tied embeddings) still has none.

For the f32 merge: every adapted tensor equals W + (alpha/r)·B·A computed here in numpy from the
base (dequantized by gguf-py) and the adapter.gguf, in float64 (GGUF row order on both sides).

For each --quantized file: every adapted tensor's bytes equal gguf-py's quantization of the f32
merge's tensor to that file's type (gguf-py's quantizers are ports of ggml's quantize_row_*_ref),
i.e. edge-sft's requantization is bit-compatible with ggml's on real data. Prints a summary and
exits non-zero on any failure.
"""

import argparse
import sys

import numpy as np
from gguf import GGUFReader, quants
from gguf import GGMLQuantizationType as T

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--adapter", required=True, help="the adapter as a GGUF LoRA file")
p.add_argument("--merged-f32", required=True)
p.add_argument("--quantized", nargs="*", default=[])
args = p.parse_args()

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def fields(r):
    return {
        k: f.contents()
        for k, f in r.fields.items()
        if not k.startswith("GGUF.") and k != "general.file_type"
    }


def values(t):
    """A tensor as float32 [rows, cols] (dequantized by gguf-py)."""
    return np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
        int(t.shape[1]), int(t.shape[0])
    )


base = GGUFReader(args.base)
adapter = GGUFReader(args.adapter)
alpha = float(adapter.fields["adapter.lora.alpha"].contents())
lora = {t.name: t for t in adapter.tensors}
pairs = sorted({n[: -len(".lora_a")] for n in lora if n.endswith(".lora_a")})
base_t = {t.name: t for t in base.tensors}
base_fields = fields(base)
print(f"base {args.base}: {len(base.tensors)} tensors; adapter: {len(pairs)} pairs, alpha {alpha}")


def check_common(path):
    m = GGUFReader(path)
    if fields(m) != base_fields:
        diff = [k for k in set(fields(m)) | set(base_fields) if fields(m).get(k) != base_fields.get(k)]
        fail(f"{path}: metadata differs from the base: {diff[:5]}")
    names = [t.name for t in m.tensors]
    if names != [t.name for t in base.tensors]:
        fail(f"{path}: tensor names/order differ from the base")
    if "output.weight" not in base_t and "output.weight" in names:
        fail(f"{path}: tied base, but the merge has output.weight")
    copied = 0
    for t in m.tensors:
        b = base_t[t.name]
        if list(t.shape) != list(b.shape):
            fail(f"{path}: {t.name} shape {list(t.shape)} vs base {list(b.shape)}")
        if t.name not in pairs:
            if t.tensor_type != b.tensor_type or t.data.tobytes() != b.data.tobytes():
                fail(f"{path}: untouched {t.name} is not byte-identical to the base")
            copied += 1
    print(f"{path}: read by gguf-py; metadata equal; {copied} untouched tensors byte-identical")
    return m


merged = check_common(args.merged_f32)
mt = {t.name: t for t in merged.tensors}
worst = 0.0
for name in pairs:
    a = lora[name + ".lora_a"]
    b = lora[name + ".lora_b"]
    r = int(b.shape[0])
    A = np.asarray(a.data, dtype=np.float64).reshape(r, int(a.shape[0]))
    B = np.asarray(b.data, dtype=np.float64).reshape(int(b.shape[1]), r)
    want = values(base_t[name]).astype(np.float64) + (alpha / r) * (B @ A)
    t = mt[name]
    if t.tensor_type != T.F32:
        fail(f"{name}: --merged-f32 holds {t.tensor_type.name}")
        continue
    got = values(t).astype(np.float64)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    worst = max(worst, err)
    if err > 1e-6:
        fail(f"{name}: f32 merge differs from W + (alpha/r)·B·A by {err:.2e} (relative to max |W'|)")
print(f"f32 merge vs numpy W + (alpha/r)·B·A: worst {worst:.2e} relative to max |W'| ({len(pairs)} tensors)")

for path in args.quantized:
    m = check_common(path)
    bad_blocks = total_blocks = 0
    ty = None
    for t in m.tensors:
        if t.name not in pairs:
            continue
        ty = t.tensor_type
        ref = quants.quantize(values(mt[t.name]), ty)
        ours = np.asarray(t.data).reshape(ref.shape)
        bs = quants.GGML_QUANT_SIZES[ty][1]  # bytes per block (per value for float types)
        ob = ours.view(np.uint8).reshape(-1, bs)
        rb = ref.view(np.uint8).reshape(-1, bs)
        bad = int((ob != rb).any(axis=1).sum())
        bad_blocks += bad
        total_blocks += ob.shape[0]
    name = ty.name if ty is not None else "?"
    print(f"{path}: {name}: {bad_blocks} of {total_blocks} blocks differ from gguf-py's quantize")
    if bad_blocks:
        fail(f"{path}: {bad_blocks} {name} blocks are not bit-identical to gguf-py's quantization")

print("OK" if not failures else f"{len(failures)} failures")
sys.exit(1 if failures else 0)
