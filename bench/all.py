"""Every benchmark, one after the other, then one table of their headline figures.

    .venv/bin/python bench/all.py              # what `make bench` runs
    .venv/bin/python bench/all.py --only reads,cost

Each benchmark runs as its own process with ``--report FILE`` and prints its own
full output as it goes; each headline figure it reports (``common.report``) comes
back here as a row: the benchmark, what was measured, the figure, its target and
whether the figure meets it. Figures only: nothing here fails on a timing. A
benchmark that exits with an error is listed as such, and the others still run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import ROOT

# (name, script, arguments): the order they run in.
BENCHES = [
    ("uploads", "upload_throughput.py", []),
    ("reads", "reads.py", []),
    # A and C short; B at its full size, so that its p99 is one over ~300 probes per
    # endpoint rather than the slowest of the ~90 a quick burst gives.
    ("processing", "processing.py", ["--quick", "--burst", "30", "--idle-requests", "300"]),
    ("memory", "memory.py", []),
    ("cost", "cost.py", ["--rounds", "3"]),
    ("events", "events.py", []),
]


def meets(value, target):
    """"yes" / "no" for a target like ">= 0.5" or "<= 3.0"; "" when there is none."""
    if not target:
        return ""
    op, _, bound = target.partition(" ")
    bound = float(bound)
    return "yes" if (value >= bound if op == ">=" else value <= bound) else "no"


def table(rows):
    head = ("benchmark", "measure", "figure", "target", "met")
    cells = [head] + [(r["bench"], r["measure"], "%g" % r["value"], r["target"],
                       meets(r["value"], r["target"])) for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(head))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="",
                        help="comma list of benchmarks to run (default: all of %s)"
                        % ", ".join(name for name, _, _ in BENCHES))
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b[0] in args.only.split(",")]
    failed = []
    with tempfile.TemporaryDirectory(prefix="photo-bench-all-") as directory:
        path = os.path.join(directory, "report.jsonl")
        open(path, "w").close()
        for name, script, extra in chosen:
            print("\n=== %s: bench/%s %s" % (name, script, " ".join(extra)), flush=True)
            started = time.monotonic()
            code = subprocess.call([sys.executable, os.path.join(ROOT, "bench", script),
                                    "--report", path] + extra, cwd=ROOT)
            print("=== %s: %s in %.0f s" % (name, "done" if code == 0 else
                                          "FAILED (exit %d)" % code,
                                          time.monotonic() - started), flush=True)
            if code:
                failed.append(name)
        with open(path) as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
    print("\nOne run on %d cores; ratios are side by side within each benchmark.\n"
          % os.cpu_count())
    print(table(rows))
    if failed:
        print("\nbenchmarks that failed to run: %s" % ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
