"""CPU priorities (priority.py): in a running server every thread but the IOLoop's
runs below it, and the image workers lowest of all, and only the IOLoop's thread
has the short scheduler slice (read off the real process while image work is held
in its workers by a gate, tests/gated.py); and the server runs its IOLoop with the
interpreter's switch interval at ``SWITCH_INTERVAL``."""

import os
import sys

import pytest

import server as server_module
from priority import (HELPER_NICENESS, IOLOOP_SLICE, SWITCH_INTERVAL, WORKER_NICENESS,
                      set_slice)
from tests.test_image_workers import child_pids, server_with_both_workers_held


def niceness(stat_path):
    """The nice value in a /proc .../stat file (its 19th field)."""
    with open(stat_path) as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def scheduler_slice(sched_path):
    """The scheduler slice (ns) in a /proc .../sched file; None where it has none."""
    with open(sched_path) as sched:
        for line in sched:
            if line.startswith("se.slice "):
                return int(line.split(":")[1])
    return None


SLICES = sys.platform == "linux" and scheduler_slice("/proc/thread-self/sched") is not None


def parent(pid):
    with open("/proc/%d/stat" % pid) as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_every_thread_but_the_ioloops_runs_below_it_and_image_workers_lowest(spawn, tmp_path):
    # both workers started and busy; the uploads went through the broker
    server, gate = server_with_both_workers_held(spawn, tmp_path)

    own = os.getpriority(os.PRIO_PROCESS, 0)
    threads = {int(tid): niceness("/proc/%d/task/%s/stat" % (server.pid, tid))
               for tid in os.listdir("/proc/%d/task" % server.pid)}
    assert threads.pop(server.pid) == own  # the IOLoop's thread keeps the process's priority
    # the storage's, the broker's, the default executor's and the process pool's own
    assert len(threads) >= 4, threads
    assert set(threads.values()) == {min(own + HELPER_NICENESS, 19)}, threads

    workers = [pid for pid in child_pids(server.pid) if parent(pid) != server.pid]
    assert len(workers) >= 2, workers  # forked by the fork server, the server's child
    assert {niceness("/proc/%d/stat" % pid) for pid in workers} == {WORKER_NICENESS}
    gate.open()


@pytest.mark.skipif(not SLICES, reason="the kernel shows no scheduler slice (Linux 6.6+)")
def test_only_the_ioloops_thread_has_the_short_slice(spawn, tmp_path):
    server, gate = server_with_both_workers_held(spawn, tmp_path)

    default = scheduler_slice("/proc/thread-self/sched")  # this test's own, the kernel's
    assert default != IOLOOP_SLICE
    threads = {int(tid): scheduler_slice("/proc/%d/task/%s/sched" % (server.pid, tid))
               for tid in os.listdir("/proc/%d/task" % server.pid)}
    assert threads.pop(server.pid) == IOLOOP_SLICE
    assert len(threads) >= 4, threads
    assert set(threads.values()) == {default}, threads
    workers = [pid for pid in child_pids(server.pid) if parent(pid) != server.pid]
    assert len(workers) >= 2, workers
    assert {scheduler_slice("/proc/%d/sched" % pid) for pid in workers} == {default}
    gate.open()


def test_the_server_runs_its_ioloop_with_a_short_switch_interval(monkeypatch):
    default = sys.getswitchinterval()
    assert default != SWITCH_INTERVAL  # Python's own, 5 ms: what the server changes
    seen = []

    def run(coroutine):  # instead of serving: what the IOLoop would run with
        seen.append(sys.getswitchinterval())
        coroutine.close()
    monkeypatch.setattr(server_module, "setup_logging", lambda *args: None)
    monkeypatch.setattr(server_module.asyncio, "run", run)
    try:
        server_module.main([])
    finally:
        sys.setswitchinterval(default)
        set_slice(0)  # this test's thread back on the kernel's own
    assert seen == [SWITCH_INTERVAL]
