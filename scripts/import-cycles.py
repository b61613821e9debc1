#!/usr/bin/env python3
"""Import cycles between the files of src/, and the rooms' rules.

Reads every .rs file under src/ (the library and its binaries), drops the code of a
file's own tests (`#[cfg(test)]` modules, inline or in their own file), and collects
the paths each file names: `use crate::..`, `use super::..`, `use self::..` trees and
the same paths written inline (`crate::control::kube::Store::default()`), paths that
start with a child module (`node::SysctlKey`), and `ucanal::..` in the binaries. Each
path is resolved to the file that defines the item, following `pub use` re-exports (a
re-export is a path, not a dependency of the module that re-exports). Module
declarations (`mod x;`) are not imports.

Then it reports:
  - every cycle between files (strongly connected components of more than one file);
  - `api` naming anything of `control`, `cli` or `io`, or `tokio`, outside its tests;
  - `control` naming `cli`, and `cli` naming `control`, outside tests.
Exit status 1 if any is found, except the cycles listed in KNOWN (each with why it is
left): those are printed, and one that grows or a new one fails.
Usage: scripts/import-cycles.py [--edges] [--src DIR]
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Cycles left on purpose, each with why (none are left: the walk's shared types are in
# core/dataplane/steps.rs, the early-drop queue in core/nat/early_drop/candidates.rs and
# the ends of a flow in wire/ports.rs). The list may only shrink.
KNOWN = {
}
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """The code with comments and string/char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
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
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r(#*)"', text[i:i + 10]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(code):
    """The code without `#[cfg(test)] mod x { .. }` blocks; and the names of test
    modules declared as files (`#[cfg(test)] mod x;`)."""
    test_files = set()
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])")
    while True:
        m = pat.search(code, i)
        if not m:
            out.append(code[i:])
            break
        out.append(code[i:m.start()])
        if m.group(4) == ";":
            test_files.add(m.group(3))
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        out.append("\n" * code.count("\n", m.start(), j))
        i = j
    return "".join(out), test_files


class File:
    def __init__(self, path, module):
        self.path = path  # relative to src/
        self.module = module  # tuple of segments below the crate root
        self.code = ""
        self.children = set()  # modules it declares
        self.test_children = set()
        self.reexports = {}  # name -> path segments (relative to this module)
        self.globs = []  # `pub use x::*`


def module_of(rel):
    parts = rel[:-3].split("/")
    if parts in (["lib"], ["main"]):
        return ()
    if parts[0] == "bin":
        return ("bin", parts[1])
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def expand_use(tree):
    """`a::{b, c::{d, e as f}, self}` -> ["a::b", "a::c::d", "a::c::e", "a"]."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"as" + IDENT, "", tree) if False else re.sub(r"(?<=[A-Za-z0-9_])as(" + IDENT + ")", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            b = p.find("{")
            if b >= 0:
                head = p[:b].rstrip(":")
                walk(prefix + ([head] if head else []), p[b + 1:p.rindex("}")])
            elif p == "self":
                out.append("::".join(prefix))
            else:
                out.append("::".join(prefix + [p]))

    walk([], tree)
    return out


def main():
    global ROOT
    if "--src" in sys.argv:
        ROOT = sys.argv[sys.argv.index("--src") + 1]
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")
                files[rel] = File(rel, module_of(rel))
    by_module = {}
    for f in files.values():
        if f.module != () or f.path == "lib.rs":
            by_module.setdefault(f.module, f)
    for f in files.values():
        with open(os.path.join(ROOT, f.path), encoding="utf-8") as h:
            code = strip_comments_and_strings(h.read())
        code, f.test_children = drop_test_modules(code)
        f.code = code
        for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", code):
            f.children.add(m.group(1))
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", code):
            for p in expand_use(m.group(2)):
                segs = p.split("::")
                if segs[-1] == "*":
                    f.globs.append(segs[:-1])
                else:
                    f.reexports[segs[-1]] = segs
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+(" + IDENT + r"(::" + IDENT + r")*)\s+as\s+(" + IDENT + ")", code):
            f.reexports[m.group(4)] = m.group(2).split("::")

    # Test-only files: declared `#[cfg(test)] mod x;` by their parent.
    test_only = set()
    for f in files.values():
        for c in f.test_children:
            sub = f.module + (c,) if f.path not in ("lib.rs",) else (c,)
            for g in files.values():
                if g.module[:len(sub)] == sub:
                    test_only.add(g.path)

    def absolute(f, segs):
        """Path segments as written in file f -> segments below the crate root."""
        mod = list(f.module)
        if f.path == "main.rs" or f.path.startswith("bin/"):
            if segs[0] == "ucanal":
                return segs[1:]
            return None
        if segs[0] == "crate":
            return segs[1:]
        rel = mod
        i = 0
        while i < len(segs) and segs[i] in ("super", "self"):
            if segs[i] == "super":
                rel = rel[:-1]
            i += 1
        if i > 0:
            return rel + segs[i:]
        if segs[0] in f.children:
            return mod + segs
        return None

    def resolve(segs, seen=0):
        """Segments below the crate root -> the file defining the item."""
        if seen > 16:
            return None
        best = None
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in by_module:
                best = k
                break
        if best is None:
            return None
        f = by_module[tuple(segs[:best])]
        rest = segs[best:]
        if rest and rest[0] in f.reexports:
            target = f.reexports[rest[0]]
            ab = absolute(f, target) if target[0] in ("crate", "super", "self") or target[0] in f.children else None
            if ab is None and target[0] not in ("crate", "super", "self"):
                ab = list(f.module) + target if tuple(list(f.module) + target[:1]) in by_module else None
            if ab is not None:
                return resolve(ab + rest[1:], seen + 1) or f.path
        if rest and f.globs:
            for g in f.globs:
                ab = absolute(f, g) if g[0] in ("crate", "super", "self") else list(f.module) + g
                if ab and tuple(ab) in by_module:
                    r = resolve(ab + rest, seen + 1)
                    if r and r != by_module[tuple(ab)].path or (r and rest[0] in by_module[tuple(ab)].code):
                        return r
        return f.path

    edges = defaultdict(set)
    tokio_in_api = []
    path_re = re.compile(r"(?<![A-Za-z0-9_:])((?:crate|super|self|ucanal|" + IDENT + r")(?:::" + IDENT + r")+)")
    for f in files.values():
        if f.path in test_only:
            continue
        code = f.code
        names = []
        for m in re.finditer(r"(\bpub(\([^)]*\))?\s+)?\buse\s+([^;]+);", code):
            if not m.group(1):  # a re-export is a path others take, not a dependency
                names += expand_use(m.group(3))
        code_no_reexports = re.sub(r"\bpub(\([^)]*\))?\s+use\s+[^;]+;", "", code)
        names += [m.group(1) for m in path_re.finditer(code_no_reexports)]
        for p in names:
            segs = [s for s in p.split("::") if s]
            if not segs:
                continue
            if segs[0] == "tokio" and f.module[:1] == ("api",):
                tokio_in_api.append(f.path)
            ab = absolute(f, segs)
            if ab is None:
                continue
            target = resolve(ab)
            if target and target != f.path and target not in test_only:
                edges[f.path].add(target)

    # Strongly connected components (Tarjan).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(files):
        if v not in index and v not in test_only:
            strong(v)

    def room(p):
        parts = p.split("/")
        return parts[0][:-3] if len(parts) == 1 else parts[0]

    n_edges = sum(len(v) for v in edges.values())
    live = [p for p in files if p not in test_only]
    print(f"{len(live)} files ({len(test_only)} test-only files left out), {n_edges} imports between files")
    rooms = defaultdict(int)
    for a, bs in edges.items():
        for b in bs:
            if room(a) != room(b):
                rooms[(room(a), room(b))] += 1
    print("imports between rooms:")
    for (a, b), k in sorted(rooms.items()):
        print(f"  {a:>8} -> {b:<8} {k}")
    if "--edges" in sys.argv:
        for a in sorted(edges):
            print(f"{a}: {' '.join(sorted(edges[a]))}")
    bad = 0
    for c in sccs:
        why = KNOWN.get(frozenset(c))
        if why:
            print("known cycle: " + " <-> ".join(c) + f"\n    ({why})")
            continue
        bad += 1
        print("cycle: " + " <-> ".join(c))
        for a in c:
            print(f"    {a} -> {', '.join(sorted(b for b in edges[a] if b in c))}")
    for a, bs in sorted(edges.items()):
        for b in sorted(bs):
            if room(a) == "api" and room(b) in ("control", "cli", "io"):
                bad += 1
                print(f"api imports {room(b)}: {a} -> {b}")
            if (room(a), room(b)) in (("control", "cli"), ("cli", "control")):
                bad += 1
                print(f"{room(a)} imports {room(b)}: {a} -> {b}")
    for p in sorted(set(tokio_in_api)):
        bad += 1
        print(f"api uses tokio: {p}")
    new = [c for c in sccs if frozenset(c) not in KNOWN]
    print(f"cycles: {len(new)} new, {len(sccs) - len(new)} known")
    print("api: a leaf (nothing of control, cli, io or tokio)" if not any(
        room(a) == "api" and room(b) in ("control", "cli", "io") for a, bs in edges.items() for b in bs
    ) and not tokio_in_api else "api: NOT a leaf")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
