"""Golden values for ggml's 5-bit and K-quant block formats, from gguf-py's numpy port of
ggml-quants.c.

Writes tests/golden/kquants.json: for each of Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and Q8_K, a few rows
of raw block bytes and the f32 values gguf.quants.dequantize gives for them (Q8_K, which gguf-py
does not dequantize, is d * q computed here in float32, as ggml's dequantize_row_q8_K). Bytes and
floats are stored as little-endian hex so they round-trip bit-exactly; tests/quant_kquants.rs
asserts edge-sft's scalar decoder gives the same f32 bits.

Cases per type:
- zero_scale:      super-block scales (d, dmin / m) all zero, random codes;
- zero_subscales:  (K-quants) d, dmin non-zero but every 6/8-bit sub-block scale and min zero;
- max:             f16 max scales (65504), every scale/min/code bit set (Q6_K: scales +127 and
                   -128), Q8_K: f32 max d (products overflow to +-inf);
- negative_d:      negative d (and dmin), random codes and sub-block scales;
- subnormal:       the smallest f16 subnormal as d, random codes;
- random:          2 (K-quants) or 3 blocks of random bytes (a multi-block row), f16 scale fields redrawn until
                   finite (NaN/inf scales never occur in real models, and NaN payloads are not
                   something to pin);
- quantized:       (Q5_0, Q5_1) a random normal row quantized by gguf.quants.quantize.

Run: /work/refenv/bin/python tests/reference/kquant_fixture.py
"""

import importlib.metadata
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

rng = np.random.default_rng(20240611)

# Byte offsets of each type's f16 scale fields: (d, second f16 or None).
F16_FIELDS = {
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
TYPES = {"Q5_0": T.Q5_0, "Q5_1": T.Q5_1, "Q4_K": T.Q4_K, "Q5_K": T.Q5_K, "Q6_K": T.Q6_K, "Q8_K": T.Q8_K}


def set_f16(block: np.ndarray, off: int, value: float) -> None:
    block[off : off + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)


def set_f16_bits(block: np.ndarray, off: int, bits: int) -> None:
    block[off : off + 2] = np.frombuffer(np.uint16(bits).tobytes(), dtype=np.uint8)


def finite_f16s(block: np.ndarray, name: str) -> None:
    """Redraw f16 scale fields that are inf or NaN (exponent all ones)."""
    if name == "Q8_K":
        d = np.float32(rng.standard_normal() * 0.01)
        block[0:4] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        return
    for off in F16_FIELDS[name]:
        while (int(block[off + 1]) & 0x7C) == 0x7C:
            block[off : off + 2] = rng.integers(0, 256, 2, dtype=np.uint8)


def random_blocks(name: str, n: int) -> np.ndarray:
    _, size = GGML_QUANT_SIZES[TYPES[name]]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for b in blocks:
        finite_f16s(b, name)
    return blocks


def dequantize(name: str, blocks: np.ndarray) -> np.ndarray:
    if name == "Q8_K":
        # block_q8_K: f32 d, int8 qs[256], int16 bsums[16]; y = d * q.
        d = blocks[:, 0:4].copy().view("<f4").astype(np.float32)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        with np.errstate(over="ignore"):
            return (d * q).reshape(-1).astype(np.float32)
    return quants.dequantize(blocks.reshape(1, -1), TYPES[name]).astype(np.float32).reshape(-1)


def cases(name: str):
    kq = name.endswith("_K")
    # zero_scale: all super-block scales zero.
    b = random_blocks(name, 1)
    if name == "Q8_K":
        b[0, 0:4] = 0
    else:
        for off in F16_FIELDS[name]:
            set_f16(b[0], off, 0.0)
    yield "zero_scale", b

    if kq and name != "Q8_K":
        b = random_blocks(name, 1)
        if name == "Q6_K":
            b[0, 192:208] = 0  # int8 scales
        else:
            b[0, 4:16] = 0  # packed 6-bit scales and mins
        yield "zero_subscales", b

    # max: every bit of codes and sub-scales set, f16 max scales.
    _, size = GGML_QUANT_SIZES[TYPES[name]]
    b = np.full((1, size), 0xFF, dtype=np.uint8)
    if name == "Q8_K":
        b[0, 0:4] = np.frombuffer(np.float32(np.finfo(np.float32).max).tobytes(), dtype=np.uint8)
        b[0, 4:260:2] = 0x80  # codes alternate -128 and -1
    elif name == "Q6_K":
        b[0, 192:208:2] = 0x7F  # scales alternate +127 and -128
        b[0, 193:208:2] = 0x80
        set_f16(b[0], 208, 65504.0)
    else:
        for off in F16_FIELDS[name]:
            set_f16(b[0], off, 65504.0)
    yield "max", b

    # negative d (and dmin / m).
    b = random_blocks(name, 1)
    if name == "Q8_K":
        b[0, 0:4] = np.frombuffer(np.float32(-0.0371).tobytes(), dtype=np.uint8)
    else:
        for i, off in enumerate(F16_FIELDS[name]):
            set_f16(b[0], off, -1.5 if i == 0 else -0.25)
    yield "negative_d", b

    # the smallest positive subnormal f16 as d (Q8_K: the smallest f32 subnormal).
    b = random_blocks(name, 1)
    if name == "Q8_K":
        b[0, 0:4] = np.frombuffer(np.uint32(1).tobytes(), dtype=np.uint8)
    else:
        set_f16_bits(b[0], F16_FIELDS[name][0], 0x0001)
    yield "subnormal", b

    yield "random", random_blocks(name, 2 if kq else 3)

    if name in ("Q5_0", "Q5_1"):
        x = rng.standard_normal(96).astype(np.float32)
        q = quants.quantize(x.reshape(1, -1), TYPES[name]).reshape(-1)
        yield "quantized", q.reshape(3, -1)


out = {
    "source": "gguf-py quants.dequantize (numpy port of ggml-quants.c); Q8_K: d * q in float32",
    "gguf_version": importlib.metadata.version("gguf"),
    "cases": [],
}
for name in TYPES:
    for case, blocks in cases(name):
        y = dequantize(name, blocks)
        bs, ts = GGML_QUANT_SIZES[TYPES[name]]
        assert blocks.shape[1] == ts and y.shape == (blocks.shape[0] * bs,)
        out["cases"].append(
            {
                "type": name,
                "case": case,
                "blocks": blocks.shape[0],
                "bytes": blocks.tobytes().hex(),
                "values": y.astype("<f4").tobytes().hex(),
            }
        )

path = pathlib.Path(__file__).resolve().parent.parent / "golden" / "kquants.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path} ({len(out['cases'])} cases, {path.stat().st_size} bytes)")
