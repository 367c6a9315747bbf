#!/usr/bin/env bash
# The GPU check of issue 18, in two halves, so the GPU machine needs no Rust and no network:
#
#   scripts/gpu_check.sh --prepare   here (no GPU needed): build the `cuda` feature's kernel test
#                                    binary and release binary, compile kernels/*.cu to PTX, and
#                                    put all of it in target/gpu-carry/ (the carry list)
#   scripts/gpu_check.sh             on the GPU machine, from the repository root with
#                                    target/gpu-carry/ carried: nvidia-smi, then every kernel
#                                    against its CPU reference (tests/cuda_kernels.rs, a GPU
#                                    required), then `inspect --device cuda` on a tiny model.
#                                    Under 8 minutes; exits 2 at once where there is no GPU.
#
# Not in it yet (docs/cuda.md): the golden tests on a CUDA backend and the seq-256 step beside
# PyTorch + PEFT, since the backend that would run them is not written.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry

if [ "${1:-}" = --prepare ]; then
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    python3 scripts/cuda_check.py --ptx-out "$CARRY/ptx"
    cargo build --release --features cuda --bin edge-sft
    cp "${CARGO_TARGET_DIR:-target}/release/edge-sft" "$CARRY/edge-sft"
    bin=$(cargo test --release --features cuda --test cuda_kernels --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_kernels":
        print(m["executable"])')
    cp "$bin" "$CARRY/cuda_kernels"
    cp tests/golden/tiny/qwen3_kquant/q4_k_m.gguf "$CARRY/tiny.gguf"
    echo "carry list ($(du -sh "$CARRY" | cut -f1)):"
    find "$CARRY" -type f | sort | sed 's/^/  /'
    # What runs without a GPU: the kernel tests skip, the device line names the missing driver.
    "$CARRY/cuda_kernels" --test-threads 1 2>&1 | tail -3
    "$CARRY/edge-sft" inspect --device auto "$CARRY/tiny.gguf" | tail -1
    exit 0
fi

[ -x "$CARRY/cuda_kernels" ] || { echo "no $CARRY: run scripts/gpu_check.sh --prepare first" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU here (nvidia-smi finds none): nothing to check" >&2
    exit 2
fi
start=$SECONDS
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
echo "== kernels vs CPU references"
EDGE_SFT_REQUIRE_GPU=1 EDGE_SFT_PTX_DIR="$CARRY/ptx" timeout 300 "$CARRY/cuda_kernels" --test-threads 1
echo "== edge-sft inspect --device cuda (the backend is not wired: expect the GPU named, then a refusal)"
timeout 60 "$CARRY/edge-sft" inspect --device cuda "$CARRY/tiny.gguf" 2>&1 | tail -2 || true
echo "gpu_check: done in $((SECONDS - start)) s"
