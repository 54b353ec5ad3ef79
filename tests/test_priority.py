"""CPU priorities (priority.py): in a running server every thread but the IOLoop's
runs below it, and the image workers lowest of all.  Read off the real process
while image work is held in its workers by a gate (tests/gated.py)."""

import os
import sys

import pytest

from priority import HELPER_NICENESS, WORKER_NICENESS
from tests import conftest
from tests.gated import Gate
from tests.processes import WEB_READY, process_env, upload
from tests.test_consumers import make_upload
from tests.test_image_workers import child_pids

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def niceness(stat_path):
    """The nice value in a /proc .../stat file (its 19th field)."""
    with open(stat_path) as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def parent(pid):
    with open("/proc/%d/stat" % pid) as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_every_thread_but_the_ioloops_runs_below_it_and_image_workers_lowest(spawn, tmp_path):
    gate = Gate(tmp_path / "images")
    port = conftest.free_port()
    server = spawn("server", gate.command("--port", str(port)),
                   process_env(SQLITE_DB_PATH=tmp_path / "photos.db", IMAGE_WORKERS=2),
                   ready=WEB_READY)
    for n in range(2):
        code, _body = upload(port, make_upload().data, nickname="held-%d" % n)
        assert code == 202
    gate.wait_entered(2)  # both workers started and busy; uploads went through the broker

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
