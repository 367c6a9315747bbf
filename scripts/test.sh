#!/usr/bin/env bash
# The test command: fetch the real model (tests use it when present), then run every test.
# Tests run optimised because several score the real 135M-parameter model. Benchmarks are not
# run here (`cargo bench`, benches/train_bench.sh); clippy still compiles them.
#
# With no arguments, the PyTorch golden tests then run once more on every other kernel path
# the host has (EDGE_SFT_ISA=scalar|avx2|avx512|neon|avx512bf16|amxbf16|avx2f16|neonfp16): the f32
# paths at the f32 tolerances, the reduced-precision ones at their documented bf16/f16
# tolerances (tests/common/mod.rs). With arguments, only `cargo test --release ARGS` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh
python3 scripts/fetch_templates.py # real chat templates for tests/real_templates.rs
export EDGE_SFT_MODEL="$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo test --release "$@"
[ $# -eq 0 ] || exit 0

# The path edge-sft really runs when EDGE_SFT_ISA=$1 ("" = the default): an unsupported
# request falls back to the default, so this tells which paths the host has.
BIN=${CARGO_TARGET_DIR:-target}/release/edge-sft
path_of() {
    EDGE_SFT_ISA=$1 "$BIN" inspect --json tests/golden/tiny/llama/q8_0.gguf 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_kernels"])'
}
default=$(path_of "${EDGE_SFT_ISA:-}") # the path the run above used
start=$SECONDS
for isa in scalar avx2 avx512 neon avx512bf16 amxbf16 avx2f16 neonfp16; do
    if [ "$isa" = "$default" ] || [ "$(path_of "$isa")" != "$isa" ]; then continue; fi
    golden=(--test train_golden --test model_golden --test train_grad)
    # The real-model golden takes ~1 min on the scalar path: f32 SIMD paths and reduced ones only.
    [ "$isa" = scalar ] || golden+=(--test smollm2_golden)
    echo "==== golden tests on EDGE_SFT_ISA=$isa (default path: $default)"
    EDGE_SFT_ISA=$isa cargo test --release "${golden[@]}"
done
echo "golden tests on the other kernel paths: $((SECONDS - start)) s"
