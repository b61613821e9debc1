"""The conformance suite's results in the docs: docs/conformance.md shows the table a run
prints, and README.md its score line. Each lives between two markers in its file,

  <!-- conformance:table:begin -->  ...  <!-- conformance:table:end -->
  <!-- conformance:score:begin -->  ...  <!-- conformance:score:end -->

and is generated from a run's JSON report (conformance.sh --json FILE), never edited by hand.

  doc.py update REPORT.json [FILE...]   rewrite the marked blocks of each FILE from the report
  doc.py check REPORT.json [FILE...]    exit 1, printing a diff, when a block is not the report's

FILE defaults to the repository's docs/conformance.md and README.md. `conformance.sh --doc`
updates them after a run; tests/conformance.rs checks them against the run it made.
"""

import difflib
import json
import os
import re
import sys

BLOCKS = ("table", "score")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DOC_FILES = [os.path.join(ROOT, "docs", "conformance.md"), os.path.join(ROOT, "README.md")]


def score_line(rep):
    return f"Score: {rep['same']}/{rep['total']} scenarios identical to the kernel ({rep['score']}%)."


def table_lines(rep):
    """The scenario table, the score and the normalised fields, as run.py prints them."""
    out = ["| # | scenario | what it exercises | result |", "|---|---|---|---|"]
    for r in rep["scenarios"]:
        if r["result"] == "same":
            res = "same"
        else:
            res = "differs: " + ", ".join(r["fields"])
            res += f" — {r['explanation']}" if r["explanation"] else " — unexplained"
        out.append(f"| {r['n']} | `{r['name']}` | {r['row']}: {r['what']} | {res} |")
    out += ["", score_line(rep), "", "Compared after normalisation (by name, with the reason):"]
    out += [f"- `{k}`: {v}" for k, v in rep["normalised"].items()]
    return out


def render(rep, block):
    return table_lines(rep) if block == "table" else [score_line(rep)]


def marker(block, end):
    return f"<!-- conformance:{block}:{'end' if end else 'begin'} -->"


def regenerate(text, rep):
    """The text with every marked block rewritten from the report; the blocks found."""
    found = []
    for block in BLOCKS:
        pat = re.compile(re.escape(marker(block, False)) + r"\n.*?" + re.escape(marker(block, True)), re.S)
        if not pat.search(text):
            continue
        found.append(block)
        body = "\n".join([marker(block, False), *render(rep, block), marker(block, True)])
        text = pat.sub(lambda _: body, text)
    return text, found


def sync(mode, rep, files, source):
    """Updates or checks `files` against the report; False when a check found one stale."""
    stale = False
    for path in files:
        with open(path) as fh:
            old = fh.read()
        new, found = regenerate(old, rep)
        if not found:
            sys.exit(f"doc.py: {path} has no conformance block ({', '.join(marker(b, False) for b in BLOCKS)})")
        if new == old:
            continue
        if mode == "update":
            with open(path, "w") as fh:
                fh.write(new)
            print(f"doc.py: {path}: {', '.join(found)} rewritten from {source}")
        else:
            stale = True
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), path, f"{path} from this run", lineterm="")
            print("\n".join(diff))
    return not stale


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("update", "check"):
        sys.exit(__doc__)
    mode, report = sys.argv[1], sys.argv[2]
    with open(report) as fh:
        rep = json.load(fh)
    if not sync(mode, rep, sys.argv[3:] or DOC_FILES, report):
        sys.exit("doc.py: the docs do not show this run's results; regenerate them with "
                 "netns-scripts/conformance.sh --doc")


if __name__ == "__main__":
    main()
