#!/usr/bin/env python3
"""A same-shapes stand-in of a GGUF model, small enough to carry when gzipped.

The GPU check (scripts/gpu_check.sh) times a training step of SmolLM2-135M's shapes on a
machine that can only be sent 64 MiB, and the model is 98 MB. This keeps the file byte for byte
(header, tokenizer, tensor types and layout) and replaces each tensor's data with its first
whole blocks (up to 16 KiB) repeated: every block still has real scales and values, so the
step's arithmetic is realistic, but the file compresses to a few MB. Its outputs are
meaningless; its speed and memory are the real model's.

    python3 scripts/shape_model.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out target/gpu-carry/smollm2-shapes.gguf.gz
Needs the `gguf` package (to read tensor offsets).
"""
import argparse
import gzip

from gguf import GGML_QUANT_SIZES, GGUFReader

TILE = 16384  # under gzip's 32 KiB window, so the repeats compress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="a .gguf.gz file")
    a = ap.parse_args()
    data = bytearray(open(a.model, "rb").read())
    r = GGUFReader(a.model)
    for t in r.tensors:
        start, n = t.data_offset, t.n_bytes
        assert start + n <= len(data), f"{t.name}: data past the end of the file"
        # Whole blocks only: a block cut in two would pair one block's scale with another's
        # values (or read a half-float from the middle of one).
        _, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
        size = max(block_bytes, TILE // block_bytes * block_bytes)
        tile = bytes(data[start:start + min(size, n)])
        reps = -(-n // len(tile))
        data[start:start + n] = (tile * reps)[:n]
    with gzip.open(a.out, "wb", compresslevel=6) as f:
        f.write(data)
    print(f"{a.out}: {len(r.tensors)} tensors tiled from their first whole blocks (up to {TILE} bytes)")


if __name__ == "__main__":
    main()
