"""Golden values for ggml block quantization, from gguf-py's numpy port of ggml-quants.c.

Writes tests/golden/quant_golden.json: for a few rows of float32 values, the quantized bytes
(gguf.quants.quantize) and the dequantized values (gguf.quants.dequantize) per type. All numbers
are stored as little-endian hex so they round-trip bit-exactly.

Run: /work/refenv/bin/python tests/reference/quant_golden.py
"""

import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(1234)
rows = {
    "normal": rng.standard_normal(64).astype(np.float32),
    "wide": (rng.standard_normal(64) * 40.0).astype(np.float32),
    "uniform_pos": rng.uniform(0.5, 3.0, 64).astype(np.float32),
    "neg_extreme": np.concatenate(
        [np.linspace(-1, 0.5, 32), np.linspace(0.1, -7.0, 32)]
    ).astype(np.float32),
    "zeros_then_const": np.concatenate([np.zeros(32), np.full(32, 0.3)]).astype(np.float32),
    "tiny": (rng.standard_normal(64) * 1e-6).astype(np.float32),
}
types = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_1": T.Q4_1}

out = {"source": "gguf-py quants (numpy port of ggml-quants.c reference)", "cases": []}
for name, x in rows.items():
    for tname, t in types.items():
        q = quants.quantize(x.reshape(1, -1), t).reshape(-1)
        dq = quants.dequantize(q.reshape(1, -1), t).astype(np.float32).reshape(-1)
        out["cases"].append(
            {
                "row": name,
                "type": tname,
                "input": x.astype("<f4").tobytes().hex(),
                "quantized": q.tobytes().hex(),
                "dequantized": dq.astype("<f4").tobytes().hex(),
            }
        )

path = pathlib.Path(__file__).resolve().parent.parent / "golden" / "quant_golden.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path} ({len(out['cases'])} cases)")
