#!/usr/bin/env bash
# ARM CI: cross-build for aarch64, run the kernel and unit tests under qemu-aarch64 on two CPU
# models, smoke-test the aarch64 edge-sft binary against the x86 one, and check the library
# for Android. Self-contained and idempotent: installs what it needs (apt, rustup) first.
#
#   -cpu max         every optional feature qemu has (fp16, dotprod, FHM, ...): fast paths
#   -cpu cortex-a72  Raspberry Pi 4: plain NEON only, proving the fallback dispatch
#
# Environment: ARM_CI_CPUS (default "max cortex-a72"), ARM_CI_TESTS (integration tests to run,
# default below), ARM_CI_RTOL (default 1e-4: relative tolerance aarch64 vs x86).
#
# On a CPU model with FEAT_FP16 the PyTorch golden tests among ARM_CI_TESTS (train_golden,
# model_golden, train_grad) run once more with EDGE_SFT_ISA=neonfp16, the opt-in f16-weight
# path, at its documented tolerance (tests/common/mod.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. targets/cross-env.sh

TRIPLE=aarch64-unknown-linux-gnu
read -r -a CPUS <<<"${ARM_CI_CPUS:-max cortex-a72}"
read -r -a TESTS <<<"${ARM_CI_TESTS:-kernels quant_blocks quant_kquants kquant_model model_golden train_golden train_grad data_records}"
RTOL=${ARM_CI_RTOL:-1e-4}
TINY=tests/golden/tiny
GGUF=$TINY/llama/q8_0.gguf
RECORDS=$TINY/records.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Tests that need the real SmolLM2 model skip when it is absent; qemu is too slow for it.
export EDGE_SFT_MODEL=/nonexistent
unset EDGE_SFT_ISA

failures=()
fail() {
    echo "FAIL: $*"
    failures+=("$*")
}
phase_start=$SECONDS
phase() {
    echo
    echo "==== $* ($((SECONDS - phase_start)) s so far)"
}
q() { # q CPU EXE ARGS...: run an aarch64 executable under qemu
    local cpu=$1
    shift
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$@" </dev/null
}

# Compare JSON lines of FILE_B (aarch64) against FILE_A (x86): integers and strings equal,
# floats within RTOL relative; timing fields ignored. Prints both values for every float.
compare_json() {
    python3 - "$@" "$RTOL" <<'PY'
import json, sys
label, fa, fb, rtol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def rows(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
A, B = rows(fa), rows(fb)
ok = len(A) == len(B) and len(A) > 0
if not ok:
    print(f"  {label}: {len(A)} x86 rows vs {len(B)} aarch64 rows")
skip = ("per_s", "elapsed", "seconds", "time")
worst = 0.0
for i, (a, b) in enumerate(zip(A, B)):
    for k in sorted(set(a) | set(b)):
        if any(s in k for s in skip):
            continue
        x, y = a.get(k), b.get(k)
        if isinstance(x, float) or isinstance(y, float):
            try:
                rel = abs(x - y) / max(abs(x), abs(y), 1e-30)
            except TypeError:
                rel = float("inf")
            worst = max(worst, rel)
            bad = not rel <= rtol
            ok &= not bad
            print(f"  {label}[{i}].{k:<14} x86 {x!r:<24} aarch64 {y!r:<24} rel {rel:.1e}{'  <-- over ' + str(rtol) if bad else ''}")
        elif x != y:
            ok = False
            print(f"  {label}[{i}].{k}: x86 {x!r} != aarch64 {y!r}")
print(f"  {label}: {'OK' if ok else 'MISMATCH'} (worst relative difference {worst:.1e}, tolerance {rtol:g})")
sys.exit(0 if ok else 1)
PY
}

# Names of the AT_HWCAP bits (Linux arch/arm64 uapi hwcap.h) that matter to the kernels.
decode_hwcap() {
    python3 - "$1" <<'PY'
import sys
bits = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve", 23: "asimdfhm"}
v = int(sys.argv[1], 16)
print(" ".join(n for b, n in bits.items() if v >> b & 1) or "none")
PY
}

# ---------------------------------------------------------------------------------------------
phase "setup: cross toolchain, qemu, rustup targets"
edge_cross_setup_aarch64 qemu
qemu-aarch64 --version | head -1
rustc --version

phase "cross-build the aarch64 test binaries and edge-sft (cargo test --release --no-run)"
build_start=$SECONDS
test_args=(--lib)
for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
cargo test --release --locked --target "$TRIPLE" --no-run "${test_args[@]}" \
    --message-format=json-render-diagnostics >"$TMP/build.json"
cargo build --release --locked --target "$TRIPLE" --bin edge-sft
# name<TAB>executable for every test harness just built.
python3 - "$TMP/build.json" >"$TMP/tests.tsv" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(f'{m["target"]["name"]}\t{m["executable"]}')
PY
ARM_BIN=target/$TRIPLE/release/edge-sft
file -b "$ARM_BIN" | cut -d, -f1-2
cut -f1 "$TMP/tests.tsv" | tr '\n' ' '
echo
echo "cross-build: $((SECONDS - build_start)) s"

phase "build the x86 edge-sft (reference for the smoke test)"
cargo build --release --locked --bin edge-sft
X86_BIN=target/release/edge-sft

# ---------------------------------------------------------------------------------------------
emu_start=$SECONDS
for cpu in "${CPUS[@]}"; do
    phase "qemu-aarch64 -cpu $cpu: unit and kernel tests"
    # The guest's AT_HWCAP as the arm64 glibc sees it, decoded for the features the kernels use.
    hwcap=$(q "$cpu" -E LD_SHOW_AUXV=1 "$ARM_BIN" --version 2>/dev/null | awk '$1 == "AT_HWCAP:" { print $2 }')
    echo "cpu model: $cpu   AT_HWCAP=0x${hwcap:-?} ($(decode_hwcap "${hwcap:-0}"))"
    kernels=$(q "$cpu" "$ARM_BIN" inspect --json "$GGUF" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_kernels"])') ||
        fail "-cpu $cpu: edge-sft inspect"
    echo "cpu model: $cpu   dispatched kernel path (edge-sft inspect --json: cpu_kernels): ${kernels:-?}"
    while IFS=$'\t' read -r name exe; do
        t0=$SECONDS
        if q "$cpu" "$exe" -q >"$TMP/test-$cpu-$name.log" 2>&1; then
            echo "  -cpu $cpu  $name: $(grep -E '^test result' "$TMP/test-$cpu-$name.log" | tail -1) [$((SECONDS - t0)) s]"
        else
            cat "$TMP/test-$cpu-$name.log"
            fail "-cpu $cpu: test binary $name"
        fi
    done <"$TMP/tests.tsv"

    # The reduced-precision path, where this CPU model has it (inspect reports the path it
    # really runs; a CPU without FEAT_FP16 falls back to neon).
    fp16=$(EDGE_SFT_ISA=neonfp16 q "$cpu" "$ARM_BIN" inspect --json "$GGUF" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_kernels"])') || fp16=""
    if [ "$fp16" = neonfp16 ]; then
        phase "qemu-aarch64 -cpu $cpu: golden tests on EDGE_SFT_ISA=neonfp16"
        while IFS=$'\t' read -r name exe; do
            case $name in train_golden | model_golden | train_grad) ;; *) continue ;; esac
            t0=$SECONDS
            if EDGE_SFT_ISA=neonfp16 q "$cpu" "$exe" -q >"$TMP/test-$cpu-fp16-$name.log" 2>&1; then
                echo "  -cpu $cpu neonfp16  $name: $(grep -E '^test result' "$TMP/test-$cpu-fp16-$name.log" | tail -1) [$((SECONDS - t0)) s]"
            else
                cat "$TMP/test-$cpu-fp16-$name.log"
                fail "-cpu $cpu: test binary $name on neonfp16"
            fi
        done <"$TMP/tests.tsv"
    else
        echo "cpu model: $cpu   no neonfp16 path (${fp16:-?}): golden tests on neonfp16 skipped"
    fi

    phase "qemu-aarch64 -cpu $cpu: smoke test vs x86 (eval, tune 3 steps)"
    eval_args=(eval --json --model "$GGUF" --data "$RECORDS")
    "$X86_BIN" "${eval_args[@]}" 2>/dev/null >"$TMP/eval-x86.json" || fail "x86 eval"
    if q "$cpu" "$ARM_BIN" "${eval_args[@]}" 2>/dev/null >"$TMP/eval-arm-$cpu.json"; then
        compare_json "eval $cpu" "$TMP/eval-x86.json" "$TMP/eval-arm-$cpu.json" || fail "-cpu $cpu: eval differs from x86"
    else
        fail "-cpu $cpu: eval"
    fi
    tune_args=(tune --lora --model "$TINY/llama/hf_f32" --data "$RECORDS" --steps 3 --threads 1 --batch-size 64 --batch-tokens 4096 --eval-split 0)
    rm -rf "$TMP/tune-x86" "$TMP/tune-arm"
    "$X86_BIN" "${tune_args[@]}" --out "$TMP/tune-x86" >/dev/null 2>&1 || fail "x86 tune"
    if q "$cpu" "$ARM_BIN" "${tune_args[@]}" --out "$TMP/tune-arm" >"$TMP/tune-arm.log" 2>&1; then
        compare_json "tune $cpu" "$TMP/tune-x86/metrics.jsonl" "$TMP/tune-arm/metrics.jsonl" ||
            fail "-cpu $cpu: tune metrics differ from x86"
    else
        cat "$TMP/tune-arm.log"
        fail "-cpu $cpu: tune"
    fi
done
emu_secs=$((SECONDS - emu_start))

# ---------------------------------------------------------------------------------------------
phase "cargo check --lib --target aarch64-linux-android (no NDK: onig's C compiled by aarch64 gcc)"
edge_cross_setup_android_check
if cargo check --locked --lib --target aarch64-linux-android; then
    echo "android check: OK"
else
    fail "cargo check --lib --target aarch64-linux-android"
fi

echo
echo "==== ARM CI summary"
echo "emulated part (tests + smoke, ${#CPUS[@]} CPU models): ${emu_secs} s; total $((SECONDS - phase_start)) s"
if [ ${#failures[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "all passed on: ${CPUS[*]}"
