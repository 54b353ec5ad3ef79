"""The in-process broker is durable: its queues live in a SQLite file, so what
was published survives the broker being closed and opened again on the file,
delivered but unsettled messages come back marked redelivered, and delays run
on across a restart; and the demo itself (``python server.py`` on embedded
defaults, held in flight by gates: tests/gated.py) killed in the middle of
a burst of uploads stores every upload it answered 202 exactly once after a restart."""

import asyncio
import collections
import http.client
import re
import signal
import sqlite3
import threading

import pytest

from broker import UPLOAD_ROUTING_KEY, Topology, open_broker
from broker.memory import MemoryBroker
from config import load_config
from tests import conftest
from tests.gated import Gate
from tests.helpers import eventually, make_image
from tests.processes import (WEB_READY, no_traceback, process_env, upload, wait_all_stored,
                             wait_until)

HEADERS = {"nickname": "alice", "filename": "photo.png", "size": 7}
DELAY = 3600  # a delay no test waits for: the tests move the broker's clock instead


@pytest.fixture
def reopen(tmp_path):
    """``await reopen()``: a started broker on this test's file, with the same
    topology each time (the test closes it)."""
    topology = Topology(conftest.unique_name() + ".", retry_delays=(DELAY,))
    path = str(tmp_path / "broker.db")

    async def start(clock=None):
        broker = MemoryBroker(topology, path)
        if clock is not None:
            broker.clock = clock
        await broker.start()
        return broker
    return start


async def publish(broker, n, exchange=None, routing_key=UPLOAD_ROUTING_KEY):
    await broker.publish(exchange or broker.topology.upload_exchange, routing_key,
                         b"body %d" % n, message_id="req-%d" % n, content_type="image/png",
                         headers=HEADERS, mandatory=True)


async def drain(broker, queue, count):
    """Receive ``count`` messages of ``queue``, ack them and close the broker; its file
    holds no message then.  The messages, in the order they came."""
    received = []
    broker.consume(queue, received.append, prefetch=10)
    await eventually(lambda: len(received) == count)
    for message in received:
        message.ack()
    await broker.close()
    assert rows(broker) == []
    return received


def rows(broker):
    """(queue, message_id, delivered) of every row, read beside the broker."""
    conn = sqlite3.connect(broker.path)
    try:
        return conn.execute("SELECT queue, message_id, delivered FROM broker_messages "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_published_messages_are_on_disk_and_delivered_after_a_reopen(reopen):
    broker = await reopen()
    queue = broker.topology.upload_queue
    for n in range(3):
        await publish(broker, n)
        # The publish returned: the row is committed (another connection sees it).
        assert rows(broker)[-1] == (queue, "req-%d" % n, 0)
    await broker.close()

    broker = await reopen()
    assert broker.depth(queue) == 3
    received = await drain(broker, queue, 3)
    assert [(m.message_id, m.body, m.content_type, m.headers, m.redelivered)
            for m in received] == [("req-%d" % n, b"body %d" % n, "image/png", HEADERS, False)
                                   for n in range(3)]


@pytest.mark.gen_test(timeout=30)
async def test_unsettled_messages_come_back_redelivered_and_settled_ones_do_not(reopen):
    broker = await reopen()
    queue = broker.topology.upload_queue
    for n in range(5):
        await publish(broker, n)
    received = []
    broker.consume(queue, received.append, prefetch=4)
    await eventually(lambda: len(received) == 4)
    await broker.cancel(queue)
    received[0].ack()
    received[1].nack(requeue=False)
    received[2].nack(requeue=True)   # back in the queue, delivered once already
    # received[3] stays unsettled, and req-4 was never delivered (prefetch).
    await broker.close()
    assert [message_id for _, message_id, _ in rows(broker)] == ["req-2", "req-3", "req-4"]

    again = await drain(await reopen(), queue, 3)
    assert [(m.message_id, m.redelivered) for m in again] == [
        ("req-2", True), ("req-3", True), ("req-4", False)]


@pytest.mark.gen_test(timeout=30)
async def test_a_delay_runs_on_across_a_restart_and_then_dead_letters_onwards(reopen):
    broker = await reopen()
    topology = broker.topology
    delay_queue = "%s.%s" % (topology.upload_queue, topology.retry_key(DELAY))
    await publish(broker, 1, topology.retry_exchange, topology.retry_key(DELAY))
    assert rows(broker) == [(delay_queue, "req-1", 0)]
    await broker.close()

    # Reopened before it is due: it goes on waiting in the delay queue.
    broker = await reopen()
    assert (broker.depth(delay_queue), broker.depth(topology.upload_queue)) == (1, 0)
    await broker.close()

    # Reopened after it is due: it moves on to the work queue as a fresh delivery.
    clock = broker.clock
    broker = await reopen(clock=lambda: clock() + DELAY + 1)
    [message] = await drain(broker, topology.upload_queue, 1)
    assert (message.message_id, message.body, message.headers, message.redelivered) == (
        "req-1", b"body 1", HEADERS, False)


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_publishes_share_a_commit_made_off_the_ioloop(reopen):
    broker = await reopen()
    batches = []
    commit = broker._commit

    def recording_commit(calls):
        batches.append((len(calls), threading.current_thread() is threading.main_thread()))
        return commit(calls)
    broker._commit = recording_commit

    await asyncio.gather(*[publish(broker, n) for n in range(50)])
    assert broker.depth(broker.topology.upload_queue) == 50
    assert len(rows(broker)) == 50
    # Published together, they were committed together (one fsync), never on the loop.
    assert batches == [(50, False)]


@pytest.mark.parametrize("environ,where", [
    ({"SQLITE_DB_PATH": "/srv/photos.db"}, "/srv/photos.db"),
    ({"DATABASE_URL": "postgresql://postgres@db/photo_app"}, "<repo>/data/broker.db"),
    ({"DATABASE_URL": "postgresql://postgres@db/photo_app", "BROKER_DB_PATH": "/var/q.db"},
     "/var/q.db"),
    ({"SQLITE_DB_PATH": "/srv/photos.db", "BROKER_DB_PATH": "/var/q.db"}, "/var/q.db"),
], ids=["sqlite", "postgres", "postgres-chosen", "sqlite-chosen"])
def test_the_broker_file_is_the_sqlite_database_or_one_of_its_own(environ, where):
    config = load_config([], environ)
    assert config.embedded_broker_path == where.replace("<repo>", conftest.ROOT)
    assert open_broker(config).path == config.embedded_broker_path


# -- the demo as a real process, killed in the middle of a burst ----------------------

BURST = 30        # uploads the clients try to send
KILL_AFTER = 12   # uploads answered 202 before the signal
CLIENTS = 4
PREFETCH, IMAGE_WORKERS = 4, 2
STORED_FIRST = 2  # images the gate lets through before the signal (their events are held)


class Burst:
    """``BURST`` distinct uploads sent by ``CLIENTS`` threads, going on until all were
    tried, whatever happens to the server meanwhile."""

    def __init__(self, port):
        self.port = port
        self.accepted = []                    # request ids answered 202
        self.others = collections.Counter()   # any other outcome: a status or an error
        self._lock = threading.Lock()
        self._numbers = iter(range(BURST))
        self._threads = [threading.Thread(target=self._send) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _send(self):
        while True:
            with self._lock:
                n = next(self._numbers, None)
            if n is None:
                return
            data = make_image("PNG", size=(16, 12), color=(n, 255 - n, 7))
            try:
                # (held at the gate for as long as the test takes to get ready)
                code, body = upload(self.port, data, nickname="burst", timeout=120)
            except (OSError, http.client.HTTPException) as exc:
                code = type(exc).__name__
            with self._lock:
                if code == 202:
                    self.accepted.append(body["request_id"])
                else:
                    self.others[code] += 1

    def join(self):
        for thread in self._threads:
            thread.join()


def db_state(path):
    """(images per request id, upload statuses, {message_id: delivered} of the upload queue)."""
    conn = sqlite3.connect(path)
    try:
        images = collections.Counter(r for (r,) in conn.execute("SELECT request_id FROM images"))
        statuses = dict(conn.execute("SELECT request_id, status FROM uploads"))
        kept = dict(conn.execute("SELECT message_id, delivered FROM broker_messages "
                                 "WHERE queue = ?", (Topology().upload_queue,)))
        return images, statuses, kept
    finally:
        conn.close()


def messages_in(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM broker_messages").fetchone()[0]
    finally:
        conn.close()


def kept_on_close(log):
    [kept] = re.findall(r"in-process broker: closed; (\d+) message\(s\) kept", log)
    return int(kept)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_demo_killed_mid_burst_stores_every_accepted_upload_once(spawn, tmp_path, signum):
    db = tmp_path / "db" / "photos.db"
    upload_gate, image_gate, event_gate = (Gate(tmp_path / point, point)
                                           for point in ("uploads", "images", "uploaded"))
    upload_gate.allow(KILL_AFTER)
    image_gate.allow(STORED_FIRST)
    port = conftest.free_port()
    env = process_env(SQLITE_DB_PATH=db, PREFETCH=PREFETCH, IMAGE_WORKERS=IMAGE_WORKERS,
                      SHUTDOWN_TIMEOUT=4)
    args = upload_gate.command("--port", str(port), also=(image_gate, event_gate))
    first = spawn("first", args, env, ready=WEB_READY)

    # The burst: KILL_AFTER uploads answered 202, the next ones held as they arrive,
    # the processor held full (two stored with their events held, two in the image
    # gate) and the rest of the accepted waiting in the broker; then the signal.
    burst = Burst(port)

    def held():
        return (upload_gate.entered() == KILL_AFTER + CLIENTS
                and image_gate.entered() == PREFETCH and event_gate.entered() == STORED_FIRST
                and len(burst.accepted) == KILL_AFTER)
    wait_until(held, 30, lambda: "not held as expected: %d accepted, %d/%d/%d at the gates: %s"
               % (len(burst.accepted), upload_gate.entered(), image_gate.entered(),
                  event_gate.entered(), first.describe()))
    first.popen.send_signal(signum)
    if signum != signal.SIGKILL:  # SIGINT is Ctrl-C
        # Uploads in progress are still answered while the server shuts down.
        first.wait_for_log("%s: shutting down" % signal.Signals(signum).name)
        upload_gate.open()
        # Shutdown gives up on the held messages after SHUTDOWN_TIMEOUT and leaves
        # them, with all those not yet delivered, in the file: with the gates still shut.
        log = first.wait_for_log("kept for the next start")
        assert "Processor: waiting for %d message(s) in flight" % PREFETCH in log
        image_gate.open()  # the held image threads may end now
        assert first.wait() == 0, first.describe()
        assert first.log().rstrip().endswith("stopped") and no_traceback(first.log())
    else:
        first.wait()
    burst.join()
    accepted = list(burst.accepted)

    images, statuses, kept = db_state(db)
    assert set(images) <= set(kept), "stored but not acked: still in the broker"
    assert len(images) == STORED_FIRST
    assert [r for r in accepted if r not in kept] == [], "an accepted upload was lost"
    assert sum(kept.values()) == PREFETCH, "the held deliveries are marked delivered"
    if signum != signal.SIGKILL:
        assert kept_on_close(first.log()) == len(kept)

    # The next start resumes them; open the gates and every 202 ends stored, once.
    second = spawn("second", args, env, ready=WEB_READY + ("%d message(s) resumed" % len(kept),))
    for gate in (upload_gate, image_gate, event_gate):
        gate.open()
    final = wait_all_stored(port, accepted, timeout=60)
    assert {final[r]["status"] for r in accepted} == {"stored"}
    wait_until(lambda: messages_in(db) == 0, 30, "messages left in the broker (events?)")
    assert second.stop() == 0, second.describe()
    assert no_traceback(second.log()), second.log()
    assert kept_on_close(second.log()) == 0

    images, statuses, kept = db_state(db)
    assert [r for r in accepted if images[r] != 1] == []
    assert max(images.values()) == 1
    assert [r for r in accepted if statuses[r] != "stored"] == []
    absorbed = second.log().count("was stored before (redelivery)")
    assert absorbed == STORED_FIRST
    unanswered = [r for r in statuses if r not in accepted]
    print("%s: %d sent, %d accepted (202), other outcomes %s; after the restart %d stored "
          "(%d of them not answered 202), %d duplicates absorbed, unanswered uploads left "
          "%s" % (signal.Signals(signum).name, BURST, len(accepted), dict(burst.others),
                  len(images), len(set(images) - set(accepted)), absorbed,
                  dict(collections.Counter(statuses[r] for r in unanswered
                                           if r not in images))))
