#!/usr/bin/env bash
# The main job on the real default model: fetch SmolLM2-135M-Instruct (Q4_1 GGUF), inspect it,
# score a small data set, and generate a reply.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh
cargo build --release --quiet
BIN=target/release/edge-sft
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
$BIN inspect "$MODEL"
echo
$BIN eval --model "$MODEL" --data examples/sample.jsonl
echo
echo "> What is the capital of France?"
$BIN generate --model "$MODEL" --prompt "What is the capital of France?" --max-tokens 64
