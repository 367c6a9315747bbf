#!/usr/bin/env bash
# The GPU check of issue 18, in two halves, so the GPU machine needs no Rust and no network:
#
#   scripts/gpu_check.sh --prepare   here (no GPU needed): build the `cuda` feature's test
#                                    binaries and release binary, compile kernels/*.cu to PTX,
#                                    write a same-shapes stand-in of SmolLM2-135M (the model is
#                                    98 MB, over what a device call carries; scripts/shape_model.py),
#                                    the seq-256 records, and the `gguf` wheel PyTorch's loader
#                                    needs, all in target/gpu-carry/ (the carry list)
#   scripts/gpu_check.sh             on the GPU machine, from the repository root with
#                                    target/gpu-carry/ carried:
#                                      1. nvidia-smi
#                                      2. every kernel against its CPU reference (tests/cuda_kernels.rs)
#                                      3. the whole training step on the CUDA backend against the
#                                         CPU backend and the PyTorch goldens: loss and every LoRA
#                                         gradient, each tiny architecture (tests/cuda_step.rs)
#                                      4. seq-256 LoRA steps on SmolLM2-135M's shapes: edge-sft
#                                         --device cuda beside PyTorch + PEFT on the same GPU (fp32
#                                         and bf16 base), tokens/s and peak device memory each
#                                    Under 8 minutes; exits 2 at once where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
SMOL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

test_binary() { # name: the path of tests/NAME.rs's binary, built with the cuda feature
    cargo test --release --features cuda --test "$1" --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}

if [ "${1:-}" = --prepare ]; then
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    python3 scripts/cuda_check.py --ptx-out "$CARRY/ptx"
    cargo build --release --features cuda --bin edge-sft
    cp "${CARGO_TARGET_DIR:-target}/release/edge-sft" "$CARRY/edge-sft"
    for t in cuda_kernels cuda_step; do cp "$(test_binary $t)" "$CARRY/$t"; done
    strip "$CARRY/edge-sft" "$CARRY/cuda_kernels" "$CARRY/cuda_step"
    cp tests/golden/tiny/qwen3_kquant/q4_k_m.gguf "$CARRY/tiny.gguf"
    [ -f "$SMOL" ] || scripts/fetch_model.sh
    PY=${PY:-python3}
    "$PY" -c 'import gguf' 2>/dev/null || { echo "gpu_check: needs a python with the gguf package (PY=...)" >&2; exit 1; }
    "$PY" scripts/shape_model.py --model "$SMOL" --out "$CARRY/smollm2-shapes.gguf.gz"
    "$PY" benches/reference/bench_data.py --model "$SMOL" --seq 256 --records 8 --outdir "$CARRY" >/dev/null
    "$PY" -m pip download --no-deps --only-binary=:all: -q -d "$CARRY/wheels" gguf
    echo "carry list ($(du -sh "$CARRY" | cut -f1); with the tree it must stay under 64 MiB):"
    find "$CARRY" -type f | sort | sed 's/^/  /'
    # What runs without a GPU: the GPU tests skip, the device line names the missing driver.
    "$CARRY/cuda_kernels" --test-threads 1 2>&1 | grep "test result"
    "$CARRY/cuda_step" --test-threads 1 2>&1 | grep "test result"
    "$CARRY/edge-sft" inspect --device auto "$CARRY/tiny.gguf" | tail -1
    exit 0
fi

[ -x "$CARRY/cuda_step" ] || { echo "no $CARRY: run scripts/gpu_check.sh --prepare first" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU here (nvidia-smi finds none): nothing to check" >&2
    exit 2
fi
start=$SECONDS
OUTDIR=${OUT:-/tmp}/gpu_check; mkdir -p "$OUTDIR"
# NVRTC and cuBLAS: edge-sft opens them at run time under the names a CUDA 12 install uses
# (libnvrtc.so.12, or plain libnvrtc.so). A machine whose CUDA comes as pip wheels (torch's
# nvidia-* packages, maybe CUDA 13) has them under site-packages and versioned otherwise: link
# plain names to them and put their folders on the search path.
LIBS=/tmp/gpu_check_libs; mkdir -p "$LIBS"
for dir in $(python3 -c 'import glob, os, site
for s in site.getsitepackages():
    for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")) + glob.glob(os.path.join(s, "nvidia", "cu*", "lib")):
        print(d)' 2>/dev/null) /usr/local/cuda/lib64; do
    [ -d "$dir" ] || continue
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for lib in nvrtc cublas cublasLt; do
        f=$(ls "$dir"/lib$lib.so.[0-9]* 2>/dev/null | head -1 || true)
        if [ -n "$f" ] && [ ! -e "$LIBS/lib$lib.so" ]; then ln -s "$f" "$LIBS/lib$lib.so"; fi
    done
done
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
echo "nvrtc: $(readlink "$LIBS/libnvrtc.so" || echo 'system'), cublas: $(readlink "$LIBS/libcublas.so" || echo 'system')"
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
echo "== 2. kernels vs CPU references"
EDGE_SFT_REQUIRE_GPU=1 EDGE_SFT_PTX_DIR="$CARRY/ptx" timeout 150 "$CARRY/cuda_kernels" --test-threads 1
echo "== 3. the training step on CUDA vs the CPU backend and the PyTorch goldens"
EDGE_SFT_REQUIRE_GPU=1 timeout 150 "$CARRY/cuda_step" --test-threads 1 --nocapture 2>&1 | tee "$OUTDIR/cuda_step.log"

echo "== 4. seq-256 LoRA steps, SmolLM2-135M shapes (random-ish weights: speed and memory only)"
gunzip -c "$CARRY/smollm2-shapes.gguf.gz" > /tmp/smollm2-shapes.gguf
# Peak device memory of whatever runs: nvidia-smi's used memory, sampled every 0.1 s, minus
# what was used before it started.
peak_mem() { # command...: runs it; its peak (MB) is left in /tmp/peak_mb
    local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    ( peak=0; while :; do
        u=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        [ "$u" -gt "$peak" ] && peak=$u && echo "$((peak - base))" > /tmp/peak_mb
        sleep 0.1; done ) & local w=$!
    echo 0 > /tmp/peak_mb
    "$@" || echo "exit $?" >&2
    kill $w 2>/dev/null; wait $w 2>/dev/null || true
}
peak_mem timeout 120 "$CARRY/edge-sft" tune --lora --device cuda --model /tmp/smollm2-shapes.gguf \
    --data "$CARRY/seq256.jsonl" --out /tmp/edge-gpu --steps 20 --batch-size 1 --batch-tokens 256 \
    --max-seq 256 --eval-split 0 --lr 2e-4 --warmup 0 --schedule constant --eval-every 0 \
    --save-every 0 > "$OUTDIR/edge.log" 2>&1
python3 - /tmp/edge-gpu/metrics.jsonl "$(cat /tmp/peak_mb)" <<'PY' || tail -5 "$OUTDIR/edge.log"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
print("edge-sft cuda: %.0f tokens/s (median of steps 3-%d), loss %.4f -> %.4f, peak device %s MB"
      % (statistics.median(r["tokens_per_s"] for r in rows[2:]), len(rows), rows[0]["loss"],
         rows[-1]["loss"], sys.argv[2]))
PY
export PYTHONPATH="$OUTDIR/py${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import gguf' 2>/dev/null || python3 -m pip install -q --no-deps --target "$OUTDIR/py" "$CARRY"/wheels/gguf-*.whl
for dtype in fp32 bf16; do
    peak_mem timeout 120 python3 benches/reference/peft_bench.py --model /tmp/smollm2-shapes.gguf \
        --ids "$CARRY/seq256.ids.jsonl" --steps 20 --warmup 3 --device cuda --dtype $dtype \
        > "$OUTDIR/torch-$dtype.json" 2> "$OUTDIR/torch-$dtype.log"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("pytorch+peft %s: %.0f tokens/s, peak device %s MB (torch allocated %s MB)" % (r["dtype"], r["tokens_per_s"], sys.argv[2], r.get("peak_device_allocated_mb")))' \
        "$OUTDIR/torch-$dtype.json" "$(cat /tmp/peak_mb)" || tail -5 "$OUTDIR/torch-$dtype.log"
done
echo "gpu_check: done in $((SECONDS - start)) s (logs in $OUTDIR)"
