"""The differential conformance suite: every scenario through the kernel lab, then through the
ucanal lab, compared header field by header field. conformance.sh builds the labs and calls this.

  run.py --kernel PREFIX --ucanal PREFIX --ucanal-bin BIN --ucanal-socket SOCK
         [--json FILE] [--doc] [--only NAME,...] [--details]
"""

import argparse
import json
import sys
import time

import doc
from compare import NORMALISED, compare, explain, normalise
from lab import Lab
from scenarios import A, B, C, N, SCENARIOS, Ctx


def warm_up(lab):
    """Neighbour caches everywhere (pods -> 169.254.1.1, nodes -> each other and the client), so
    that the scenarios do not start with ARP; not compared."""
    for member, dst in (("ghost-ep1", (B, 5353)), ("ghost-ep2", (A, 5353)), ("ghost-ep3", (A, 5353)),
                        ("ghost-ep1", (C, 5353)), ("client", (N, 30053)), ("ghost-ep2", (C, 5353))):
        lab.udp(member, 0, dst, [b"warm-up"], wait=0.3)
    time.sleep(0.3)


def run_lab(lab, scenarios):
    lab.open()
    results = {}
    try:
        warm_up(lab)
        for sc in scenarios:
            lab.drain()
            ctx = Ctx(lab, sc)
            sc.fn(ctx)
            time.sleep(sc.settle)
            results[sc.name] = (lab.collect(), (ctx.ids, list(lab.sent)), ctx.app)
    finally:
        lab.close()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True, help="prefix of the lab whose centos7-1 is the kernel")
    ap.add_argument("--ucanal", required=True, help="prefix of the lab whose centos7-1 is ucanal")
    ap.add_argument("--ucanal-bin", required=True)
    ap.add_argument("--ucanal-socket", required=True, help="API socket of the ucanal lab's centos7-1")
    ap.add_argument("--json", help="write the results as JSON to this file ('-' for stdout)")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--details", action="store_true", help="every differing field of every frame")
    ap.add_argument("--doc", action="store_true",
                    help="rewrite the results shown in docs/conformance.md and README.md (a full run only)")
    a = ap.parse_args()
    if a.doc and a.only:
        sys.exit("conformance: --doc shows every scenario; it cannot be combined with --only")

    scenarios = SCENARIOS
    if a.only:
        want = set(a.only.split(","))
        unknown = want - {s.name for s in SCENARIOS}
        if unknown:
            sys.exit(f"conformance: unknown scenario(s) {', '.join(sorted(unknown))}")
        scenarios = [s for s in SCENARIOS if s.name in want]

    t0 = time.monotonic()
    kres = run_lab(Lab(a.kernel, "kernel"), scenarios)
    ures = run_lab(Lab(a.ucanal, "ucanal", a.ucanal_bin, a.ucanal_socket), scenarios)

    rows = []
    for i, sc in enumerate(scenarios, 1):
        kf, kids, kapp = kres[sc.name]
        uf, uids, uapp = ures[sc.name]
        kn, un = normalise(kf, kids, sc), normalise(uf, uids, sc)
        details, fields = compare(kn, un, kapp, uapp)
        frames = {pt: len(v) for pt, v in kn.items()}
        rows.append({
            "n": i, "name": sc.name, "row": sc.row, "what": sc.text,
            "result": "differs" if fields else "same", "fields": fields,
            "explanation": explain(sc, fields, details), "details": details,
            "kernel_frames": frames, "ucanal_frames": {pt: len(v) for pt, v in un.items()},
            "app": {"kernel": kapp, "ucanal": uapp},
        })
    same = sum(r["result"] == "same" for r in rows)
    report = {
        "node_under_test": "centos7-1", "peer": "centos7-2 (kernel in both labs)",
        "scenarios": rows, "same": same, "total": len(rows),
        "score": round(100.0 * same / len(rows), 1) if rows else 0.0,
        "unexplained": [r["name"] for r in rows if r["fields"] and not r["explanation"]],
        "normalised": NORMALISED, "seconds": round(time.monotonic() - t0, 1),
    }
    print_table(report, a.details)
    if a.doc:
        doc.sync("update", report, doc.DOC_FILES, "this run")
    if a.json:
        text = json.dumps(report, indent=2)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as fh:
                fh.write(text + "\n")


def print_table(rep, details):
    print("\n".join(doc.table_lines(rep)))
    shown = [r for r in rep["scenarios"] if r["details"]]
    if shown:
        print()
        print("Differences, frame by frame:")
        for r in shown:
            lines = r["details"] if details else r["details"][:4]
            for d in lines:
                print(f"- {r['name']}: {d}")
            if len(r["details"]) > len(lines):
                print(f"- {r['name']}: ... {len(r['details']) - len(lines)} more (--details)")


if __name__ == "__main__":
    main()
