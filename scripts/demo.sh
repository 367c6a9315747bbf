#!/usr/bin/env bash
# The main job on the real default model, with the default hyperparameters: fetch
# SmolLM2-135M-Instruct (Q4_1 GGUF), inspect it, fine-tune a LoRA adapter on 200 prompt→response
# pairs of a structured task (a booking sentence in, one line of JSON out; loss on the responses
# only), score 60 test pairs it never saw with and without the adapter, and generate with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh
cargo build --release --quiet
BIN=target/release/edge-sft
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
$BIN inspect "$MODEL"
echo
# No hyperparameter flags: the defaults (batch 2, 1.5 epochs, lr 5e-4 or more on small sets, 5% warm-up, a
# held-out split scored 10 times, the best step kept, early stop when it stalls) are what this
# shows. A few minutes on 2 cores; the loss curve lands in runs/demo/loss.svg.
$BIN tune --model "$MODEL" --data examples/extract_train.jsonl --out runs/demo --force
echo
$BIN eval --model "$MODEL" --data examples/extract_test.jsonl --adapter runs/demo
echo
PROMPT="Book a table for 2 at Luigi's on Friday at 8pm."
echo "> $PROMPT"
echo "base model:"
$BIN generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 48
echo "with the adapter (one turn of edge-sft chat):"
echo "$PROMPT" | $BIN chat --model "$MODEL" --adapter runs/demo --max-tokens 48
