#!/usr/bin/env bash
# Regenerate the man pages in docs/man/ from the clap definitions (edge-sft's hidden `man`
# subcommand, clap_mangen). Read one with: man -l docs/man/edge-sft-tune.1
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
rm -rf docs/man
"${CARGO_TARGET_DIR:-target}/release/edge-sft" man --out docs/man
