#!/usr/bin/env python3
"""Collects benches/train_bench.sh runs into JSON lines and renders the markdown report.

Standard library only (runs with any python3 >= 3.8).

  bench_report.py edge RUN_DIR TIME_FILE --isa I --seq S --threads K [--gc] [--warmup 2] [RUN]
      one edge-sft run: steady-state tokens/s = median of metrics.jsonl tokens_per_s after the
      first --warmup steps, real tokens per step from metrics.jsonl, peak RSS from /usr/bin/time -v
  bench_report.py torch JSON_FILE TIME_FILE [RUN]
      one peft_bench.py run (its JSON line)
  bench_report.py watch PID METRICS_JSONL [--warmup 2] [--hz 100]
      samples while PID runs: other processes' CPU (cores) over the steps after the warm-up
      RUN: --load L0 L1 --stat "cpu ..." "cpu ..." [--hz 100]: load average and /proc/stat
      before and after the run, for the share of CPU other processes took meanwhile
  bench_report.py table RESULTS.jsonl MACHINE.json OUT.md
      the markdown report (tables, ratios vs PyTorch fp32, targets, machine, raw runs)
"""

import argparse
import json
import os
import statistics
import sys
import time


def steady(values, warmup):
    """Median after the warm-up steps; with too few steps, the last one (flagged)."""
    if len(values) > warmup:
        return statistics.median(values[warmup:]), False
    return (values[-1] if values else None), True


def parse_time(path):
    """The fields of a GNU `/usr/bin/time -v` report we use."""
    t = {"peak_rss_mb": None, "user_s": None, "sys_s": None, "wall_s": None, "exit": None}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return t
    for line in lines:
        line = line.strip()
        val = line.split(": ")[-1].strip()
        if line.startswith("Maximum resident set size"):
            t["peak_rss_mb"] = round(int(val) / 1024, 1)
        elif line.startswith("User time"):
            t["user_s"] = float(val)
        elif line.startswith("System time"):
            t["sys_s"] = float(val)
        elif line.startswith("Elapsed (wall clock)"):
            secs = 0.0
            for part in val.split(":"):
                secs = secs * 60 + float(part)
            t["wall_s"] = secs
        elif line.startswith("Exit status"):
            t["exit"] = int(val)
        elif line.startswith("Command terminated by signal"):
            t["exit"] = "signal " + val.split()[-1]
    return t


def other_cores(a, t):
    """CPU time other processes used during the run, in cores (0 = the run had the machine).

    Busy jiffies of the whole machine over the run (from the "cpu" line of /proc/stat sampled
    before and after; steal counts as busy) minus this run's own user+sys time, over wall time."""
    if not a.stat or len(a.stat) != 2 or t["wall_s"] is None or t["user_s"] is None:
        return None
    f0 = [int(x) for x in a.stat[0].split()[1:]]
    f1 = [int(x) for x in a.stat[1].split()[1:]]
    d = [y - x for x, y in zip(f0, f1)]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = (d[0] + d[1] + d[2] + d[5] + d[6] + d[7]) / a.hz
    if t["wall_s"] <= 0:
        return None
    return round(max(0.0, busy - t["user_s"] - t["sys_s"]) / t["wall_s"], 2)


def proc_tree_cpu(root):
    """user+sys jiffies of `root` and all its descendants (threads included), and root's state."""
    parent, cpu, state = {}, {}, None
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its last ')'.
        rest = st[st.rindex(")") + 2:].split()
        pid = int(d)
        parent[pid] = int(rest[1])
        # utime + stime + cutime + cstime: when a descendant exits and is reaped, its time moves
        # into its parent's cutime/cstime, so the tree's total stays continuous.
        cpu[pid] = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        if pid == root:
            state = rest[0]
    total, todo, seen = 0, [root], set()
    while todo:
        p = todo.pop()
        if p in seen or p not in cpu:
            continue
        seen.add(p)
        total += cpu[p]
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total, state


def cmd_watch(a):
    """Sample machine busy time, the run's own CPU and metrics.jsonl's line count until PID ends.

    Prints the other processes' CPU use, in cores, over the window from the sample where the
    first --warmup steps were logged to the one where the last step was: the measured steps."""
    samples = []
    while True:
        own, state = proc_tree_cpu(a.pid)
        if state is None or state == "Z":
            break
        with open("/proc/stat") as f:
            c = [int(x) for x in f.readline().split()[1:]]
        try:
            with open(a.metrics) as f:
                n = sum(1 for line in f if line.strip())
        except OSError:
            n = 0
        samples.append((time.monotonic(), c[0] + c[1] + c[2] + c[5] + c[6] + c[7], own, n))
        time.sleep(a.interval)
    res = {"other_cores_steps": None}
    if samples:
        last = samples[-1][3]
        start = next((s for s in samples if s[3] >= min(a.warmup, max(last - 1, 0))), None)
        end = next((s for s in samples if s[3] >= last), None)
        if start and end and end[0] - start[0] > 0.5:
            dt = end[0] - start[0]
            busy = (end[1] - start[1]) / a.hz
            own = (end[2] - start[2]) / a.hz
            res = {"other_cores_steps": round(max(0.0, busy - own) / dt, 2),
                   "own_cpu_cores_steps": round(own / dt, 2), "watch_window_s": round(dt, 1)}
    print(json.dumps(res))


def run_fields(a):
    t = parse_time(a.time_file)
    t["other_cores"] = other_cores(a, t)
    t["load1"] = a.load
    return t


def cmd_edge(a):
    metrics = []
    try:
        with open(a.run_dir + "/metrics.jsonl") as f:
            metrics = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    # Only training-step lines (an eval line would carry other keys).
    metrics = [m for m in metrics if "tokens_per_s" in m]
    tps, few = steady([m["tokens_per_s"] for m in metrics], a.warmup)
    out = {
        "impl": "edge-sft", "setup": "edge-sft %s%s" % (a.isa, " --grad-checkpoint" if a.gc else ""),
        "isa": a.isa, "grad_checkpoint": a.gc, "seq": a.seq, "threads": a.threads,
        "steps": len(metrics), "warmup": a.warmup,
        "tokens_per_step": sorted({m["tokens"] for m in metrics}),
        "scored_tokens_per_step": sorted({m["scored_tokens"] for m in metrics}),
        "tokens_per_s": tps, "too_few_steps": few,
        "tokens_per_s_steps": [round(m["tokens_per_s"], 2) for m in metrics],
        "loss": [round(m["loss"], 5) for m in metrics],
    }
    out.update(run_fields(a))
    # Others' CPU over the measured steps (from `watch`) when there is one; else whole process.
    out["other_cores_process"] = out["other_cores"]
    if a.watch:
        try:
            with open(a.watch) as f:
                w = json.loads(f.read().strip().splitlines()[-1])
            if w.get("own_cpu_cores_steps") is not None and w["own_cpu_cores_steps"] >= 0:
                out.update(w)
        except (OSError, ValueError, IndexError):
            pass
    if out.get("other_cores_steps") is not None:
        out["other_cores"] = out["other_cores_steps"]
    print(json.dumps(out))


def cmd_torch(a):
    with open(a.json_file) as f:
        lines = [line for line in f if line.strip().startswith("{")]
    out = json.loads(lines[-1]) if lines else {"impl": "pytorch+peft", "error": "no result (see log)"}
    out["setup"] = "PyTorch %s" % ("fp32" if out.get("dtype") == "fp32" else "bf16 weights")
    if out.get("records_per_step", 1) > 1:
        out["setup"] += ", %d records per step" % out["records_per_step"]
    t = run_fields(a)
    # Peak RSS: the script's own getrusage figure; /usr/bin/time's is kept beside it.
    t["peak_rss_mb_time_v"] = t.pop("peak_rss_mb")
    # Others' CPU: over the training steps (measured in the script) rather than the whole
    # process, whose long single-threaded GGUF load leaves a core to others harmlessly.
    t["other_cores_process"] = t.pop("other_cores")
    out.update(t)
    out["other_cores"] = out.get("other_cores_steps", out["other_cores_process"])
    print(json.dumps(out))


def fmt(x, nd=0):
    return "–" if x is None else ("%.*f" % (nd, x))


def ratio(x, ref):
    return "–" if not x or not ref else "%.2f×" % (x / ref)


# Kernel paths, best first; the reduced-precision ones (bf16/fp16 operands, f32 accumulation)
# are held to other targets than the f32 ones.
ISA_ORDER = ["amxbf16", "avx512fp16", "avx512bf16", "avx512", "avx2f16", "avx2", "neonfp16", "neon",
             "scalar"]


def reduced(isa):
    return any(k in isa for k in ("bf16", "fp16", "f16", "amx"))


def order(r):
    """Rows of one (seq, threads) group: PyTorch first, then edge-sft paths best first."""
    if r["impl"] != "edge-sft":
        return (0, 0 if r.get("dtype") == "fp32" else 1)
    isa = r["isa"]
    rank = ISA_ORDER.index(isa) if isa in ISA_ORDER else len(ISA_ORDER) - 1
    return (1 + int(r.get("grad_checkpoint", False)), rank)


def merge_repeats(runs):
    """One row per (seq, threads, setup): with BENCH_REPEAT > 1 the script alternates the
    whole group several times; a row then shows the median tokens/s of its runs (and their
    range), the largest peak RSS and the mean core use, so one slow run (another tenant on
    the host) moves no ratio by itself."""
    groups = {}
    for r in runs:
        groups.setdefault((r["seq"], r["threads"], r["setup"]), []).append(r)
    out = []
    for rs in groups.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        ok = [r for r in rs if r.get("tokens_per_s")]
        m = dict(ok[len(ok) // 2] if ok else rs[0])
        if ok:
            tps = sorted(r["tokens_per_s"] for r in ok)
            m["tokens_per_s"] = statistics.median(tps)
            m["tps_runs"] = tps
        m["repeats"] = len(rs)
        rss = [r["peak_rss_mb"] for r in rs if r.get("peak_rss_mb")]
        if rss:
            m["peak_rss_mb"] = max(rss)
        for k in ("other_cores", "own_cpu_cores_steps"):
            v = [r[k] for r in rs if r.get(k) is not None]
            if v:
                m[k] = sum(v) / len(v)
        m["steps"] = sum(r.get("steps", 0) or 0 for r in rs)
        out.append(m)
    return out


def cmd_table(a):
    with open(a.results) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    with open(a.machine) as f:
        m = json.load(f)
    raw = [r for r in runs if "seq" in r]
    runs = merge_repeats(raw)
    ref = {(r["seq"], r["threads"]): r for r in runs
           if r["impl"] != "edge-sft" and r.get("dtype") == "fp32"}
    L = []
    L.append("# edge-sft training benchmark: %s" % m["date"])
    L.append("")
    L.append("Command: `%s`  " % m["command"])
    L.append("Git HEAD at the start: `%s`; last commit touching src/: `%s`%s; edge-sft binary "
             "built %s.  " % (m["commit"], m.get("src_commit", "?"), m["dirty"], m["binary_mtime"]))
    L.append("Machine: %s, %s logical CPUs (%s), %s MB RAM; flags: %s; %s.  " %
             (m["cpu_model"], m["cpus"], m["cores"], m["mem_mb"], m["flags"], m["virt"]))
    L.append("Versions: %s.  " % m["versions"])
    if not m.get("nice", "0").startswith("0"):
        L.append("Every run at niceness %s (`BENCH_NICE`), so other work on this shared machine "
                 "took less of its CPU.  " % m["nice"])
    if int(m.get("repeat", "1")) > 1:
        L.append("Each (seq, threads) group was alternated %s times (`BENCH_REPEAT`): a row "
                 "shows the median tokens/s of its runs and their range.  " % m["repeat"])
    L.append("Model: `%s`. Workload: LoRA r=8 α=16 on q,k,v,o,gate,up,down, AdamW lr 2e-4, one "
             "record of `seq` tokens (half prompt, half response; loss on the response) per "
             "optimizer step." % m["model"])
    L.append("")
    L.append("tokens/s: all tokens of a step ÷ step time, median over the steps after the first "
             "2 (warm-up). Peak RSS: maximum resident set of the whole process (edge-sft: "
             "`/usr/bin/time -v`; PyTorch: `getrusage` ru_maxrss, which includes dequantizing "
             "the GGUF at load). Ratios are against PyTorch fp32 at the same seq and threads. "
             "cores own/others: CPU time, in cores (CPU seconds per wall second) over the "
             "training steps, that the run used and that other processes used meanwhile, from "
             "/proc/stat and the run's own user+sys time (sampled by the script for edge-sft). "
             "This machine has %s CPUs: own + others near that means the cores were full; "
             "others taking more than the run left idle slows the row (PyTorch's OpenMP threads "
             "more than edge-sft's rayon ones)." % m["cpus"])
    L.append("")
    L.append("| seq | threads | setup | steps | tokens/step | tokens/s | vs PyTorch fp32 | "
             "peak RSS (MB) | RSS vs fp32 | cores own/others |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted({(r["seq"], r["threads"]) for r in runs}):
        rf = ref.get(key)
        for r in sorted([r for r in runs if (r["seq"], r["threads"]) == key], key=order):
            tps = r.get("tokens_per_s")
            toks = r.get("tokens_per_step")
            toks = "/".join(str(t) for t in toks) if isinstance(toks, list) else str(toks)
            note = " (≤2 steps)" if r.get("too_few_steps") else ""
            if r.get("exit") not in (None, 0):
                note += " (exit %s)" % r["exit"]
            oc, own = r.get("other_cores"), r.get("own_cpu_cores_steps")
            if own is not None and own < 0:
                # A sample taken as the process exited (fixed since): fall back to whole-process.
                oc, own = r.get("other_cores_process"), None
            if r.get("repeats", 1) > 1:
                note += " (median of %d runs: %s)" % (
                    r["repeats"], "–".join(fmt(x, 1) for x in (min(r["tps_runs"]),
                                                                max(r["tps_runs"]))))
            L.append("| %d | %d | %s | %s | %s | %s%s | %s | %s | %s | %s |" % (
                r["seq"], r["threads"], r["setup"], r.get("steps", "–"), toks, fmt(tps, 1), note,
                "–" if r is rf else ratio(tps, rf and rf.get("tokens_per_s")),
                fmt(r.get("peak_rss_mb")),
                "–" if r is rf else ratio(r.get("peak_rss_mb"), rf and rf.get("peak_rss_mb")),
                "%s/%s" % (fmt(own, 2), fmt(oc, 2))))
    L.append("")
    L.extend(targets(runs, ref))
    L.append("")
    L.append("<details><summary>Raw runs (JSON lines)</summary>")
    L.append("")
    L.append("```")
    L.extend(json.dumps(r) for r in raw)
    L.append("```")
    L.append("</details>")
    with open(a.out, "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L[:L.index("<details><summary>Raw runs (JSON lines)</summary>")]))


def targets(runs, ref):
    """Issue 4's measurable targets, where this run has the rows to compute them."""
    def best(seq, threads, gc=False, want=None):
        rs = [r for r in runs if r["impl"] == "edge-sft" and r["seq"] == seq
              and r["threads"] == threads and r.get("grad_checkpoint", False) == gc
              and r.get("tokens_per_s") and (want is None or reduced(r["isa"]) == want)]
        return max(rs, key=lambda r: r["tokens_per_s"]) if rs else None

    def yes(ok):
        return "yes" if ok else "no"

    out = ["Targets of issue 4 (best edge-sft path of each kind, 2 threads):", "",
           "| measure | target | measured | met |", "|---|---|---|---|"]
    r256 = ref.get((256, 2))
    t_fp32 = r256.get("tokens_per_s") if r256 else None
    bf = [r for r in runs if r["impl"] != "edge-sft" and r.get("dtype") == "bf16"
          and r.get("tokens_per_s")]
    t_bf16 = max(r["tokens_per_s"] for r in bf) if bf else None
    f32 = best(256, 2, want=False)
    if f32 and t_fp32:
        x = f32["tokens_per_s"] / t_fp32
        out.append("| f32 path tokens/s vs PyTorch fp32, seq 256 (%s) | ≥ 2.0× | %.2f× | %s |"
                   % (f32["isa"], x, yes(x >= 2.0)))
    rp = best(256, 2, want=True)
    if rp and t_fp32:
        x = rp["tokens_per_s"] / t_fp32
        out.append("| reduced-precision path vs PyTorch fp32, seq 256 (%s) | ≥ 4× | %.2f× | %s |"
                   % (rp["isa"], x, yes(x >= 4.0)))
    if rp and t_bf16:
        x = rp["tokens_per_s"] / t_bf16
        out.append("| reduced-precision path vs PyTorch's best bf16 row (%s) | ≥ 2.5× | %.2f× | %s |"
                   % (rp["isa"], x, yes(x >= 2.5)))
    e256 = best(256, 2)
    if e256 and e256.get("peak_rss_mb"):
        x = e256["peak_rss_mb"]
        out.append("| peak RSS, seq 256 (%s) | ≤ 350 MB | %.0f MB | %s |"
                   % (e256["isa"], x, yes(x <= 350)))
    gc = best(1024, 2, True)
    if gc and gc.get("peak_rss_mb"):
        x = gc["peak_rss_mb"]
        out.append("| peak RSS, seq 1024 --grad-checkpoint (%s) | ≤ 500 MB | %.0f MB | %s |"
                   % (gc["isa"], x, yes(x <= 500)))
    # The same kernel path at both lengths: the one that is best at seq 256.
    e1024 = [r for r in runs if r["impl"] == "edge-sft" and r["seq"] == 1024
             and r["threads"] == 2 and not r.get("grad_checkpoint")
             and e256 and r["isa"] == e256["isa"] and r.get("tokens_per_s")]
    if e256 and e1024:
        x = e1024[0]["tokens_per_s"] / e256["tokens_per_s"]
        out.append("| tokens/s seq 1024 ÷ seq 256 (%s) | ≥ 85%% | %.0f%% | %s |"
                   % (e256["isa"], 100 * x, yes(x >= 0.85)))
    if len(out) == 4:
        return []
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("edge")
    e.add_argument("run_dir")
    e.add_argument("time_file")
    e.add_argument("--isa", required=True)
    e.add_argument("--seq", type=int, required=True)
    e.add_argument("--threads", type=int, required=True)
    e.add_argument("--gc", action="store_true")
    e.add_argument("--warmup", type=int, default=2)
    e.add_argument("--watch", help="output of `watch` for this run")
    w = sub.add_parser("watch")
    w.add_argument("pid", type=int)
    w.add_argument("metrics")
    w.add_argument("--warmup", type=int, default=2)
    w.add_argument("--interval", type=float, default=0.25)
    w.add_argument("--hz", type=int, default=100)
    t = sub.add_parser("torch")
    t.add_argument("json_file")
    t.add_argument("time_file")
    for p in (e, t):
        p.add_argument("--load", type=float, nargs="*", default=[], help="load1 before, after")
        p.add_argument("--stat", nargs="*", default=[], help='"cpu" line of /proc/stat before, after')
        p.add_argument("--hz", type=int, default=100, help="getconf CLK_TCK")
    tb = sub.add_parser("table")
    tb.add_argument("results")
    tb.add_argument("machine")
    tb.add_argument("out")
    a = ap.parse_args()
    {"edge": cmd_edge, "watch": cmd_watch, "torch": cmd_torch, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
