#!/usr/bin/env bash
# Training-step benchmark: edge-sft beside PyTorch + PEFT on the same model, records and threads,
# in one run, alternating between the two. See benches/README.md.
#
#   benches/train_bench.sh            full: seq 256/512/1024 x threads 1/2 x every kernel path
#                                     (scalar at seq 256 only), PyTorch fp32 and bf16 weights (also 4 records/step at seq 256, 2 threads),
#                                     edge-sft --grad-checkpoint at seq 1024; writes
#                                     benches/results/latest.md (~15-20 min on 2 cores)
#   benches/train_bench.sh --quick    seq 256, 2 threads only; writes benches/results/quick.md
#   --build                           first `cargo build --release` (else the binary is built
#                                     only if missing; the report says how old it is)
#
# Environment:
#   PEFT_BENCH_PYTHON  python with torch, transformers, peft, gguf (default: create benches/.venv
#                      and pip install them from PyPI)
#   EDGE_SFT_BIN       edge-sft binary (default target/release/edge-sft; built if missing)
#   MODEL              GGUF (default models/SmolLM2-135M-Instruct.Q4_1.gguf; fetched if missing)
#   BENCH_OUT          report path (default benches/results/latest.md or quick.md)
#   EDGE_STEPS_256/512/1024, TORCH_STEPS_256/512/1024, SCALAR_STEPS: optimizer steps per run
#   RUN_TIMEOUT        seconds before one run is stopped (edge-sft: SIGINT, keeps its metrics)
#   BENCH_NICE         run the whole benchmark at this niceness (e.g. -10, needs root) so that other
#                      work on a shared machine disturbs it less; reported in the header
#   BENCH_REPEAT       alternate each (seq, threads) group this many times (default 1); the report
#                      then shows each row's median tokens/s and range (e.g. 3 with --quick on a
#                      VM whose speed drifts between runs)
#   BENCH_QUIET_WAIT   before each run, wait up to this many seconds (default 0: don't) for the
#                      machine to be idle (busy < BENCH_QUIET_PCT, default 10%, over 2 s)
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."

QUICK=0; BUILD=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --build) BUILD=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d'; exit 0 ;;
    *) echo "train_bench.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
BIN=${EDGE_SFT_BIN:-target/release/edge-sft}
RUN_TIMEOUT=${RUN_TIMEOUT:-420}
if [ "$QUICK" = 1 ]; then
  SEQS="256"; THREADS="2"; OUT=${BENCH_OUT:-benches/results/quick.md}
else
  SEQS="256 512 1024"; THREADS="1 2"; OUT=${BENCH_OUT:-benches/results/latest.md}
fi
# Optimizer steps per run: the first 2 are warm-up, the median is over the rest.
EDGE_STEPS_256=${EDGE_STEPS_256:-6}; EDGE_STEPS_512=${EDGE_STEPS_512:-6}; EDGE_STEPS_1024=${EDGE_STEPS_1024:-5}
TORCH_STEPS_256=${TORCH_STEPS_256:-5}; TORCH_STEPS_512=${TORCH_STEPS_512:-5}; TORCH_STEPS_1024=${TORCH_STEPS_1024:-4}
SCALAR_STEPS=${SCALAR_STEPS:-4}

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }
cpustat() { head -n 1 /proc/stat; }
HZ=$(getconf CLK_TCK)
BENCH_QUIET_WAIT=${BENCH_QUIET_WAIT:-0}; BENCH_QUIET_PCT=${BENCH_QUIET_PCT:-10}
busy_pct() { # whole-machine busy % over 2 s
  local a b
  a=$(cpustat); sleep 2; b=$(cpustat)
  python3 -c 'import sys
a=[int(x) for x in sys.argv[1].split()[1:]]; b=[int(x) for x in sys.argv[2].split()[1:]]
d=[y-x for x,y in zip(a,b)]; busy=d[0]+d[1]+d[2]+d[5]+d[6]+d[7]; tot=busy+d[3]+d[4]
print(int(100*busy/max(tot,1)))' "$a" "$b"
}
wait_quiet() {
  [ "$BENCH_QUIET_WAIT" -gt 0 ] || return 0
  local start=$SECONDS p
  while :; do
    p=$(busy_pct)
    if [ "$p" -lt "$BENCH_QUIET_PCT" ]; then return 0; fi
    if [ $((SECONDS - start)) -ge "$BENCH_QUIET_WAIT" ]; then
      log "machine still ${p}% busy after ${BENCH_QUIET_WAIT}s; running anyway"; return 0
    fi
  done
}

# --- tools -------------------------------------------------------------------------------------
if [ ! -x /usr/bin/time ]; then
  log "installing GNU time (for peak RSS)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y time >/dev/null; else sudo apt-get install -y time >/dev/null; fi
fi
if [ ! -f "$MODEL" ]; then
  log "fetching the model"
  scripts/fetch_model.sh
fi
if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
  log "building edge-sft (release)"
  cargo build --release --bin edge-sft
fi

if [ -n "${PEFT_BENCH_PYTHON:-}" ]; then
  PY=$PEFT_BENCH_PYTHON
else
  PY=benches/.venv/bin/python
  if ! { [ -x "$PY" ] && "$PY" -c "import torch, transformers, peft, gguf" 2>/dev/null; }; then
    log "creating benches/.venv (torch, transformers, peft, gguf from PyPI)"
    python3 -m venv benches/.venv
    benches/.venv/bin/pip install --quiet --upgrade pip
    benches/.venv/bin/pip install --quiet torch transformers peft gguf
  fi
fi

if [ -n "${BENCH_NICE:-}" ]; then
  # With autogroup scheduling (Linux default for desktops/VMs) niceness only ranks processes of
  # one session against each other; so run in a session of our own and give that group the
  # niceness too.
  if [ -z "${TRAIN_BENCH_SETSID:-}" ] && [ -r /proc/sys/kernel/sched_autogroup_enabled ] \
     && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled)" = 1 ]; then
    TRAIN_BENCH_SETSID=1 exec setsid --wait "$SELF" "$@"
  fi
  if [ -w /proc/$$/autogroup ]; then echo "$BENCH_NICE" > /proc/$$/autogroup || true; fi
  renice -n "$BENCH_NICE" -p $$ >/dev/null
fi
NICENESS=$(ps -o ni= -p $$ | tr -d ' ')
if [ -r /proc/$$/autogroup ]; then NICENESS="$NICENESS ($(cat /proc/$$/autogroup))"; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-sft-bench.XXXXXX")
log "work dir: $WORK"
# Snapshot the binary: others may rebuild target/release while the benchmark runs.
cp "$BIN" "$WORK/edge-sft"
EDGE="$WORK/edge-sft"
BIN_MTIME=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# The binary's provenance: the last commit that touched the code, and whether the binary is
# older than it (then it was built from an earlier tree).
SRC_COMMIT=$(TZ=UTC git log -1 --format='%h %cd' --date=format-local:'%Y-%m-%d %H:%M UTC' -- src Cargo.toml Cargo.lock 2>/dev/null || echo unknown)
SRC_TIME=$(TZ=UTC git log -1 --format=%ct -- src Cargo.toml Cargo.lock 2>/dev/null || echo 0)
STALE=""
if [ "$(date -r "$BIN" +%s)" -lt "${SRC_TIME:-0}" ]; then STALE=" (older than that commit)"; fi
DIRTY=""
if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  DIRTY=" (working tree with uncommitted changes in src/)"
fi
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# --- kernel paths this host runs: ask edge-sft which ISA it actually uses when forced ---------
ISAS=""
for isa in amxbf16 avx512fp16 avx512bf16 avx512 avx2f16 avx2 neonfp16 neon scalar; do
  got=$(EDGE_SFT_ISA=$isa "$EDGE" inspect --json "$MODEL" 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin).get("cpu_kernels",""))' || true)
  if [ "$got" = "$isa" ]; then ISAS="$ISAS $isa"; fi
done
ISAS=${ISAS# }
BEST=${ISAS%% *}
log "kernel paths: $ISAS (best: $BEST)"

# --- data ----------------------------------------------------------------------------------------
log "writing benchmark records (seq $SEQS)"
# shellcheck disable=SC2086  # $SEQS is a list
if ! "$PY" benches/reference/bench_data.py --model "$MODEL" --seq $SEQS --records 8 --outdir "$WORK/data" \
    >&2 2> "$WORK/bench_data.log"; then
  tail -n 20 "$WORK/bench_data.log" >&2
  exit 1
fi

# --- runs ----------------------------------------------------------------------------------------
REPEAT=${BENCH_REPEAT:-1}
REP=1 # the current repetition (run names carry it from the second on)
rep_suffix() { if [ "$REP" -gt 1 ]; then echo "-rep$REP"; fi; }

run_edge() { # isa seq threads steps [gc]
  local isa=$1 seq=$2 thr=$3 steps=$4 gc=${5:-}
  local name="edge-$isa-s$seq-t$thr${gc:+-gc}$(rep_suffix)" l0 s0
  wait_quiet
  log "$name ($steps steps)"
  l0=$(load1); s0=$(cpustat)
  EDGE_SFT_ISA=$isa /usr/bin/time -v -o "$WORK/$name.time" \
    timeout -s INT "$RUN_TIMEOUT" "$EDGE" tune --lora --model "$MODEL" --data "$WORK/data/seq$seq.jsonl" \
    --out "$WORK/$name" --steps "$steps" --batch-size 1 --batch-tokens "$seq" --max-seq "$seq" --eval-split 0 --threads "$thr" \
    --lr 2e-4 --warmup 0 --schedule constant --eval-every 0 --save-every 0 \
    ${gc:+--grad-checkpoint} > "$WORK/$name.log" 2>&1 &
  local pid=$! rc=0
  # Samples other processes' CPU use over the measured steps (edge-sft is not instrumented).
  python3 benches/bench_report.py watch "$pid" "$WORK/$name/metrics.jsonl" --hz "$HZ" \
    > "$WORK/$name.watch" 2>/dev/null &
  local wpid=$!
  wait "$pid" || rc=$?
  wait "$wpid" || true
  if [ "$rc" != 0 ]; then log "$name: exit $rc (see $WORK/$name.log)"; fi
  python3 benches/bench_report.py edge "$WORK/$name" "$WORK/$name.time" --isa "$isa" --seq "$seq" \
    --threads "$thr" ${gc:+--gc} --load "$l0" "$(load1)" --stat "$s0" "$(cpustat)" --hz "$HZ" \
    --watch "$WORK/$name.watch" >> "$RESULTS"
  tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("    %s tok/s, %s MB, other procs %s cores" % (r.get("tokens_per_s"), r.get("peak_rss_mb"), r.get("other_cores")))' >&2
}

run_torch() { # dtype seq threads steps [records per step]
  local dtype=$1 seq=$2 thr=$3 steps=$4 rps=${5:-1}
  local name="torch-$dtype-s$seq-t$thr" l0 s0
  if [ "$rps" != 1 ]; then name="$name-r$rps"; fi
  name="$name$(rep_suffix)"
  wait_quiet
  log "$name ($steps steps)"
  l0=$(load1); s0=$(cpustat)
  /usr/bin/time -v -o "$WORK/$name.time" timeout "$RUN_TIMEOUT" "$PY" benches/reference/peft_bench.py --model "$MODEL" \
    --ids "$WORK/data/seq$seq.ids.jsonl" --steps "$steps" --threads "$thr" --dtype "$dtype" \
    --records-per-step "$rps" --max-seconds $((RUN_TIMEOUT / 2)) > "$WORK/$name.json" 2> "$WORK/$name.log" \
    || log "$name: exit $? (see $WORK/$name.log)"
  python3 benches/bench_report.py torch "$WORK/$name.json" "$WORK/$name.time" \
    --load "$l0" "$(load1)" --stat "$s0" "$(cpustat)" --hz "$HZ" >> "$RESULTS"
  tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("    %s tok/s, %s MB, other procs %s cores" % (r.get("tokens_per_s"), r.get("peak_rss_mb"), r.get("other_cores")))' >&2
}

steps_for() { local v="$1_$2"; echo "${!v}"; }

for seq in $SEQS; do
  for thr in $THREADS; do
   for REP in $(seq 1 "$REPEAT"); do
    es=$(steps_for EDGE_STEPS "$seq"); ts=$(steps_for TORCH_STEPS "$seq")
    # Alternate: PyTorch, edge-sft, PyTorch, edge-sft, ...
    run_torch fp32 "$seq" "$thr" "$ts"
    for isa in $ISAS; do
      case "$isa" in
        scalar) if [ "$seq" = 256 ]; then run_edge scalar "$seq" "$thr" "$SCALAR_STEPS"; fi ;;
        *) run_edge "$isa" "$seq" "$thr" "$es" ;;
      esac
      if [ "$isa" = "$BEST" ]; then run_torch bf16 "$seq" "$thr" "$ts"; fi
      # Issue 4's best PyTorch row batches 4 records per step (more tokens per weight pass).
      if [ "$isa" = "$BEST" ] && [ "$seq" = 256 ] && [ "$thr" = 2 ]; then
        run_torch bf16 "$seq" "$thr" "$ts" 4
      fi
    done
    if [ "$seq" = 1024 ] && [ "$thr" = 2 ]; then run_edge "$BEST" "$seq" "$thr" "$es" gc; fi
   done
  done
done

# --- report --------------------------------------------------------------------------------------
vers=$("$PY" -c 'import platform, torch, transformers, peft; print("python %s, torch %s, transformers %s, peft %s" % (platform.python_version(), torch.__version__, transformers.__version__, peft.__version__))' 2>/dev/null)
rustc_v=$(rustc --version 2>/dev/null || echo "rustc ?")
edge_v=$("$EDGE" --version 2>/dev/null || echo "edge-sft ?")
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' \
  | grep -xE 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_fp16|avx512_vnni|amx_tile|amx_bf16|amx_int8' \
  | paste -sd' ' -)
EBENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
EBENCH_COMMAND="benches/train_bench.sh${*:+ $*}" \
EBENCH_COMMIT="$COMMIT" \
EBENCH_DIRTY="$DIRTY" \
EBENCH_BINARY_MTIME="$BIN_MTIME$STALE" \
EBENCH_SRC_COMMIT="$SRC_COMMIT" \
EBENCH_CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1) \
EBENCH_CPUS=$(nproc) \
EBENCH_CORES="$(lscpu | sed -n 's/^Core(s) per socket: *//p' | head -1) cores/socket, $(lscpu | sed -n 's/^Thread(s) per core: *//p' | head -1) thread(s)/core" \
EBENCH_MEM_MB=$(free -m | awk '/^Mem:/{print $2}') \
EBENCH_FLAGS="${flags:-none of avx2/avx512/amx}" \
EBENCH_VIRT=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1) \
EBENCH_VERSIONS="$edge_v ($rustc_v); $vers" \
EBENCH_MODEL="$MODEL" \
EBENCH_NICE="$NICENESS" \
EBENCH_REPEAT="$REPEAT" \
python3 - "$WORK/machine.json" <<'PY'
import json, os, sys
m = {k[7:].lower(): v for k, v in os.environ.items() if k.startswith("EBENCH_")}
m["virt"] = ("%s virtual machine" % m["virt"]) if m["virt"] else "bare metal or unknown hypervisor"
json.dump(m, open(sys.argv[1], "w"), indent=1)
PY
mkdir -p "$(dirname "$OUT")"
python3 benches/bench_report.py table "$RESULTS" "$WORK/machine.json" "$OUT"
log "report: $OUT (runs and logs in $WORK)"
