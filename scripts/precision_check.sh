#!/usr/bin/env bash
# Quality of the reduced-precision kernel paths on the real model (issue 4: "final held-out
# loss on the same run within 1% of the f32 path").
#
# Runs the same `edge-sft tune --lora` (SmolLM2-135M-Instruct Q4_1, chatterbot-corpus training
# split, same seed, data and steps) once on the f32 path and once per reduced-precision path
# the host has (avx512bf16, amxbf16, avx2f16, neonfp16: whichever `edge-sft inspect --json` confirms),
# then scores the held-out split with every adapter on the f32 path (`edge-sft eval`), so the
# comparison measures the adapters the paths trained, not the paths' own scoring. Prints a
# table (also written to $OUT/precision.md) and exits 1 if a path's held-out mean NLL is off
# by more than the bound from the f32 path's.
#
#   scripts/precision_check.sh [STEPS]        (default 60 optimizer steps)
#
# Environment: EDGE_SFT_BIN (an edge-sft binary; default: build target/release/edge-sft),
# PRECISION_PATHS (reduced paths to try, default "avx512bf16 amxbf16 avx2f16 neonfp16"),
# PRECISION_BOUND (relative bound, default 0.01), THREADS (default 2), BATCH_TOKENS (512),
# OUT (work folder, default runs/precision), RESUME=1 (keep the tune runs and scores already
# in OUT, run only the missing ones).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
BOUND=${PRECISION_BOUND:-0.01}
BATCH=${BATCH_TOKENS:-512}
THREADS=${THREADS:-2}
OUT=${OUT:-runs/precision}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
TRAIN=models/chatterbot_train.jsonl
HELD=models/chatterbot_heldout.jsonl
read -r -a CANDIDATES <<<"${PRECISION_PATHS:-avx512bf16 amxbf16 avx2f16 neonfp16}"

scripts/fetch_model.sh >&2
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 scripts/chatterbot_jsonl.py >&2
if [ -n "${EDGE_SFT_BIN:-}" ]; then
    BIN=$EDGE_SFT_BIN
else
    cargo build --release --quiet --bin edge-sft
    BIN=target/release/edge-sft
fi
mkdir -p "$OUT"
log() { echo "[precision $(date -u +%H:%M:%S)] $*" >&2; }

# The path a forced EDGE_SFT_ISA really gets ("" = the default, the best f32 path).
path_of() {
    EDGE_SFT_ISA=$1 "$BIN" inspect --json "$MODEL" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_kernels"])'
}
F32=$(path_of "")
PATHS=("$F32")
for p in "${CANDIDATES[@]}"; do
    if [ "$(path_of "$p")" = "$p" ]; then PATHS+=("$p"); else log "$p: not on this host, skipped"; fi
done
if [ ${#PATHS[@]} -eq 1 ]; then
    log "no reduced-precision path on this host (f32 path: $F32): nothing to compare"
    exit 0
fi
log "f32 path $F32; reduced paths: ${PATHS[*]:1}; $STEPS steps, $THREADS threads"

# Same run on every path: the seed fixes the adapter init and the data order. 8 records per
# step, in micro-batches of at most $BATCH tokens, keep a 60-step run at a few minutes on 2
# cores (r 8, alpha 16, lr 2e-4, warmup 10, cosine; no held-out split: the script scores
# its own held-out file).
done_already() { [ "${RESUME:-0}" = 1 ] && [ -s "$1" ]; }
for p in "${PATHS[@]}"; do
    if done_already "$OUT/$p.seconds"; then continue; fi
    log "tune on $p"
    t0=$SECONDS
    EDGE_SFT_ISA=$p "$BIN" tune --lora --model "$MODEL" --data "$TRAIN" --out "$OUT/$p" --force \
        --steps "$STEPS" --batch-size 8 --batch-tokens "$BATCH" --warmup 10 --eval-split 0 --seed 42 --threads "$THREADS" \
        --eval-every 0 --save-every 0 >"$OUT/$p.tune.log" 2>&1 ||
        { tail -n 20 "$OUT/$p.tune.log" >&2; exit 1; }
    echo $((SECONDS - t0)) >"$OUT/$p.seconds"
    log "tune on $p: $((SECONDS - t0)) s"
done
# Every adapter scored on the f32 path (the base model once, with the f32 adapter); each
# reduced-path adapter also on its own path, for information.
score() { # OUT_FILE ISA ADAPTER [--adapter-only]
    local file=$1 isa=$2 adapter=$3
    shift 3
    if done_already "$file"; then return 0; fi
    log "eval the $adapter adapter on $isa"
    EDGE_SFT_ISA=$isa "$BIN" eval --json --model "$MODEL" --data "$HELD" --adapter "$OUT/$adapter" \
        --threads "$THREADS" "$@" 2>/dev/null >"$file"
}
score "$OUT/$F32.eval.json" "$F32" "$F32"
for p in "${PATHS[@]:1}"; do
    score "$OUT/$p.eval.json" "$F32" "$p" --adapter-only
    score "$OUT/$p.own.json" "$p" "$p" --adapter-only
done

python3 - "$OUT" "$BOUND" "$STEPS" "${PATHS[@]}" <<'PY'
import json, sys
out, bound, steps, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
f32 = paths[0]
def metrics(p):
    with open(f"{out}/{p}/metrics.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]
def own(p):
    if p == f32:
        return "(same)"
    return f"{json.load(open(f'{out}/{p}.own.json'))['mean_nll']:.5f}"
ev = {p: json.load(open(f"{out}/{p}.eval.json")) for p in paths}
ref = ev[f32]["mean_nll"]
ok = True
lines = [
    f"| path | tune s | train loss, last step | train loss, mean of last 10 | step losses vs {f32}: max rel. diff | held-out mean NLL (scored on {f32}) | vs {f32} | held-out NLL scored on own path | result |",
    "|---|---|---|---|---|---|---|---|---|",
]
base = ev[f32]["base"]
lines.append(f"| base model (no adapter) | – | – | – | – | {base['mean_nll']:.5f} | – | – | – |")
ref_losses = [r["loss"] for r in metrics(f32)]
for p in paths:
    m = metrics(p)
    assert len(m) >= int(steps), f"{p}: {len(m)} steps logged"
    last = m[-1]["loss"]
    # Per-step losses swing with the records of each step; the mean of the last 10 steps is
    # the steadier "final train loss".
    tail = sum(r["loss"] for r in m[-10:]) / len(m[-10:])
    nll = ev[p]["mean_nll"]
    rel = (nll - ref) / ref
    secs = open(f"{out}/{p}.seconds").read().strip()
    if p == f32:
        verdict = "reference"
    else:
        good = abs(rel) <= bound
        ok &= good
        verdict = f"{'PASS' if good else 'FAIL'} (bound {bound:.0%})"
    # Same records in every step on every path: per-step losses are directly comparable.
    steprel = max(abs(r["loss"] - q) / q for r, q in zip(m, ref_losses))
    lines.append(f"| {p} | {secs} | {last:.5f} | {tail:.5f} | {steprel:.2%} | {nll:.5f} | {rel:+.4%} | {own(p)} | {verdict} |")
recs = ev[f32]
lines.append("")
lines.append(f"Held-out: {recs['records']} records, {recs['scored_tokens']} response tokens; "
             f"{steps} optimizer steps, seed 42, same data order on every path. "
             f"'vs {f32}': relative difference of the held-out mean NLL; the bound applies to it. "
             "tune s: wall time of the run (not a benchmark: other work shares the machine).")
text = "\n".join(lines)
print(text)
open(f"{out}/precision.md", "w").write(text + "\n")
sys.exit(0 if ok else 1)
PY
