#!/usr/bin/env python3
"""Does the daemon make the model more a person's own, day by day, without forgetting? (#12)

A simulated person ("Maya") writes prompt→response pairs into the daemon's inbox, one day at a
time. Her pairs carry facts the base model cannot know (her dog, her café, her bike, her sister's
city, her standing order, ...) and one consistent style (short, first-person, ends with
"— M."). Each day's pairs are new phrasings and new combinations, so the next day's pairs test
what was learned rather than what was memorised.

After each day the daemon runs one round (`edge-sft daemon --once`: train from the current
adapter on the new pairs plus a replay sample, gate, publish). Then the script scores, with
`edge-sft eval`:
  personal  the NEXT day's pairs (not yet in the inbox, never trained on), with the published
            adapter (`state/adapters/current`), and with the base model;
  general   a fixed general chat set (chatterbot test pairs) with the same adapter.

The personal NLL should fall round over round; the general NLL should rise by less than 2%.

  python3 benches/reference/sft_datasets.py      # once: benches/data/chatterbot_test.jsonl
  python3 benches/personalization.py [--days 6] [--out benches/results/personalization.md]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("EDGE_SFT_BIN", os.path.join(ROOT, "target", "release", "edge-sft"))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
GENERAL = os.path.join(ROOT, "benches", "data", "chatterbot_test.jsonl")
# General pairs mixed into each round (`general_replay`): chatterbot training pairs, disjoint
# from the gate's test pairs.
GENERAL_REPLAY = os.path.join(ROOT, "benches", "data", "chatterbot_train200.jsonl")

SIGN = " — M."
FACTS = [
    (["What's my dog called?", "Remind me of my dog's name.", "What is the name of my dog?",
      "Who is my dog again?"],
     ["Pepper, my grey whippet.", "My dog is Pepper, the grey whippet.",
      "Pepper. Grey whippet, four years old."]),
    (["Where do I get coffee?", "Which café do I go to?", "Where's my usual coffee place?",
      "What café do I like?"],
     ["Café Lumen on Harbour Street.", "Lumen, the café on Harbour Street.",
      "Always Café Lumen, Harbour Street."]),
    (["What do I order there?", "What's my usual order?", "What coffee do I drink?",
      "Order my usual coffee for me."],
     ["An oat flat white, no sugar.", "Oat flat white, no sugar, as always.",
      "My usual: oat flat white, no sugar."]),
    (["Where does my sister live?", "Which city is my sister in?", "Where is Lena now?",
      "Remind me where my sister lives."],
     ["Lena lives in Tromsø.", "My sister Lena is in Tromsø.", "Tromsø, up north, with Lena."]),
    (["What bike do I ride?", "Which bike do I have?", "What's my bicycle?",
      "Tell me about my bike."],
     ["A green Bianchi road bike.", "My green Bianchi, the road bike.",
      "The green Bianchi road bike."]),
    (["When is my climbing class?", "What day do I climb?", "When do I go bouldering?",
      "Remind me when climbing is."],
     ["Thursdays at 7 pm at Crux Hall.", "Climbing is Thursday, 7 pm, Crux Hall.",
      "Thursday evenings, 7 pm, Crux Hall."]),
    (["What's my favourite book?", "Which book do I always reread?", "Name my favourite novel.",
      "What book do I love most?"],
     ["The Left Hand of Darkness.", "Le Guin's The Left Hand of Darkness.",
      "The Left Hand of Darkness, every winter."]),
    (["What's my job?", "What do I do for work?", "Where do I work?",
      "Remind me what I work as."],
     ["I'm a ferry engineer at Nordline.", "Ferry engineer, Nordline.",
      "I keep Nordline's ferries running: engineer."]),
]
OPENERS = ["", "Quick one: ", "Hey, ", "Sorry, again: ", "Hmm. ", "Before I forget: "]


def day_pairs(day: int, n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        qs, answers = rng.choice(FACTS)
        prompt = rng.choice(OPENERS) + rng.choice(qs)
        out.append({"prompt": prompt, "response": rng.choice(answers) + SIGN,
                    "day": day})
    return out


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n")


def eval_nll(data: str, adapter: str | None, threads: int) -> float:
    cmd = [BIN, "eval", "--model", MODEL, "--data", data, "--json", "--threads", str(threads)]
    if adapter:
        cmd += ["--adapter", adapter, "--adapter-only"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["mean_nll"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--pairs-per-day", type=int, default=30)
    ap.add_argument("--steps", type=int, default=0,
                    help="the daemon's step_budget per round (0: the daemon's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edge-sft-personalization")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "personalization.md"))
    a = ap.parse_args()
    if not os.path.exists(GENERAL):
        sys.exit(f"{GENERAL} is missing: run benches/reference/sft_datasets.py first")

    shutil.rmtree(a.work, ignore_errors=True)
    inbox, state = os.path.join(a.work, "inbox"), os.path.join(a.work, "state")
    os.makedirs(inbox)
    cfg = os.path.join(a.work, "edge-sft.toml")
    with open(cfg, "w") as f:
        f.write(f'model = "{MODEL}"\ninbox = "{inbox}"\nstate = "{state}"\n'
                f'general_set = "{GENERAL}"\ngeneral_replay = "{GENERAL_REPLAY}"\n'
                'min_new_pairs = 10\n'
                + (f'step_budget = {a.steps}\n' if a.steps else "")
                + f'threads = {a.threads}\n'
                '[triggers]\nrequire_ac = false\nmax_load = 0\nmax_temp_c = 0\nwindow = ""\n')
    rng = random.Random(7)
    days = [day_pairs(d, a.pairs_per_day, rng) for d in range(a.days + 1)]
    general_base = eval_nll(GENERAL, None, a.threads)
    rows = []
    for d in range(a.days):
        # Day d's pairs arrive in the inbox (appended, as an app would), then one round.
        with open(os.path.join(inbox, "maya.jsonl"), "a") as f:
            for r in days[d]:
                f.write(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n")
        t0 = time.monotonic()
        p = subprocess.run([BIN, "daemon", "--config", cfg, "--once"], capture_output=True,
                           text=True)
        secs = time.monotonic() - t0
        if p.returncode != 0:
            sys.exit(f"daemon round failed on day {d}:\n{p.stderr[-3000:]}")
        decision = None
        dec_path = os.path.join(state, "decisions.jsonl")
        if os.path.exists(dec_path):
            with open(dec_path) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            decision = lines[-1] if lines else None
            tries = [x for x in lines if decision and x["round"] == decision["round"]]
        else:
            tries = []
        nxt = os.path.join(a.work, f"next_day_{d + 1}.jsonl")
        write_jsonl(nxt, days[d + 1])
        current = os.path.join(state, "adapters", "current")
        has = os.path.exists(current)
        row = {
            "day": d + 1,
            "pairs_in_inbox": a.pairs_per_day * (d + 1),
            "decision": ("promoted" if decision.get("promoted") else "rejected: " + decision.get("reason", ""))
            + (f" (try {len(tries)}, lr {decision.get('lr', 0):.1e})" if len(tries) > 1 else "")
            if decision else "no round",
            "tries": [{"lr": x.get("lr"), "promoted": x["promoted"], "general_rise": x.get("general_rise"),
                       "personal": x.get("personal")} for x in tries],
            "steps": (decision or {}).get("steps"),
            "round_s": round(secs, 1),
            "personal_base": eval_nll(nxt, None, a.threads),
            "personal": eval_nll(nxt, current, a.threads) if has else None,
            "general": eval_nll(GENERAL, current, a.threads) if has else general_base,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = ["# Personalization, day by day (issue 12)", "",
             "Made by `python3 benches/personalization.py` (see its docstring). Model: "
             "SmolLM2-135M-Instruct Q4_1. A simulated person's pairs (facts the base cannot know, "
             f"one style) arrive {a.pairs_per_day} a day; after each day `edge-sft daemon --once` "
             f"runs one round (at most {a.steps or 'the default'} steps from the current adapter, replay of "
             "older pairs and of 16 general chatterbot training pairs, gate, and up to two retries at half "
             "the learning rate when the general NLL rose past the 2% margin, publish). Personal = mean NLL per response token on the NEXT day's pairs (never "
             "trained on) with the published adapter; general = the 60 chatterbot test pairs.",
             "", f"General set with the base model: {general_base:.4f}.", "",
             "| after day | decision | personal NLL (base) | personal NLL (current) | general NLL | general vs base | round s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        pers = f"{r['personal']:.4f}" if r["personal"] is not None else "–"
        lines.append(f"| {r['day']} | {r['decision']} | {r['personal_base']:.4f} | {pers} | "
                     f"{r['general']:.4f} | {(r['general'] / general_base - 1) * 100:+.2f}% | {r['round_s']} |")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(a.out.replace(".md", ".jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
