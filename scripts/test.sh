#!/usr/bin/env bash
# The test command: fetch the real model (tests use it when present), then run every test.
# Tests run optimised because several score the real 135M-parameter model. Benchmarks are not
# run here (`cargo bench`, benches/train_bench.sh); clippy still compiles them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh
export EDGE_SFT_MODEL="$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo test --release "$@"
