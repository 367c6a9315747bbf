#!/usr/bin/env bash
# Peak RSS of `edge-sft eval` on the real model with ~512-token records (the model is mapped,
# not copied; the target is < 300 MB). Prints the figure and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh >/dev/null
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build --release --quiet
DATA=$(mktemp --suffix=.jsonl)
trap 'rm -f "$DATA"' EXIT
python3 - "$DATA" <<'PY'
import json, random, sys
random.seed(1)
words = ("the of and to in is was for on that with as by it at from his an were are which this be or "
         "has had not but its they their one new after first also more two who other been").split()
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        p = " ".join(random.choice(words) for _ in range(240))
        r = " ".join(random.choice(words) for _ in range(240))
        f.write(json.dumps({"prompt": p, "response": r}) + "\n")
PY
/usr/bin/time -v target/release/edge-sft eval --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --data "$DATA" --json 2>"$DATA.time" | tee /dev/stderr >/dev/null
grep -E "Maximum resident set size|Elapsed" "$DATA.time"
rm -f "$DATA.time"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
