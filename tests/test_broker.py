"""The broker contract, on the in-process broker and on RabbitMQ: routing, message
properties, prefetch, ack/nack, refused publishes, durability, and the RabbitMQ
connection's behaviour when the server goes away or is not there at all."""

import asyncio
import contextlib
import functools
import os
import re
import shutil
import subprocess
import time
import urllib.parse

import pika
import pytest

from tests import conftest
from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable, Topology
from broker.memory import MemoryBroker
from broker.rabbitmq import RabbitMQBroker
from tests.helpers import eventually

HEADERS = {"nickname": "alice", "filename": "photo.png", "size": 1024}


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_kind(request):
    return request.param


@pytest.fixture
def make_broker(request, broker_kind):
    """Build (not start) a broker of this test's kind, in a namespace of its own."""
    def make(url=None, retry_delays=Topology().retry_delays, **kwargs):
        if broker_kind == "memory":
            path = request.getfixturevalue("tmp_path") / "broker.db"
            return MemoryBroker(Topology(conftest.unique_name() + ".", retry_delays), str(path))
        prefix = request.getfixturevalue("amqp_prefix")
        return RabbitMQBroker(Topology(prefix, retry_delays), url or conftest.AMQP_URL, **kwargs)
    return make


async def start(broker):
    await broker.start()
    if isinstance(broker, RabbitMQBroker):
        await asyncio.wait_for(broker.connected.wait(), 10)
    assert broker.ready
    return broker


@contextlib.asynccontextmanager
async def running(broker):
    await start(broker)
    try:
        yield broker
    finally:
        await broker.close()


async def publish_upload(broker, body, message_id, headers=HEADERS, **kwargs):
    topology = broker.topology
    await broker.publish(topology.upload_exchange, UPLOAD_ROUTING_KEY, body,
                         message_id=message_id, content_type="image/png",
                         headers=dict(headers), **kwargs)


def in_thread(fn, *args):
    """Run blocking client calls (pika BlockingConnection, rabbitmqctl) off the loop."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _ready_on_server(queue):
    conn = conftest.amqp_connection()
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


async def waiting_in(broker, queue):
    """Messages ready in ``queue`` (delivered, unsettled ones not counted)."""
    if isinstance(broker, MemoryBroker):
        return broker.depth(queue)
    return await in_thread(_ready_on_server, queue)


def rabbitmqctl(*args, check=True):
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError("rabbitmqctl %s failed: %s%s"
                             % (" ".join(args), result.stdout, result.stderr))
    return result.stdout


@functools.lru_cache(maxsize=None)
def _rabbitmqctl_answers():
    try:
        rabbitmqctl("status")
        return None
    except Exception as exc:
        return exc


def require_rabbitmqctl():
    """These tests act on the server side (policies, closing connections) with rabbitmqctl."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")

    def check():
        if _rabbitmqctl_answers() is not None:
            raise _rabbitmqctl_answers()
    conftest.require("rabbitmqctl", check)


# -- every broker -----------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_published_message_arrives_with_its_properties_and_ack_removes_it(make_broker):
    broker = make_broker()
    topology = broker.topology
    body = bytes(range(256)) * 3 + b"\x00\r\n\xff"
    received = []
    async with running(broker):
        broker.consume(topology.upload_queue, received.append, prefetch=4)
        await publish_upload(broker, body, "req-1", headers=dict(HEADERS, size=len(body)),
                             mandatory=True)
        [message] = await eventually(lambda: received)
        assert message.body == body
        assert isinstance(message.body, bytes)
        assert message.message_id == "req-1"
        assert message.content_type == "image/png"
        assert message.routing_key == UPLOAD_ROUTING_KEY
        assert message.headers == {"nickname": "alice", "filename": "photo.png",
                                   "size": len(body)}
        assert message.redelivered is False
        message.ack()
        # A message published after the ack arrives next: the acked one never comes back
        # (a requeued message would be delivered ahead of it).
        await publish_upload(broker, b"marker", "req-marker", mandatory=True)
        await eventually(lambda: len(received) == 2)
        assert [m.message_id for m in received] == ["req-1", "req-marker"]
        received[1].ack()
        await broker.cancel(topology.upload_queue)
    # Closed: on RabbitMQ an unacked message would be back in the queue by now.
    assert await waiting_in(broker, topology.upload_queue) == 0


@pytest.mark.gen_test(timeout=30)
async def test_messages_of_megabytes_arrive_whole_and_in_order(make_broker):
    """A 12-MP photo is megabytes: many AMQP frames, each over several socket reads, and
    one read may end one message and start the next."""
    broker = make_broker()
    topology = broker.topology
    bodies = [os.urandom(3 * 1024 * 1024 + n * 4099) for n in range(3)]
    received = []
    async with running(broker):
        broker.consume(topology.upload_queue, received.append, prefetch=4)
        for n, body in enumerate(bodies):
            await publish_upload(broker, body, "big-%d" % n, mandatory=True)
        await eventually(lambda: len(received) == len(bodies))
        assert [m.message_id for m in received] == ["big-0", "big-1", "big-2"]
        assert [m.body == body for m, body in zip(received, bodies)] == [True] * 3
        for message in received:
            message.ack()
        await broker.cancel(topology.upload_queue)


@pytest.mark.gen_test(timeout=30)
async def test_prefetch_limits_unsettled_deliveries(make_broker):
    broker = make_broker()
    topology = broker.topology
    received = []
    async with running(broker):
        for n in range(5):
            await publish_upload(broker, b"body %d" % n, "req-%d" % n)
        broker.consume(topology.upload_queue, received.append, prefetch=2)
        await eventually(lambda: len(received) >= 2)
        # The broker's own count: the other three are still waiting, not delivered.
        assert await waiting_in(broker, topology.upload_queue) == 3
        assert len(received) == 2
        received[0].ack()
        await eventually(lambda: len(received) >= 3)
        assert await waiting_in(broker, topology.upload_queue) == 2
        assert len(received) == 3
        for message in received[1:]:
            message.ack()
        await eventually(lambda: len(received) == 5)
        for message in received[3:]:
            message.ack()
        assert [m.message_id for m in received] == ["req-%d" % n for n in range(5)]
        await broker.cancel(topology.upload_queue)
    assert await waiting_in(broker, topology.upload_queue) == 0


@pytest.mark.gen_test(timeout=30)
async def test_nack_requeues_as_redelivered_or_drops(make_broker):
    broker = make_broker()
    topology = broker.topology
    received = []
    async with running(broker):
        broker.consume(topology.upload_queue, received.append, prefetch=4)
        await publish_upload(broker, b"\x89PNG some bytes", "req-nack")
        await eventually(lambda: received)
        assert received[0].redelivered is False
        received[0].nack(requeue=True)

        await eventually(lambda: len(received) == 2)
        again = received[1]
        assert again.redelivered is True
        assert (again.body, again.message_id, again.headers) == (
            b"\x89PNG some bytes", "req-nack", HEADERS)
        again.nack(requeue=False)
        # Dropped: the next message delivered is one published after the nack.
        await publish_upload(broker, b"marker", "req-marker")
        await eventually(lambda: len(received) == 3)
        assert received[2].message_id == "req-marker"
        received[2].ack()
        await broker.cancel(topology.upload_queue)
    assert await waiting_in(broker, topology.upload_queue) == 0


@pytest.mark.gen_test(timeout=30)
async def test_mandatory_publish_that_no_queue_takes_is_refused(make_broker):
    broker = make_broker()
    topology = broker.topology
    async with running(broker):
        with pytest.raises(BrokerUnavailable):
            await broker.publish(topology.upload_exchange, "nowhere", b"x", mandatory=True)
        # Without mandatory an unroutable message is simply dropped.
        assert await broker.publish(topology.upload_exchange, "nowhere", b"x") is None
        # The refusal leaves the broker working: routable publishes still go through.
        await publish_upload(broker, b"fine", "req-ok", mandatory=True)
        assert broker.ready
        assert await waiting_in(broker, topology.upload_queue) == 1


@pytest.mark.gen_test(timeout=30)
async def test_publish_before_start_or_after_close_is_refused(make_broker):
    broker = make_broker()
    assert not broker.ready
    with pytest.raises(BrokerUnavailable):
        await publish_upload(broker, b"early", "req-early")
    await start(broker)
    await publish_upload(broker, b"in time", "req-in-time", mandatory=True)
    await broker.close()
    assert not broker.ready
    with pytest.raises(BrokerUnavailable):
        await publish_upload(broker, b"late", "req-late")


@pytest.mark.gen_test(timeout=30)
async def test_delay_queue_dead_letters_onwards_once_its_ttl_is_up(make_broker):
    broker = make_broker(retry_delays=(0.2,))
    topology = broker.topology
    received = []
    async with running(broker):
        broker.consume(topology.upload_queue, received.append, prefetch=4)
        await broker.publish(topology.retry_exchange, topology.retry_key(0.2), b"later",
                             message_id="req-later", content_type="image/png",
                             headers=dict(HEADERS, attempts=1), mandatory=True)
        [message] = await eventually(lambda: received)
        headers = {k: v for k, v in message.headers.items() if not k.startswith("x-")}
        assert (message.body, message.message_id, message.content_type, headers,  # RabbitMQ
                message.routing_key, message.redelivered) == (                  # adds x-death
            b"later", "req-later", "image/png", dict(HEADERS, attempts=1),
            UPLOAD_ROUTING_KEY, False)
        message.ack()
        await broker.cancel(topology.upload_queue)
    delay_queue = "%s.%s" % (topology.upload_queue, topology.retry_key(0.2))
    assert await waiting_in(broker, delay_queue) == 0
    assert await waiting_in(broker, topology.upload_queue) == 0


# -- in-process broker only ------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_memory_broker_round_robins_between_consumers(tmp_path):
    broker = MemoryBroker(Topology(conftest.unique_name() + "."), str(tmp_path / "broker.db"))
    queue = broker.topology.upload_queue
    first, second = [], []
    async with running(broker):
        broker.consume(queue, first.append, prefetch=10)
        broker.consume(queue, second.append, prefetch=10)
        for n in range(6):
            await publish_upload(broker, b"%d" % n, "req-%d" % n)
        await eventually(lambda: len(first) + len(second) == 6)
        assert [m.message_id for m in first] == ["req-0", "req-2", "req-4"]
        assert [m.message_id for m in second] == ["req-1", "req-3", "req-5"]
        for message in first + second:
            message.ack()
        assert broker.depth(queue) == 0


# -- RabbitMQ only -----------------------------------------------------------------

def _redeclare(kind, name, durable, arguments=None):
    conn = conftest.amqp_connection()
    try:
        channel = conn.channel()
        if kind == "exchange":
            channel.exchange_declare(name, "direct", durable=durable)
        else:
            channel.queue_declare(name, durable=durable, arguments=arguments)
    finally:
        if conn.is_open:
            conn.close()


def _get_one(queue):
    conn = conftest.amqp_connection()
    try:
        method, properties, body = conn.channel().basic_get(queue, auto_ack=True)
        return properties, body
    finally:
        conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_rabbitmq_topology_is_durable_and_messages_persistent(amqp_prefix):
    broker = RabbitMQBroker(Topology(amqp_prefix), conftest.AMQP_URL)
    topology = broker.topology
    async with running(broker):
        declared = [("exchange", name, None) for name in topology.exchanges]
        declared += [("queue", spec.name, spec.amqp_arguments) for spec in topology.queues]
        for kind, name, arguments in declared:
            # Same arguments: accepted.  A different durability: refused, so it is durable.
            await in_thread(_redeclare, kind, name, True, arguments)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                await in_thread(_redeclare, kind, name, False, arguments)
            assert refused.value.reply_code == 406, (kind, name)  # PRECONDITION_FAILED

        await publish_upload(broker, b"keep me", "req-persistent", mandatory=True)
        properties, body = await in_thread(_get_one, topology.upload_queue)
        assert body == b"keep me"
        assert properties.delivery_mode == 2
        assert properties.message_id == "req-persistent"
        assert properties.headers == HEADERS


@pytest.mark.gen_test(timeout=60)
async def test_rabbitmq_nack_from_the_server_is_broker_unavailable(amqp_prefix):
    require_rabbitmqctl()
    broker = RabbitMQBroker(Topology(amqp_prefix), conftest.AMQP_URL)
    policy = "pa-test-" + amqp_prefix.rstrip(".")
    pattern = "^%s$" % re.escape(broker.topology.upload_queue)
    async with running(broker):
        try:
            await in_thread(lambda: rabbitmqctl(
                "set_policy", "--apply-to", "queues", "--priority", "100", policy, pattern,
                '{"max-length":0,"overflow":"reject-publish"}'))
            deadline = time.monotonic() + 15
            while True:  # the policy reaches the queue a moment later
                try:
                    await publish_upload(broker, b"refused", "req-refused", mandatory=True)
                except BrokerUnavailable as exc:
                    assert "nack" in str(exc)
                    break
                assert time.monotonic() < deadline, "the policy never refused a publish"
                await asyncio.sleep(0.1)
            assert broker.ready  # a nack is about one message, not the connection
        finally:
            await in_thread(lambda: rabbitmqctl("clear_policy", policy, check=False))

        async def accepted():
            try:
                await publish_upload(broker, b"accepted", "req-accepted", mandatory=True)
                return True
            except BrokerUnavailable:
                return False
        await eventually(accepted, timeout=15, interval=0.1)


@pytest.mark.gen_test(timeout=30)
async def test_rabbitmq_confirm_timeout_is_broker_unavailable(amqp_prefix):
    broker = RabbitMQBroker(Topology(amqp_prefix), conftest.AMQP_URL, confirm_timeout=0.000001)
    async with running(broker):
        with pytest.raises(BrokerUnavailable, match="no confirm"):
            await publish_upload(broker, b"slow", "req-slow", mandatory=True)
        # The late confirm arrives into nothing, and the channel carries on: with a
        # timeout that can be met, the next publish is confirmed.
        broker.confirm_timeout = 10
        await publish_upload(broker, b"next", "req-next", mandatory=True)
        assert broker.ready


def _close_connection_named(name):
    """Close, from the server side, the connection whose client named itself ``name``."""
    listing = rabbitmqctl("list_connections", "-q", "--no-table-headers",
                          "pid", "client_properties")
    tag = '{"connection_name","%s"}' % name
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if tag in line]
    assert len(pids) == 1, listing
    rabbitmqctl("close_connection", pids[0], "closed by test_broker")


def _connections_named(name):
    listing = rabbitmqctl("list_connections", "-q", "--no-table-headers", "client_properties")
    return sum('{"connection_name","%s"}' % name in line for line in listing.splitlines())


def _named_url(name):
    sep = "&" if "?" in conftest.AMQP_URL else "?"
    return "%s%sclient_properties=%s" % (conftest.AMQP_URL, sep,
                                         urllib.parse.quote(repr({"connection_name": name})))


@pytest.mark.gen_test(timeout=60)
async def test_rabbitmq_connection_lost_refuses_publishes_then_reconnects(amqp_prefix):
    require_rabbitmqctl()
    name = "pa-test-" + amqp_prefix.rstrip(".")
    broker = RabbitMQBroker(Topology(amqp_prefix), _named_url(name))
    topology = broker.topology
    received = []

    def on_message(message):
        received.append(message.message_id)
        message.ack()

    async with running(broker):
        broker.consume(topology.upload_queue, on_message, prefetch=10)
        await publish_upload(broker, b"before", "before", mandatory=True)
        await eventually(lambda: "before" in received)

        closing = in_thread(_close_connection_named, name)
        failure = None
        deadline = time.monotonic() + 15
        n = 0
        while failure is None:  # publish until the drop refuses one (in flight or next)
            n += 1
            try:
                await publish_upload(broker, b"during", "during-%d" % n, mandatory=True)
            except BrokerUnavailable as exc:
                failure = exc
            assert time.monotonic() < deadline, "publishes kept succeeding after the drop"
            await asyncio.sleep(0.01)
        await closing
        assert not broker.ready
        with pytest.raises(BrokerUnavailable):
            await publish_upload(broker, b"next", "next", mandatory=True)

        # The broker reconnects by itself (first retry after 1 s) ...
        await eventually(lambda: not broker.connected.is_set(), timeout=5)
        await asyncio.wait_for(broker.connected.wait(), 15)
        assert broker.ready
        # ... and the consumer registered before the drop is consuming again.
        await publish_upload(broker, b"after", "after", mandatory=True)
        await eventually(lambda: "after" in received)


@pytest.mark.gen_test(timeout=30)
async def test_rabbitmq_reconnect_loop_never_blocks_the_ioloop():
    url = "amqp://guest:guest@127.0.0.1:%d/%%2F" % conftest.free_port()
    broker = RabbitMQBroker(Topology(conftest.unique_name() + "."), url)
    await broker.start()
    ticks = []
    loop_time = asyncio.get_running_loop().time
    ready_seen = []
    end = loop_time() + 2.2
    while loop_time() < end:
        ticks.append(loop_time())
        ready_seen.append(broker.ready)
        await asyncio.sleep(0.01)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    # A blocking wait for the reconnect delay (1 s) would show as a gap that long.
    assert max(gaps) < 0.9, "the loop stalled for %.2f s" % max(gaps)
    assert not any(ready_seen)
    assert not broker.connected.is_set()
    with pytest.raises(BrokerUnavailable):
        await publish_upload(broker, b"nobody", "req-nobody")

    # close() cuts the reconnect delay short instead of waiting it out (the runner ends).
    await broker.close()
    assert broker._runner.done()
    assert not broker.ready


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("after", [0, 0.002, 0.01, 0.05])
async def test_rabbitmq_close_right_after_start_leaves_no_connection(amqp_prefix, after):
    require_rabbitmqctl()
    name = "pa-test-" + amqp_prefix.rstrip(".")
    broker = RabbitMQBroker(Topology(amqp_prefix), _named_url(name))
    await broker.start()
    await asyncio.sleep(after)  # the connection is on its way up (TCP, AMQP, declares)
    await broker.close()
    assert not broker.ready
    # Nothing is left to connect later: the runner has ended, its connection is closing.
    assert broker._runner.done()
    assert broker._connection is None or broker._connection.is_closing \
        or broker._connection.is_closed

    async def none_on_the_server():
        return await in_thread(_connections_named, name) == 0
    await eventually(none_on_the_server, timeout=10, interval=0.2)
