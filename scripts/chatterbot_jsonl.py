#!/usr/bin/env python3
"""Turn chatterbot-corpus conversations (models/chatterbot_corpus/english/*.yml, fetched by
scripts/fetch_model.sh) into edge-sft JSONL: a {"messages": [...]} record per conversation,
user and assistant alternating. Records are split deterministically (by a hash of the text)
into a training file and a held-out file."""
import glob, hashlib, json, os, sys

try:
    import yaml
except ImportError:
    sys.exit("pyyaml is needed: python3 -m pip install pyyaml")

src = sys.argv[1] if len(sys.argv) > 1 else "models/chatterbot_corpus/english"
out_dir = sys.argv[2] if len(sys.argv) > 2 else "models"
heldout_percent = 10

train, held = [], []
seen = set()
for path in sorted(glob.glob(os.path.join(src, "*.yml"))):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    for conv in doc.get("conversations") or []:
        turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
        if len(turns) < 2:
            continue
        if len(turns) % 2:
            turns = turns[:-1]
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        key = json.dumps(msgs, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
        (held if bucket < heldout_percent else train).append({"messages": msgs})

for name, recs in [("chatterbot_train.jsonl", train), ("chatterbot_heldout.jsonl", held)]:
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{os.path.join(out_dir, name)}: {len(recs)} records")
