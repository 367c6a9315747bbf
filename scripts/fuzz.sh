#!/usr/bin/env bash
# Build and run every fuzz target for a fixed time each (docs/fuzzing.md).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New corpus entries
# go to fuzz/corpus/<target>/ (ignored by git except the committed seed-* files); crashes to
# fuzz/artifacts/<target>/. Exits non-zero if any target finds a crash, leak, OOM or timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(gguf_model gguf_vocab chat_template hf_dir peft_adapter gguf_adapter jsonl_records)
fi
# -s none: the targets are safe Rust over bounds-checked readers; debug assertions (overflow
# checks) stay on. Use `-s address` to also check the unsafe kernels a load reaches.
cargo +nightly fuzz build -s none
status=0
failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    if ! cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1; then
        status=1
        failed+=("$t")
    fi
done
# The fuzzers' own output is long; repeat what failed at the end, with each artifact's bytes
# (base64, first 4 KiB), so a CI log's tail is enough to reproduce it.
if [ $status -ne 0 ]; then
    echo "== fuzzing found problems in: ${failed[*]}"
    for t in "${failed[@]}"; do
        for f in fuzz/artifacts/"$t"/*; do
            [ -f "$f" ] || continue
            echo "-- $f ($(stat -c %s "$f") bytes), base64:"
            head -c 4096 "$f" | base64 -w 0
            echo
        done
    done
fi
exit $status
