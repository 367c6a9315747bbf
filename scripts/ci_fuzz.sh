#!/usr/bin/env bash
# CI's short fuzzing pass (issue 16): every target for FUZZ_SECONDS (default 60) from the
# committed seeds plus whatever corpus earlier runs left. Installs the nightly toolchain and
# cargo-fuzz when they are missing. A crash, leak, OOM or timeout fails CI; its input is in
# fuzz/artifacts/<target>/ (docs/fuzzing.md says how to turn it into a regression test).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
