"""Messages another AMQP client got wrong never loop: a NUL byte in a header (which
PostgreSQL refuses in text) is cleaned before anything is recorded, and a message
that a consumer keeps failing on is parked after ``MAX_DELIVERIES``, while an
outage (database down) is waited out without parking anything.

Each message is published by a foreign client: pika's BlockingConnection on
RabbitMQ, and the broker's own publish on the in-process broker."""

import asyncio
import json
import logging
import uuid

import pika
import pytest

import consumers.base
from broker import DEAD_ROUTING_KEY, UPLOAD_ROUTING_KEY
from broker.memory import MemoryBroker
from consumers.dead_letters import DeadLetterRecorder
from consumers.notifier import Notifier
from storage import StorageError
from tests import conftest
from tests.helpers import eventually, make_image
from tests.test_consumers import NO_CONSUMERS, finished, settled


async def foreign_publish(context, exchange, routing_key, body, message_id, headers,
                          content_type="application/octet-stream"):
    """Publish as another AMQP client would: pika on RabbitMQ, else the in-process broker."""
    if isinstance(context.broker, MemoryBroker):
        await context.broker.publish(exchange, routing_key, body, message_id=message_id,
                                     content_type=content_type, headers=headers,
                                     mandatory=True)
        return

    def publish():
        conn = conftest.amqp_connection()
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(
                message_id=message_id, content_type=content_type, delivery_mode=2,
                headers=headers), mandatory=True)
        finally:
            conn.close()
    await asyncio.get_running_loop().run_in_executor(None, publish)


async def parked(context):
    """The messages waiting in the parking queue: [(message_id, headers, body)]."""
    broker = context.broker
    queue = broker.topology.parked_queue
    if isinstance(broker, MemoryBroker):
        return [(m.message_id, m.headers, m.body) for m in await broker.peek(queue)]

    def peek():
        conn = conftest.amqp_connection()
        try:
            found = []
            channel = conn.channel()
            while True:
                method, properties, body = channel.basic_get(queue)
                if method is None:
                    return found  # closing the connection puts them back
                found.append((properties.message_id, properties.headers, body))
        finally:
            conn.close()
    return await asyncio.get_running_loop().run_in_executor(None, peek)


# -- a NUL byte in a header --------------------------------------------------------------

@pytest.mark.gen_test(timeout=40)
async def test_an_upload_whose_nickname_holds_a_nul_fails_at_once(context):
    topology = context.broker.topology
    request_id = str(uuid.uuid4())
    await foreign_publish(context, topology.upload_exchange, UPLOAD_ROUTING_KEY, make_image(),
                          request_id, {"nickname": "ev\x00il", "filename": "p\x00.png"},
                          content_type="image/png")
    status = await finished(context, request_id)
    assert (status["status"], status["nickname"], status["dead_lettered"]) == (
        "failed", "evil", False)
    assert "control characters" in status["error"]
    await settled(context, topology.upload_queue, topology.dead_queue)
    assert await parked(context) == []


@pytest.mark.gen_test(timeout=40)
async def test_a_dead_letter_whose_headers_hold_nuls_is_recorded(context):
    topology = context.broker.topology
    request_id = str(uuid.uuid4())
    await foreign_publish(context, topology.dead_exchange, DEAD_ROUTING_KEY, b"bytes\x00",
                          request_id, {"nickname": "ev\x00il", "filename": "p\x00.png",
                                       "x-attempts": 3, "x-error": "bro\x00ken"},
                          content_type="image/png\x00")
    status = await finished(context, request_id)
    assert (status["status"], status["nickname"], status["dead_lettered"]) == (
        "failed", "evil", True)
    assert status["error"] == "gave up after 3 attempts: broken"
    letter = await context.storage.get_dead_letter(request_id)
    assert (letter["filename"], letter["content_type"], letter["data"]) == (
        "p.png", "image/png", b"bytes\x00")
    await settled(context, topology.dead_queue)
    assert await parked(context) == []


# -- a message a consumer keeps failing on ------------------------------------------------

POISON = dict(NO_CONSUMERS, max_deliveries=3)


@pytest.fixture
def quick_requeues(monkeypatch):
    monkeypatch.setattr(consumers.base, "RETRY_DELAY", 0.01)


def failing_consumer(context, kind, exc):
    """A notifier or a recorder whose work raises ``exc`` every time; its calls counted."""
    calls = []

    async def fail(*args, **kwargs):
        calls.append(1)
        raise exc
    if kind == "notifier":
        consumer = Notifier(context, actions={"fails": fail})
        topology = context.broker.topology
        publish = (topology.events_exchange, "image.uploaded",
                   json.dumps({"event": "image.uploaded", "request_id": "r"}).encode())
    else:
        consumer = DeadLetterRecorder(context)
        context.storage = type("Failing", (), {"record_dead_letter": staticmethod(fail)})()
        topology = context.broker.topology
        publish = (topology.dead_exchange, DEAD_ROUTING_KEY, b"image bytes")
    consumer.start()
    return consumer, calls, publish


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [POISON])
@pytest.mark.parametrize("kind", ["notifier", "recorder"])
async def test_a_message_that_keeps_failing_is_parked(context, caplog, quick_requeues, kind):
    caplog.set_level(logging.WARNING, logger="consumers.base")
    storage = context.storage
    consumer, calls, (exchange, key, body) = failing_consumer(
        context, kind, ValueError("A string literal cannot contain NUL (0x00) characters."))
    try:
        message_id = "poison:" + uuid.uuid4().hex
        await foreign_publish(context, exchange, key, body, message_id, {"nickname": "x"})
        [(parked_id, headers, parked_body)] = await eventually(lambda: parked(context),
                                                               interval=0.1)
        await settled(context, consumer.queue)
    finally:
        await consumer.stop(5)
        context.storage = storage
    assert (parked_id, parked_body) == (message_id, body)
    assert headers["x-parked-from"] == consumer.queue and headers["x-routing-key"] == key
    assert headers["x-error"].startswith("ValueError: A string literal") and headers["nickname"]
    assert len(calls) == 3
    assert [r for r in caplog.records if r.levelname == "ERROR" and "PARKED" in r.getMessage()
            and message_id in r.getMessage()]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [POISON])
async def test_an_outage_is_waited_out_not_parked(context, quick_requeues):
    storage = context.storage
    consumer, calls, (exchange, key, body) = failing_consumer(
        context, "recorder", StorageError("the database went away (injected)"))
    try:
        await foreign_publish(context, exchange, key, body, "outage:" + uuid.uuid4().hex, {})
        await eventually(lambda: len(calls) >= 3 * 2, interval=0.01)  # twice the bound
        assert await parked(context) == []
    finally:
        await consumer.stop(0.01)
        context.storage = storage
