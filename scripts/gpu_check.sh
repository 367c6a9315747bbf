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
#                                    Each stage runs even if one before it failed; the exit status
#                                    says whether all passed. At most 7 minutes (its timeouts: 90 +
#                                    150 + 60 + 2 × 60 s); exits 2 at once where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
SMOL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

test_binary() { # name: the path of tests/NAME.rs's binary, built with the cuda feature
    cargo test --release --features cuda --test "$1" --no-run --message-format=json \
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
    if [ ! -f "$SMOL" ]; then
        [ -z "${MODEL:-}" ] || { echo "gpu_check: MODEL=$MODEL: no such file" >&2; exit 1; }
        scripts/fetch_model.sh
    fi
    PY=${PY:-python3}
    "$PY" -c 'import gguf, transformers' 2>/dev/null \
        || { echo "gpu_check: needs a python with gguf and transformers (PY=...)" >&2; exit 1; }
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
fail=0 # a failed stage is reported and the next one still runs: one GPU session, every answer
stage() { echo "== $*"; }
# NVRTC and cuBLAS: edge-sft opens them at run time under the names a CUDA 12 install uses
# (libnvrtc.so.12, or plain libnvrtc.so). A machine whose CUDA comes as pip wheels (torch's
# nvidia-* packages, maybe CUDA 13) has them under site-packages and versioned otherwise: link
# plain names to them and put their folders on the search path.
LIBS=/tmp/gpu_check_libs; rm -rf "$LIBS"; mkdir -p "$LIBS"
for dir in $(python3 -c 'import glob, os, site
for s in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")):
        print(d)' 2>/dev/null || true) /usr/local/cuda/lib64; do
    [ -d "$dir" ] || continue
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for lib in nvrtc cublas cublasLt; do
        f=$(find "$dir" -maxdepth 1 -name "lib$lib.so.[0-9]*" | sort | head -1)
        if [ -n "$f" ] && [ ! -e "$LIBS/lib$lib.so" ]; then ln -sfn "$f" "$LIBS/lib$lib.so"; fi
    done
done
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
echo "nvrtc: $(readlink "$LIBS/libnvrtc.so" || echo 'system'), cublas: $(readlink "$LIBS/libcublas.so" || echo 'system')"
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
nvidia-smi | grep -o 'CUDA Version: [0-9.]*' || true

stage "2. kernels vs CPU references (PTX from NVRTC 12.9: a driver older than CUDA 12.9 refuses it)"
EDGE_SFT_REQUIRE_GPU=1 EDGE_SFT_PTX_DIR="$CARRY/ptx" timeout 90 "$CARRY/cuda_kernels" --test-threads 1 \
    > "$OUTDIR/cuda_kernels.log" 2>&1 || { fail=1; echo "FAILED (see cuda_kernels.log)"; }
tail -n 3 "$OUTDIR/cuda_kernels.log"
stage "3. the training step on CUDA vs the CPU backend and the PyTorch + PEFT goldens"
EDGE_SFT_REQUIRE_GPU=1 timeout 150 "$CARRY/cuda_step" --test-threads 1 --nocapture \
    > "$OUTDIR/cuda_step.log" 2>&1 || { fail=1; echo "FAILED (see cuda_step.log)"; }
grep -E "^test |worst|rel L2|panicked|test result" "$OUTDIR/cuda_step.log" | tail -n 40

stage "4. seq-256 LoRA steps, SmolLM2-135M shapes (stand-in weights: speed and memory only)"
gunzip -c "$CARRY/smollm2-shapes.gguf.gz" > /tmp/smollm2-shapes.gguf
# Peak device memory of whatever runs: GPU 0's used memory, sampled every 0.1 s, minus what
# was used before it started.
used_mb() { nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits || echo 0; }
peak_mem() { # command...: runs it; its peak (MB) is left in /tmp/peak_mb; returns its status
    local base w rc=0; base=$(used_mb); echo 0 > /tmp/peak_mb
    ( peak=0; while :; do
        u=$(used_mb)
        if [ "$u" -gt "$peak" ]; then peak=$u; echo "$((peak - base))" > /tmp/peak_mb; fi
        sleep 0.1; done ) & w=$!
    "$@" || rc=$?
    kill "$w" 2>/dev/null || true; wait "$w" 2>/dev/null || true
    return "$rc"
}
rm -rf /tmp/edge-gpu
if peak_mem timeout 60 "$CARRY/edge-sft" tune --lora --device cuda --model /tmp/smollm2-shapes.gguf \
    --data "$CARRY/seq256.jsonl" --out /tmp/edge-gpu --steps 20 --batch-size 1 --batch-tokens 256 \
    --max-seq 256 --eval-split 0 --lr 2e-4 --warmup 0 --schedule constant --eval-every 0 \
    --save-every 0 > "$OUTDIR/edge.log" 2>&1; then
    python3 - /tmp/edge-gpu/metrics.jsonl "$(cat /tmp/peak_mb)" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
print("edge-sft cuda: %.0f tokens/s (median of steps 3-%d), loss %.4f -> %.4f, peak device %s MB"
      % (statistics.median(r["tokens_per_s"] for r in rows[2:]), len(rows), rows[0]["loss"],
         rows[-1]["loss"], sys.argv[2]))
PY
else
    fail=1; echo "edge-sft tune --device cuda FAILED:"; tail -n 5 "$OUTDIR/edge.log"
fi
export PYTHONPATH="$OUTDIR/py${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import gguf' 2>/dev/null || python3 -m pip install -q --no-deps --target "$OUTDIR/py" "$CARRY"/wheels/gguf-*.whl || true
if ! python3 -c 'import torch, transformers, peft, gguf; assert torch.cuda.is_available()' 2>"$OUTDIR/torch-preflight.log"; then
    fail=1; echo "no PyTorch + PEFT with CUDA here: the comparison is skipped"; tail -n 2 "$OUTDIR/torch-preflight.log"
else
    for dtype in fp32 bf16; do
        if peak_mem timeout 60 python3 benches/reference/peft_bench.py --model /tmp/smollm2-shapes.gguf \
            --ids "$CARRY/seq256.ids.jsonl" --steps 20 --warmup 3 --device cuda --dtype $dtype \
            > "$OUTDIR/torch-$dtype.json" 2> "$OUTDIR/torch-$dtype.log"; then
            python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("pytorch+peft %s: %.0f tokens/s, peak device %s MB (torch allocated %s MB)" % (r["dtype"], r["tokens_per_s"], sys.argv[2], r.get("peak_device_allocated_mb")))' \
                "$OUTDIR/torch-$dtype.json" "$(cat /tmp/peak_mb)"
        else
            fail=1; echo "pytorch+peft $dtype FAILED:"; tail -n 5 "$OUTDIR/torch-$dtype.log"
        fi
    done
fi
echo "gpu_check: done in $((SECONDS - start)) s (logs in $OUTDIR), $([ $fail = 0 ] && echo 'every stage passed' || echo 'a stage FAILED')"
exit "$fail"
