#!/usr/bin/env bash
# PEFT round trip on the real model (issue: tune --lora). Tunes SmolLM2-135M-Instruct (Q4_1 GGUF)
# on chatterbot-corpus conversations, scores the held-out split with edge-sft (base and adapter),
# then loads the adapter with PEFT onto the transformers model dequantized from the same GGUF
# and checks the held-out Σ log Pr(y|x) agrees per record within 1e-3 relative.
#
#   scripts/peft_roundtrip.sh [STEPS]          (default 60 optimizer steps)
# Python: $PEFT_PYTHON, else a venv in .venv-ref with torch, transformers, peft, gguf from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
scripts/fetch_model.sh
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 scripts/chatterbot_jsonl.py
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=runs/chatterbot
cargo build --release --quiet
BIN=target/release/edge-sft
rm -rf "$OUT"
$BIN tune --lora --model "$MODEL" --data models/chatterbot_train.jsonl \
  --eval-data models/chatterbot_heldout.jsonl --out "$OUT" --steps "$STEPS" --eval-every 20
$BIN eval --model "$MODEL" --data models/chatterbot_heldout.jsonl --adapter "$OUT" \
  --per-example "$OUT/heldout_per_example.jsonl"
PY=${PEFT_PYTHON:-}
if [ -z "$PY" ]; then
  if [ ! -x .venv-ref/bin/python ]; then
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install --quiet torch transformers peft gguf safetensors numpy
  fi
  PY=.venv-ref/bin/python
fi
"$PY" tests/reference/peft_roundtrip.py "$MODEL" "$OUT" models/chatterbot_heldout.jsonl "$OUT/heldout_per_example.jsonl"
