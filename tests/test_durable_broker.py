"""The in-process broker is durable: its queues live in a SQLite file, so what
was published survives the broker being closed and opened again on the file,
delivered but unsettled messages come back marked redelivered, and delays run
on across a restart.  (Real processes killed mid-burst: tests/test_durable_demo.py.)"""

import asyncio
import sqlite3
import threading

import pytest

from broker import UPLOAD_ROUTING_KEY, Topology
from broker.memory import MemoryBroker
from tests import conftest
from tests.helpers import eventually

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
    received = []
    broker.consume(queue, received.append, prefetch=10)
    await eventually(lambda: len(received) == 3)
    assert [(m.message_id, m.body, m.content_type, m.headers, m.redelivered)
            for m in received] == [("req-%d" % n, b"body %d" % n, "image/png", HEADERS, False)
                                   for n in range(3)]
    for message in received:
        message.ack()
    await broker.close()
    assert rows(broker) == []


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

    broker = await reopen()
    again = []
    broker.consume(queue, again.append, prefetch=10)
    await eventually(lambda: len(again) == 3)
    assert [(m.message_id, m.redelivered) for m in again] == [
        ("req-2", True), ("req-3", True), ("req-4", False)]
    for message in again:
        message.ack()
    await broker.close()
    assert rows(broker) == []


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
    received = []
    broker.consume(topology.upload_queue, received.append, prefetch=1)
    [message] = await eventually(lambda: received)
    assert (message.message_id, message.body, message.headers, message.redelivered) == (
        "req-1", b"body 1", HEADERS, False)
    message.ack()
    await broker.close()
    assert rows(broker) == []


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
