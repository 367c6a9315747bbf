#!/usr/bin/env python3
"""Deterministic SFT data sets for the fine-tuning quality benchmark (plain python3 + pyyaml).

Writes, into OUT (default benches/data/), three data sets, each as
  {name}_train1000.jsonl, _train200, _train100, _train50 and _train20.jsonl  (the smaller files are
  prefixes of the 1000 file) and {name}_test.jsonl (60 records, disjoint from every train record):

  chatterbot  {"prompt","response"} pairs from the chatterbot-corpus English conversations
              (models/chatterbot_corpus/english/*.yml): every consecutive (statement, reply) pair
              of a conversation. Deduplicated; pairs longer than 300 characters and pairs with
              an empty side are dropped. No test prompt equals a training prompt (compared
              case- and punctuation-insensitively).
  extract     {"prompt","response"}: a short booking/scheduling sentence in, one-line compact JSON
              out (6 intents, 5-6 phrasings each). One phrasing per intent and a few slot values
              (cities, names, restaurants...) are reserved for the test set; every test record
              has a slot-value combination absent from training, and every test record uses a
              held-out phrasing or at least one held-out value.
  instruct    {"instruction","input","output"}: 9 deterministic text tasks (sort, reverse, count
              words, uppercase, extract numbers, capital of a country, date to ISO, pluralize,
              add numbers) on random inputs. No test (task, input) pair appears in training.

Everything is driven by random.Random(SEED); the same corpus gives byte-identical files.

Run (from the repository root):
  python3 benches/reference/sft_datasets.py [OUT] [--corpus models/chatterbot_corpus/english]
"""

import argparse
import glob
import json
import os
import random
import re
import string
import sys

import yaml

SEED = 1234
SIZES = (20, 50, 100, 200, 1000)
N_TEST = 60
N_TRAIN = max(SIZES)


# ----------------------------------------------------------------------------- chatterbot
def _norm(s):
    return re.sub(r"[\W_]+", " ", s.lower()).strip()


def chatterbot(corpus_dir, rng):
    pairs = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):  # trivia.yml holds one conversation as a bare string
                continue
            conv = ["" if x is None else str(x).strip() for x in conv]
            for a, b in zip(conv, conv[1:]):
                pairs.append((a, b))
    n_raw = len(pairs)
    seen, uniq = set(), []
    for a, b in pairs:
        if not a or not b or len(a) + len(b) > 300 or (a, b) in seen:
            continue
        seen.add((a, b))
        uniq.append((a, b))
    # Test: prompts (normalized) that occur in exactly one pair, so nothing else is lost.
    by_prompt = {}
    for a, b in uniq:
        by_prompt.setdefault(_norm(a), []).append((a, b))
    singles = sorted(k for k, v in by_prompt.items() if len(v) == 1 and k)
    rng.shuffle(singles)
    test_keys = set(singles[:N_TEST])
    test = [by_prompt[k][0] for k in singles[:N_TEST]]
    train = [p for p in uniq if _norm(p[0]) not in test_keys]
    rng.shuffle(train)
    info = "%d raw pairs, %d kept after dedupe/filter, %d available for training" % (
        n_raw, len(uniq), len(train))
    if len(train) < N_TRAIN:
        info += " (FEWER than %d: train1000 holds all %d)" % (N_TRAIN, len(train))
    train = train[:N_TRAIN]
    mk = lambda p: {"prompt": p[0], "response": p[1]}
    return [mk(p) for p in train], [mk(p) for p in test], info


# ----------------------------------------------------------------------------- extract
CITIES = ["Paris", "Oslo", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Dublin",
          "London", "Warsaw", "Athens", "Zurich", "Brussels", "Amsterdam", "Helsinki",
          "Stockholm", "Budapest", "Munich", "Milan", "Boston", "Chicago", "Denver", "Seattle",
          "Toronto", "Montreal", "Tokyo", "Seoul", "Sydney", "Nairobi"]
CITIES_TEST = ["Copenhagen", "Lyon", "Porto", "Austin"]
NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Felix", "Grace", "Hugo", "Irene", "Jonas",
         "Karim", "Laura", "Marco", "Nina", "Omar", "Paula", "Quentin", "Rosa", "Sam", "Tara",
         "Victor", "Wendy", "Yusuf", "Zoe"]
NAMES_TEST = ["Mila", "Oscar", "Priya"]
RESTAURANTS = ["Luigi's", "The Golden Fork", "Sakura", "Casa Lola", "Blue Harbor", "Le Petit Bistro",
               "Spice Route", "The Green Table", "Olive Garden", "Dragon Palace", "Noma", "Taverna"]
RESTAURANTS_TEST = ["Red Lantern", "Chez Marie"]
TOPICS = ["budget", "hiring", "the roadmap", "sales", "the launch", "marketing", "security",
          "onboarding", "the contract", "design review", "quarterly goals", "customer feedback"]
TOPICS_TEST = ["the merger", "pricing"]
TASKS = ["call the dentist", "pay rent", "buy milk", "water the plants", "submit the report",
         "renew my passport", "pick up the kids", "book a haircut", "send the invoice",
         "return the library books", "email Sarah", "take my medicine"]
TASKS_TEST = ["feed the cat", "walk the dog"]
CARS = ["compact", "SUV", "van", "convertible", "sedan"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TIMES = ["7am", "8am", "9am", "10am", "11am", "noon", "1pm", "2pm", "3pm", "4pm", "5pm", "6pm",
         "7pm", "8pm", "9pm", "8:30am", "9:30am", "10:15am", "12:30pm", "3:45pm", "6:30pm",
         "7:30pm"]


def _date(rng):
    return "%s %d" % (rng.choice(MONTHS), rng.randint(1, 28))


# Each intent: (slot samplers, phrasings); the LAST phrasing is held out for the test set.
INTENTS = {
    "book_flight": (
        lambda r, C, N: {"from": r.choice(C), "to": r.choice(C), "date": _date(r),
                         "passengers": r.randint(1, 6)},
        [
            "Please book a flight from {from} to {to} on {date} for {passengers} passengers.",
            "I need {passengers} plane tickets from {from} to {to}, leaving on {date}, if possible.",
            "Can you get us on a flight to {to} from {from} on {date}? We are {passengers} people.",
            "Book {passengers} seats on a flight departing {from} for {to} on {date}, please.",
            "Hi! We want to fly from {from} to {to} on {date}, there will be {passengers} of us travelling.",
            "Could you find {passengers} seats flying out of {from} and landing in {to} on {date}?",
        ]),
    "book_table": (
        lambda r, C, N: {"restaurant": r.choice(N["rest"]), "date": _date(r),
                         "time": r.choice(TIMES[5:]), "people": r.randint(2, 10)},
        [
            "Reserve a table at {restaurant} for {people} people on {date} at {time}, please.",
            "Can I get a table for {people} at {restaurant} on {date}, around {time}?",
            "Please book {restaurant} for {date} at {time}, we are a group of {people}.",
            "I'd like dinner at {restaurant} on {date} at {time} for {people} guests, thanks.",
            "Hello, could you reserve {restaurant} at {time} on {date}? It will be {people} of us.",
            "We are {people} and want to eat at {restaurant} on {date}; book it for {time}.",
        ]),
    "schedule_meeting": (
        lambda r, C, N: {"with": r.choice(N["names"]), "date": _date(r),
                         "time": r.choice(TIMES[:16]), "topic": r.choice(N["topics"])},
        [
            "Schedule a meeting with {with} on {date} at {time} to talk about {topic}.",
            "Set up a call with {with} about {topic} on {date} at {time}, please.",
            "Can you put a meeting about {topic} with {with} in my calendar for {date} at {time}?",
            "I need to meet {with} on {date} at {time}; the subject is {topic}.",
            "Please arrange a {topic} discussion with {with} for {time} on {date}.",
            "Book time with {with} at {time} on {date} so we can go over {topic}.",
        ]),
    "book_hotel": (
        lambda r, C, N: {"city": r.choice(C), "checkin": _date(r), "nights": r.randint(1, 9),
                         "guests": r.randint(1, 4)},
        [
            "Book a hotel room in {city} for {guests} guests from {checkin} for {nights} nights.",
            "I need a hotel in {city} checking in on {checkin}, {nights} nights, {guests} guests.",
            "Find us a place to stay in {city} from {checkin}; {guests} people, {nights} nights in total.",
            "Please reserve {nights} nights in a {city} hotel starting {checkin} for {guests} adults.",
            "Can you get a room for {guests} in {city}? We arrive on {checkin} and stay {nights} nights.",
            "We will be in {city} for {nights} nights from {checkin}, so book a hotel for {guests} people.",
        ]),
    "rent_car": (
        lambda r, C, N: {"city": r.choice(C), "pickup": _date(r), "days": r.randint(1, 14),
                         "car": r.choice(CARS)},
        [
            "Rent me a {car} in {city} from {pickup} for {days} days, please.",
            "I want to hire a {car} in {city}, picking it up on {pickup} and keeping it {days} days.",
            "Can you reserve a {car} for {days} days starting {pickup} at the {city} airport?",
            "Please book a rental car in {city}, a {car}, from {pickup} for {days} days.",
            "We need a {car} for {days} days when we land in {city} on {pickup}.",
            "Get me a {car} rental, {days} days long, with pickup in {city} on {pickup}.",
        ]),
    "set_reminder": (
        lambda r, C, N: {"task": r.choice(N["tasks"]), "date": _date(r),
                         "time": r.choice(TIMES)},
        [
            "Remind me to {task} on {date} at {time}, please.",
            "Set a reminder for {date} at {time} to {task}.",
            "Please don't let me forget to {task}; remind me at {time} on {date}.",
            "Can you add a reminder to {task} at {time} on {date}?",
            "On {date} at {time} I have to {task}, so please remind me.",
            "I must {task} on {date}. Give me a reminder at {time}.",
        ]),
}


def _extract_record(rng, intent, heldout_phrase, heldout_values):
    sampler, phrasings = INTENTS[intent]
    if heldout_values:
        C, names = CITIES + CITIES_TEST, {"rest": RESTAURANTS + RESTAURANTS_TEST,
                                          "names": NAMES + NAMES_TEST,
                                          "topics": TOPICS + TOPICS_TEST,
                                          "tasks": TASKS + TASKS_TEST}
    else:
        C, names = CITIES, {"rest": RESTAURANTS, "names": NAMES, "topics": TOPICS,
                            "tasks": TASKS}
    while True:
        slots = sampler(rng, C, names)
        if slots.get("from") is not None and slots["from"] == slots["to"]:
            continue
        break
    phrase = phrasings[-1] if heldout_phrase else rng.choice(phrasings[:-1])
    sentence = phrase.format(**slots)
    sentence = sentence[0].upper() + sentence[1:]
    out = {"intent": intent}
    out.update(slots)
    return {"prompt": sentence, "response": json.dumps(out, separators=(",", ":"))}, slots


HELD_VALUES = set(CITIES_TEST + NAMES_TEST + RESTAURANTS_TEST + TOPICS_TEST + TASKS_TEST)


def extract(rng):
    intents = sorted(INTENTS)
    train, combos, prompts = [], set(), set()
    while len(train) < N_TRAIN:
        intent = rng.choice(intents)
        rec, slots = _extract_record(rng, intent, False, False)
        key = (intent,) + tuple(sorted(slots.items()))
        if key in combos or rec["prompt"] in prompts:
            continue
        combos.add(key)
        prompts.add(rec["prompt"])
        train.append(rec)
    test, n_phr, n_val = [], 0, 0
    i = 0
    while len(test) < N_TEST:
        intent = intents[i % len(intents)]
        # A third held-out phrasing only, a third held-out values only, a third both.
        kind = (i // len(intents)) % 3
        hp, hv = kind in (0, 2), kind in (1, 2)
        rec, slots = _extract_record(rng, intent, hp, hv)
        key = (intent,) + tuple(sorted(slots.items()))
        if key in combos or rec["prompt"] in prompts:
            continue
        if hv and not (set(map(str, slots.values())) & HELD_VALUES):
            continue  # make sure a held-out value was actually drawn
        combos.add(key)
        prompts.add(rec["prompt"])
        test.append(rec)
        n_phr += hp
        n_val += hv
        i += 1
    info = "%d intents; test: %d with a held-out phrasing, %d with held-out values" % (
        len(intents), n_phr, n_val)
    return train, test, info


# ----------------------------------------------------------------------------- instruct
WORDS = ("apple river stone cloud garden window silver music yellow forest candle bridge "
         "ocean pencil tiger violin winter rocket basket mirror planet orange castle button "
         "dragon ladder monkey engine harbor jacket kettle lemon meadow needle orchid pepper "
         "quartz rabbit saddle tunnel umbrella valley walnut zebra anchor blanket copper desert "
         "feather glacier hammer island jungle lantern marble nickel oyster parrot puzzle "
         "ribbon sunset thunder velvet wagon").split()
COUNTRIES = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
             "Portugal": "Lisbon", "Norway": "Oslo", "Sweden": "Stockholm",
             "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
             "Austria": "Vienna", "Greece": "Athens", "Ireland": "Dublin",
             "Hungary": "Budapest", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi",
             "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa", "Mexico": "Mexico City",
             "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Peru": "Lima",
             "Chile": "Santiago", "Australia": "Canberra", "Russia": "Moscow",
             "Turkey": "Ankara", "Thailand": "Bangkok", "Vietnam": "Hanoi",
             "South Korea": "Seoul", "Indonesia": "Jakarta", "Morocco": "Rabat",
             "Nigeria": "Abuja", "Colombia": "Bogota", "Cuba": "Havana",
             "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
             "Czech Republic": "Prague", "Iceland": "Reykjavik", "Ukraine": "Kyiv",
             "Romania": "Bucharest", "Philippines": "Manila", "Pakistan": "Islamabad",
             "Iran": "Tehran", "Saudi Arabia": "Riyadh", "New Zealand": "Wellington"}
NOUNS = {"cat": "cats", "box": "boxes", "child": "children", "city": "cities",
         "mouse": "mice", "knife": "knives", "tooth": "teeth", "foot": "feet",
         "leaf": "leaves", "bus": "buses", "baby": "babies", "woman": "women", "man": "men",
         "goose": "geese", "wolf": "wolves", "hero": "heroes", "potato": "potatoes",
         "dish": "dishes", "church": "churches", "day": "days", "key": "keys",
         "sheep": "sheep", "fish": "fish", "person": "people", "party": "parties",
         "glass": "glasses", "book": "books", "car": "cars", "wife": "wives",
         "story": "stories", "toy": "toys", "fox": "foxes", "watch": "watches",
         "photo": "photos", "piano": "pianos", "half": "halves", "life": "lives",
         "ox": "oxen", "cactus": "cacti", "tree": "trees", "lady": "ladies", "deer": "deer",
         "brush": "brushes", "wish": "wishes", "country": "countries", "shelf": "shelves"}
ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
NUM_CONTEXT = ["I bought {} apples and {} pears for {} dollars.",
               "Room {} is on floor {} and holds {} people.",
               "The train left at {} and arrived {} minutes late with {} cars.",
               "She ran {} km on Monday, {} km on Tuesday and {} km today.",
               "Order {} contains {} items and weighs {} grams.",
               "We scored {} points, they scored {}, and {} fans watched."]


def _words(rng, lo, hi):
    return rng.sample(WORDS, rng.randint(lo, hi))


def _t_sort(r):
    w = _words(r, 4, 7)
    return (r.choice(["Sort these words alphabetically.", "Put these words in alphabetical order."]),
            " ".join(w), " ".join(sorted(w)))


def _t_reverse(r):
    w = _words(r, 4, 7)
    return (r.choice(["Reverse the order of these words.", "Write these words in reverse order."]),
            " ".join(w), " ".join(reversed(w)))


def _t_count(r):
    w = [r.choice(WORDS) for _ in range(r.randint(3, 14))]
    return (r.choice(["Count the words.", "How many words are in this text?"]),
            " ".join(w), str(len(w)))


def _t_upper(r):
    w = _words(r, 2, 5)
    return (r.choice(["Convert to uppercase.", "Rewrite this text in capital letters."]),
            " ".join(w), " ".join(w).upper())


def _t_numbers(r):
    tpl = r.choice(NUM_CONTEXT)
    nums = [str(r.randint(1, 999)) for _ in range(3)]
    return (r.choice(["Extract the numbers.", "List the numbers in this sentence."]),
            tpl.format(*nums), ", ".join(nums))


def _t_capital(r):
    c = r.choice(sorted(COUNTRIES))
    return (r.choice(["Give the capital of this country.", "What is the capital city of this country?"]),
            c, COUNTRIES[c])


def _t_iso(r):
    y, m, d = r.randint(1950, 2030), r.randint(1, 12), r.randint(1, 28)
    fmt = r.randrange(3)
    text = ["%s %d, %d" % (MONTHS[m - 1], d, y), "%d %s %d" % (d, MONTHS[m - 1], y),
            "%s %d %d" % (ABBR[m - 1], d, y)][fmt]
    return (r.choice(["Turn this date into ISO format.", "Write this date as YYYY-MM-DD."]),
            text, "%04d-%02d-%02d" % (y, m, d))


def _t_plural(r):
    ns = r.sample(sorted(NOUNS), r.randint(1, 3))
    return (r.choice(["Pluralize these nouns.", "Give the plural form of each noun."]),
            ", ".join(ns), ", ".join(NOUNS[n] for n in ns))


def _t_add(r):
    ns = [r.randint(1, 99) for _ in range(r.randint(2, 4))]
    return (r.choice(["Add these numbers.", "What is the sum of these numbers?"]),
            " + ".join(map(str, ns)), str(sum(ns)))


INSTRUCT_TASKS = [_t_sort, _t_reverse, _t_count, _t_upper, _t_numbers, _t_capital, _t_iso,
                  _t_plural, _t_add]


def instruct(rng):
    # Test first, so that the small-domain tasks (capital, plural) keep their test inputs out of
    # training; test inputs are then excluded from training per task.
    def gen(n, banned):
        out, keys = [], set()
        while len(out) < n:
            task = rng.choice(INSTRUCT_TASKS)
            ins, inp, outp = task(rng)
            key = (task.__name__, inp)
            if key in banned or key in keys:
                continue
            keys.add(key)
            out.append(({"instruction": ins, "input": inp, "output": outp}, key))
        return out, keys

    test, test_keys = gen(N_TEST, set())
    train, _ = gen(N_TRAIN, test_keys)
    counts = {}
    for _, k in train:
        counts[k[0][3:]] = counts.get(k[0][3:], 0) + 1
    info = "%d tasks; train per task: %s" % (
        len(INSTRUCT_TASKS), ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    return [r for r, _ in train], [r for r, _ in test], info


# ----------------------------------------------------------------------------- main
def _chars(rec):
    return sum(len(v) for v in rec.values())


def write(out_dir, name, train, test, info):
    os.makedirs(out_dir, exist_ok=True)
    train_set = {json.dumps(r, sort_keys=True) for r in train}
    assert len(train_set) == len(train), "%s: duplicate train records" % name
    assert not any(json.dumps(r, sort_keys=True) in train_set for r in test), name
    assert len(test) == N_TEST

    def dump(path, recs):
        with open(path, "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    for n in SIZES:
        dump(os.path.join(out_dir, "%s_train%d.jsonl" % (name, n)), train[:n])
    dump(os.path.join(out_dir, "%s_test.jsonl" % name), test)
    resp_key = "output" if "output" in train[0] else "response"
    mean = lambda rs, f: sum(map(f, rs)) / len(rs)
    print("%s: %s" % (name, info))
    for n in SIZES:
        rs = train[:n]
        print("  train%-5d %5d records, mean %.1f chars (response %.1f)" % (
            n, len(rs), mean(rs, _chars), mean(rs, lambda r: len(r[resp_key]))))
    print("  test       %5d records, mean %.1f chars (response %.1f)" % (
        len(test), mean(test, _chars), mean(test, lambda r: len(r[resp_key]))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="benches/data")
    ap.add_argument("--corpus", default="models/chatterbot_corpus/english")
    a = ap.parse_args()
    if not glob.glob(os.path.join(a.corpus, "*.yml")):
        sys.exit("sft_datasets: no chatterbot corpus YAMLs under %s" % a.corpus)
    write(a.out, "chatterbot", *chatterbot(a.corpus, random.Random(SEED)))
    write(a.out, "extract", *extract(random.Random(SEED + 1)))
    write(a.out, "instruct", *instruct(random.Random(SEED + 2)))


if __name__ == "__main__":
    main()
