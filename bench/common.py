"""What the benchmarks share beyond the test suite's process, HTTP and multipart
plumbing (tests/processes.py, tests/helpers.py, which they use): the import
path (importing this module puts the repository on it), and a process's CPU time."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def process_cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc; 0 where unknown."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def report(path, bench, measure, value, target):
    """Append one figure to ``path`` (``--report``; nothing when None) for
    ``bench/all.py``'s table: ``measure`` (what was divided by what), ``value`` (a
    ratio, or a figure with its unit in ``measure``), ``target`` (e.g. ">= 0.5",
    "<= 0.18", or "" for a figure with no target)."""
    if path is None:
        return
    import json
    with open(path, "a") as out:
        out.write(json.dumps({"bench": bench, "measure": measure, "value": value,
                              "target": target}) + "\n")
