#!/usr/bin/env bash
# Two edge-sft binaries on the same training steps, alternating, in one run: the check that a
# refactor did not slow the CPU step (issue 18's backend boundary). Prints each run's median
# tokens/s over its steps after the first two, the medians per binary and their ratio.
#
#   benches/ab_binaries.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Environment: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf), SEQ (256), STEPS (10),
# THREADS (2), PY (python with gguf + tokenizers for benches/reference/bench_data.py; default
# benches/.venv/bin/python or python3). Runs at the niceness BENCH_NICE if given (e.g. -10).
set -euo pipefail
SELF=$(readlink -f "$0")
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' >&2; exit 2; }
# Paths given relative to where this was started, resolved before moving to the repository.
A=$(readlink -f "$1"); B=$(readlink -f "$2"); ROUNDS=${3:-3}
if [ -n "${MODEL:-}" ]; then MODEL=$(readlink -f "$MODEL"); fi
for bin in "$A" "$B"; do [ -x "$bin" ] || { echo "ab_binaries: $bin is not an executable" >&2; exit 2; }; done
cd "$(dirname "$SELF")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
SEQ=${SEQ:-256}; STEPS=${STEPS:-10}; THREADS=${THREADS:-2}
PY=${PY:-$( [ -x benches/.venv/bin/python ] && echo benches/.venv/bin/python || echo python3)}
WORK=$(mktemp -d)
# Kept when something fails (its logs say why), removed otherwise.
trap 'if [ $? = 0 ]; then rm -rf "$WORK"; else echo "ab_binaries: logs kept in $WORK" >&2; fi' EXIT
[ -f "$MODEL" ] || scripts/fetch_model.sh
"$PY" benches/reference/bench_data.py --model "$MODEL" --seq "$SEQ" --records 8 --outdir "$WORK" \
  > "$WORK/bench_data.log" 2>&1 || { tail -n 5 "$WORK/bench_data.log" >&2; exit 1; }
NICE=()
if [ -n "${BENCH_NICE:-}" ]; then NICE=(nice -n "$BENCH_NICE"); fi

run() { # bin name
  "${NICE[@]}" "$1" tune --lora --model "$MODEL" --data "$WORK/seq$SEQ.jsonl" --out "$WORK/$2" \
    --steps "$STEPS" --batch-size 1 --batch-tokens "$SEQ" --max-seq "$SEQ" --eval-split 0 \
    --threads "$THREADS" --lr 2e-4 --warmup 0 --schedule constant --eval-every 0 --save-every 0 \
    > "$WORK/$2.log" 2>&1 || { echo "ab_binaries: $1 failed:" >&2; tail -n 5 "$WORK/$2.log" >&2; return 1; }
  python3 - "$WORK/$2/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
print("%.1f %.6f" % (statistics.median(r["tokens_per_s"] for r in rows[2:]), rows[-1]["loss"]))
PY
}

echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; seq $SEQ, $STEPS steps, $THREADS threads"
a_all=(); b_all=()
for r in $(seq "$ROUNDS"); do
  ra=$(run "$A" "a$r"); rb=$(run "$B" "b$r")
  read -r ta la <<< "$ra"; read -r tb lb <<< "$rb"
  echo "round $r: before $ta tok/s (loss $la), after $tb tok/s (loss $lb)"
  a_all+=("$ta"); b_all+=("$tb")
done
python3 - "${a_all[*]}" "${b_all[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print("median: before %.1f tok/s, after %.1f tok/s, after/before %.3f" % (ma, mb, mb / ma))
PY
