"""What the benchmarks share beyond the test suite's process, HTTP and multipart
plumbing (tests/processes.py, tests/helpers.py, which they use): the import
path (importing this module puts the repository on it), a process's (or a process
tree's) CPU time, that of the services' processes (found by name), and the
figures for bench/all.py's table."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def process_cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc; 0 where unknown."""
    try:
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_tree_cpu_seconds(pid):
    """CPU seconds of ``pid`` and every live descendant (utime + stime), plus what
    their children that already ended used (cutime + cstime, counted by the kernel
    once a child is waited for): the whole cost of a process that starts workers."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents.setdefault(int(_stat_fields(int(name))[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                pass  # ended meanwhile
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
        todo.extend(parents.get(current, ()))
    return total


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


WRK = shutil.which("wrk")


def require_wrk(bench):
    """Stop ``bench`` with a plain word when the load generator is not installed."""
    if WRK is None:
        sys.exit("%s needs wrk (the HTTP load generator), which is not installed: "
                 "apt-get install wrk" % bench)


def wrk(url, seconds, connections, *options, env=None, timeout=60):
    """What wrk prints for one run against ``url``: one thread, ``connections``
    keep-alive connections, ``seconds`` long, plus ``options`` (``--latency``,
    ``-s script.lua``)."""
    return subprocess.run([WRK, "-t1", "-c%d" % connections, "-d%ds" % seconds] + list(options)
                          + [url], capture_output=True, text=True, env=env, check=True,
                          timeout=seconds + timeout).stdout
