#!/usr/bin/env bash
# The main job on the real default model: fetch SmolLM2-135M-Instruct (Q4_1 GGUF), inspect it,
# fine-tune a LoRA adapter on a small data set (loss on the responses), score the data with and
# without the adapter, and generate a reply with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh
cargo build --release --quiet
BIN=target/release/edge-sft
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
$BIN inspect "$MODEL"
echo
echo
# A short run (30 optimizer steps over the 8 example records) so the demo takes about a minute on
# 2 cores; a real run uses the defaults (3 epochs) on the user's logs.
$BIN tune --lora --model "$MODEL" --data examples/sample.jsonl --out runs/demo --force \
    --steps 30 --lr 1e-3 --warmup 3
echo
$BIN eval --model "$MODEL" --data examples/sample.jsonl --adapter runs/demo
echo
echo "> What is the capital of France?"
$BIN generate --model "$MODEL" --adapter runs/demo --prompt "What is the capital of France?" \
    --max-tokens 64
