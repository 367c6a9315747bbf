#!/usr/bin/env python3
"""Synthetic benchmark records of an exact token length, for benches/train_bench.sh.

Each record is {"prompt": ..., "response": ...} made of plain English words, built so that the
model's chat template (SmolLM2's ChatML, default system prompt included) renders it to exactly
SEQ tokens: about SEQ/2 prompt tokens (everything up to and including
"<|im_start|>assistant\\n") and SEQ/2 response tokens (the words, "<|im_end|>" and the "\\n"
after it). Only words that are a single token both with and without a leading space are used,
so the count is exact by construction; it is checked against the tokenizer anyway.

For each SEQ it writes, into OUTDIR:
  seqSEQ.jsonl      the records (what edge-sft reads)
  seqSEQ.ids.jsonl  {"ids": [...], "labels": [...]} per record: apply_chat_template ids, labels
                    = ids on response tokens and -100 on prompt tokens (what peft_bench.py reads,
                    so the reference trains on exactly the same tokens without loading a tokenizer)

The tokenizer is transformers' tokenizer built from the GGUF (AutoTokenizer, gguf_file=). Its
pre-tokenizer differs from SmolLM2's only on digits, and these records have none.

Run: python benches/reference/bench_data.py --model models/X.gguf --seq 256 512 --records 8 --outdir D
"""

import argparse
import json
import os
import sys
import random

# Common English words; the ones that are not a single token either way are dropped at run time.
WORDS = """
the of and to in is was for on are with as be at by this had not but from or have an they
which you were her all she there would their we him been has when who will more no if out so
said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three small house water light place find great word hand part line name
tree river stone paper garden window table chair bread apple green blue red yellow black white
happy quiet early late open close warm cold soft hard bright dark simple clear fresh strong
walk read write speak listen learn teach build carry start begin help move live play run sing
city road town field forest mountain ocean island summer winter spring morning evening night
friend family mother father child teacher doctor farmer music story letter question answer
""".split()


def load_tokenizer(model):
    from transformers import AutoTokenizer

    d, f = os.path.split(os.path.abspath(model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if not tok.chat_template:
        # A Gemma base GGUF carries no template; edge-sft then uses its built-in Gemma turn
        # format, the same text as tests/reference/common.py's GEMMA_TEMPLATE.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                        "tests", "reference"))
        from common import GEMMA_TEMPLATE
        tok.chat_template = GEMMA_TEMPLATE
    return tok


def ids_of(enc):
    """apply_chat_template returns a list in some transformers versions, a BatchEncoding in others."""
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def single_token_words(tok):
    def one(form):
        return (len(tok.encode(form, add_special_tokens=False)) == 1
                and len(tok.encode(" " + form, add_special_tokens=False)) == 1)

    # Lowercase words; the capitalized form is kept only to start a sentence.
    out = [w for w in dict.fromkeys(WORDS) if one(w) and one(w.capitalize())]
    if len(out) < 50:
        raise SystemExit("bench_data: too few single-token words (%d); wrong tokenizer?" % len(out))
    return out


def encode(tok, rec):
    """(ids, labels) of one record: the full rendering and the prompt prefix, as DESIGN.md says."""
    user = [{"role": "user", "content": rec["prompt"]}]
    full = ids_of(tok.apply_chat_template(user + [{"role": "assistant", "content": rec["response"]}],
                                          tokenize=True))
    prefix = ids_of(tok.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
    if full[:len(prefix)] != prefix:
        raise SystemExit("bench_data: prompt rendering is not a prefix of the full rendering")
    # Scored: the response through its end-of-turn token (eos, "<|im_end|>"), not the "\n" after it.
    eot = tok.eos_token_id
    if eot not in full[len(prefix):]:
        eot = tok.convert_tokens_to_ids("<end_of_turn>")  # Gemma's turn end (its eos is <eos>)
    end = full.index(eot, len(prefix)) + 1
    labels = [-100] * len(prefix) + full[len(prefix):end] + [-100] * (len(full) - end)
    return full, labels


def text(rng, words, n):
    ws = [rng.choice(words) for _ in range(n)]
    ws[0] = ws[0].capitalize()
    return " ".join(ws)


def make_records(tok, seq, n, seed):
    words = single_token_words(tok)
    # Template overhead, measured on a one-word record: prompt = p0 + words, response = r0 + words.
    full, labels = encode(tok, {"prompt": "the", "response": "the"})
    prompt_len = next(i for i, x in enumerate(labels) if x != -100)
    p0 = prompt_len - 1
    r0 = len(full) - (p0 + 1) - 1
    want_p = seq // 2
    want_r = seq - want_p
    if want_p - p0 < 1 or want_r - r0 < 1:
        raise SystemExit("bench_data: seq %d is shorter than the template overhead" % seq)
    rng = random.Random(seed * 1000003 + seq)
    recs, encs = [], []
    for _ in range(n):
        rec = {"prompt": text(rng, words, want_p - p0), "response": text(rng, words, want_r - r0)}
        ids, lab = encode(tok, rec)
        if len(ids) != seq:
            raise SystemExit("bench_data: record renders to %d tokens, wanted %d" % (len(ids), seq))
        recs.append(rec)
        encs.append({"ids": ids, "labels": lab})
    return recs, encs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the .gguf the benchmark trains")
    ap.add_argument("--seq", type=int, nargs="+", required=True)
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--outdir", required=True)
    a = ap.parse_args()
    tok = load_tokenizer(a.model)
    os.makedirs(a.outdir, exist_ok=True)
    for seq in a.seq:
        recs, encs = make_records(tok, seq, a.records, a.seed)
        with open(os.path.join(a.outdir, "seq%d.jsonl" % seq), "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(a.outdir, "seq%d.ids.jsonl" % seq), "w") as f:
            for e in encs:
                f.write(json.dumps(e) + "\n")
        lab = encs[0]["labels"]
        prompt = next(i for i, x in enumerate(lab) if x != -100)
        scored = sum(1 for x in lab if x != -100)
        print("bench_data: seq %d: %d records of %d tokens: %d prompt, %d response (%d scored)"
              % (seq, len(recs), seq, prompt, seq - prompt, scored))


if __name__ == "__main__":
    main()
