"""What the benchmarks share beyond the test suite's process, HTTP and multipart
plumbing (tests/processes.py, tests/helpers.py, which they use): the import
path (importing this module puts the repository on it), a process's CPU time (and
that of the services' processes, found by name), and ``report()``."""

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


def processes_named(name):
    """The pids of the processes whose command name (``/proc/PID/comm``) is ``name``
    (``beam.smp``: RabbitMQ; ``postgres``: PostgreSQL's server and backends)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/comm" % entry) as comm:
                    if comm.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def cpu_seconds_of(name):
    """The CPU seconds used so far by every process named ``name`` (see processes_named)."""
    return sum(process_cpu_seconds(pid) for pid in processes_named(name))


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
