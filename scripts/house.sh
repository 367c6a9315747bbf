#!/usr/bin/env bash
# House rules that the compiler does not check (issue 17): run `scripts/house.sh` from anywhere;
# it exits non-zero, listing the offenders, when
#   (a) modules of src/cpu import each other (any cycle in the module import graph), or
#   (b) a file in src/ is over 600 lines.
# `scripts/house.sh --graph` also prints every edge of the src/cpu graph with the line behind it.
#
# The import graph (what "A imports B" means here):
#   * A node is one module file under src/cpu (`x.rs`, or `x/mod.rs` for a directory module).
#     Inline modules (`mod tests { .. }`) belong to the file they are written in.
#   * A imports B when code in A (tests included, whatever its #[cfg]) names a path into B:
#     a `use` tree or an inline path that starts with `super::`, `self::`, `crate::cpu::`, or,
#     in a mod.rs, with one of its own child modules (`pub use matmul::..`, `x86::avx2::f()`).
#     The path is walked down the module tree as far as it names modules; the edge goes to the
#     deepest module file it reaches. A name that a module re-exports (`pub use x::name`) is
#     followed to where it is defined, so importing through a facade (`crate::cpu::dot`) is an
#     edge to the defining module (`vecops`), not to the facade.
#   * `mod x;` declarations are not edges: owning a child is not using it. So a child that uses
#     its parent's items while the parent only declares it is fine; a parent that also calls
#     into that child is a cycle, like any other.
#   * Edges into a module's own file (a test's `use super::*`) and paths leaving src/cpu are
#     not part of the graph.
# A cycle is a strongly connected component of more than one node; each is printed with one
# closed path through it and the source line behind each of its edges.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - "$@" <<'PY'
import os
import re
import sys

SRC = "src"
ROOT = "cpu"
MAX_LINES = 600
show_graph = "--graph" in sys.argv[1:]


def strip_code(text):
    """Blank out comments and string/char literals, keeping every newline (so offsets map to
    the same line numbers) and the length of the text."""
    out = []
    i, n = 0, len(text)
    blank = lambda s: re.sub(r"[^\n]", " ", s)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif re.match(r'(?:b|c)?r#*"', text[i:i + 40]) and not re.match(r"\w", text[i - 1] if i else " "):
            m = re.match(r'(?:b|c)?r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(blank(text[i:j]))
            i = j
        elif c == '"' or (c in "bc" and text.startswith('"', i + 1) and not re.match(r"\w", text[i - 1] if i else " ")):
            j = text.index('"', i) + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\u\{[0-9a-fA-F]+\}|\\.|[^\\'\n])'", text[i:])
            if m:
                out.append(blank(m.group(0)))
                i += m.end()
            else:  # a lifetime or label
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_path(rel):
    """src-relative file -> module path: cpu/x86/avx2.rs -> (cpu, x86, avx2)."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


files = {}  # module path -> (rel path, stripped text, raw lines)
for dirpath, _, names in os.walk(os.path.join(SRC, ROOT)):
    for name in sorted(names):
        if name.endswith(".rs"):
            rel = os.path.relpath(os.path.join(dirpath, name), SRC)
            with open(os.path.join(SRC, rel), encoding="utf-8") as f:
                raw = f.read()
            files[module_path(rel)] = (rel, strip_code(raw), raw.splitlines())

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def expand_use(tree):
    """`a::{b, c::d as e, self}` -> [(['a','b'], 'b'), (['a','c','d'], 'e'), (['a'], 'a')]."""
    tree = re.sub(r"\s+", " ", tree).strip()

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        return [p.strip() for p in parts if p.strip()]

    def walk(prefix, s):
        s = s.strip().lstrip(":").strip()
        if s.startswith("{"):
            res = []
            for part in split_top(s[1:s.rindex("}")]):
                res += walk(prefix, part)
            return res
        m = re.match(r"(" + IDENT + r"|\*)\s*(::)?\s*", s)
        if not m:
            return []
        seg, rest = m.group(1), s[m.end():]
        if m.group(2):
            return walk(prefix + [seg], rest)
        alias = re.match(r"as\s+(" + IDENT + ")", rest)
        if seg == "self":
            return [(prefix, alias.group(1) if alias else prefix[-1] if prefix else None)]
        return [(prefix + [seg], alias.group(1) if alias else seg)]

    return walk([], tree)


def inline_mods(text):
    """The inline `mod name { .. }` blocks of a file, as (start, end, name) spans."""
    spans, stack, depth = [], [], 0
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{|[{}]", text):
        tok = m.group(0)
        if tok == "}":
            depth -= 1
            if stack and stack[-1][1] == depth:
                name, _, start = stack.pop()
                spans.append((start, m.end(), name))
        else:
            if tok != "{":
                stack.append((m.group(1), depth, m.start()))
            depth += 1
    return spans


def ctx_at(mod, spans, pos):
    """The module path at offset `pos`: the file's module plus the inline modules around it."""
    names = [name for (s, e, name) in sorted(spans) if s <= pos < e]
    return mod + tuple(names)


# Collect, per file, every path it names (with the module context it was named in) and its
# re-exports.
uses = {}  # mod -> [(ctx, segments, line)]
reexports = {}  # mod -> {name: (ctx, segments)}
for mod, (rel, text, lines) in files.items():
    spans = inline_mods(text)
    found = []
    blanked = list(text)
    for m in re.finditer(r"\b(pub(?:\s*\([^)]*\))?\s+)?use\s+([^;]+);", text):
        ctx = ctx_at(mod, spans, m.start())
        line = text.count("\n", 0, m.start()) + 1
        for segs, name in expand_use(m.group(2)):
            found.append((ctx, segs, line))
            if m.group(1) and name and segs and segs[-1] != "*":
                reexports.setdefault(ctx, {})[name] = (ctx, segs)
        for k in range(m.start(), m.end()):
            if blanked[k] != "\n":
                blanked[k] = " "
    rest = "".join(blanked)
    for m in re.finditer(r"(?<![\w:])(" + IDENT + r"(?:\s*::\s*" + IDENT + r")+)", rest):
        segs = re.split(r"\s*::\s*", m.group(1))
        ctx = ctx_at(mod, spans, m.start())
        found.append((ctx, segs, rest.count("\n", 0, m.start()) + 1))
    uses[mod] = found


def file_of(path):
    """The file module holding module path `path` (inline modules live in their file)."""
    while path and path not in files:
        path = path[:-1]
    return path


def resolve(ctx, segs, seen=()):
    """The file module a path named in module `ctx` leads into, or None (outside src/cpu, an
    external crate, a local name)."""
    segs = list(segs)
    if not segs:
        return None
    head = segs[0]
    if head == "crate":
        cur, segs = (), segs[1:]
    elif head in ("super", "self"):
        cur = ctx
        while segs and segs[0] in ("super", "self"):
            if segs.pop(0) == "super":
                cur = cur[:-1]
    elif ctx + (head,) in files:
        cur = ctx
    else:
        return None
    while segs and cur + (segs[0],) in files:
        cur, segs = cur + (segs[0],), segs[1:]
    if segs and cur in reexports and segs[0] in reexports[cur] and (cur, segs[0]) not in seen:
        rctx, rsegs = reexports[cur][segs[0]]
        target = resolve(rctx, rsegs, seen + ((cur, segs[0]),))
        if target is not None:
            return target
    if not cur or cur[0] != ROOT:
        return None
    return file_of(cur)


edges = {}  # (a, b) -> first line in a that names b
for mod, found in uses.items():
    for ctx, segs, line in found:
        target = resolve(ctx, segs)
        if target is None or target == mod:
            continue
        edges.setdefault((mod, target), line)

graph = {m: sorted(b for (a, b) in edges if a == m) for m in files}
name = lambda m: files[m][0]


def evidence(a, b):
    line = edges[(a, b)]
    return f"    {name(a)}:{line}: {files[a][2][line - 1].strip()}"


if show_graph:
    print(f"import graph of src/{ROOT} ({len(edges)} edges):")
    for a in sorted(graph):
        for b in graph[a]:
            print(f"  {name(a)} -> {name(b)}")
            print("  " + evidence(a, b))

# Tarjan's strongly connected components.
index, low, on, stack, sccs = {}, {}, set(), [], []


def strong(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(graph):
    if v not in index:
        strong(v)

bad = False
for comp in sccs:
    if len(comp) < 2:
        continue
    bad = True
    members = set(comp)
    start = min(comp)
    # One closed path through the component: breadth-first from start back to start.
    prev, frontier, path = {start: None}, [start], None
    while frontier and path is None:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    path = path[::-1] + [start]
                    break
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
            if path:
                break
        frontier = nxt
    print(f"import cycle in src/{ROOT}: " + " -> ".join(name(m) for m in path))
    for a, b in zip(path, path[1:]):
        print(evidence(a, b))
    others = sorted(members - set(path))
    if others:
        print("    (same cycle also holds: " + ", ".join(name(m) for m in others) + ")")
if not bad:
    print(f"src/{ROOT}: no import cycles among {len(files)} modules ({len(edges)} imports)")

long = []
for dirpath, _, names in os.walk(SRC):
    for fname in names:
        if fname.endswith(".rs"):
            p = os.path.join(dirpath, fname)
            with open(p, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > MAX_LINES:
                long.append((count, p))
for count, p in sorted(long, reverse=True):
    print(f"over {MAX_LINES} lines: {p} ({count})")
if not long:
    print(f"src: no file over {MAX_LINES} lines")
sys.exit(1 if bad or long else 0)
PY
