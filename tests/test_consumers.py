"""The processor and the notifier on every stack, fed straight through the broker
by the upload contract: stored or failed for good, events out, idempotent on
redelivery, transient faults retried, graceful stop, image work off the loop."""

import asyncio
import json
import logging
import subprocess
import threading
import time
import uuid

import pika
import pytest

import consumers.processor as processor_module
from broker import UPLOAD_ROUTING_KEY
from broker.memory import MemoryBroker
from uploads import Upload
from consumers.processor import Processor
from storage import StorageError
from tests import conftest
from tests.helpers import eventually, make_image

CONTRACT_FIELDS = {"event", "image_id", "request_id", "nickname", "mime_type",
                   "width", "height", "size", "url"}


@pytest.fixture(autouse=True)
def notifications_logged(caplog):
    caplog.set_level(logging.INFO, logger="photo_app.notifications")


def make_upload(data=None, nickname=None, mime_type="image/png", filename="photo.png"):
    return Upload(uuid.uuid4().hex, nickname or "nick-" + uuid.uuid4().hex[:8], filename,
                  mime_type, make_image() if data is None else data)


async def publish_upload(context, upload, **overrides):
    """Publish ``upload`` the way the web role does (Upload.publish_args)."""
    broker = context.broker
    args = upload.publish_args()
    args.update(overrides)
    await broker.publish(broker.topology.upload_exchange, UPLOAD_ROUTING_KEY,
                         mandatory=True, **args)


async def finished(context, request_id, timeout=15):
    """The upload once it is ``stored`` or ``failed``."""
    async def final():
        upload = await context.storage.get_upload(request_id)
        return upload if upload and upload["status"] in ("stored", "failed") else None
    return await eventually(final, timeout=timeout)


def notifications(caplog, event=None, request_id=None):
    """The events the notifier's log action wrote, parsed."""
    found = []
    for record in caplog.records:
        if record.name != "photo_app.notifications":
            continue
        text = record.getMessage()
        assert text.startswith("notification "), text
        body = json.loads(text[len("notification "):])
        if event in (None, body["event"]) and request_id in (None, body["request_id"]):
            found.append(body)
    return found


async def images_with_request(context, request_id):
    """How many rows of ``images`` carry ``request_id`` (straight from the SQL layer)."""
    storage = context.storage
    return await storage._run(lambda cursor: storage._execute(
        cursor, "SELECT COUNT(*) FROM images WHERE request_id = %s",
        (request_id,)).fetchone()[0])


def _rabbit_queue_counts(queue):
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers",
         "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    for line in listing.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError("queue %s not found" % queue)


async def queue_counts(context, queue):
    """(ready, delivered but unsettled) messages of ``queue``."""
    broker = context.broker
    if isinstance(broker, MemoryBroker):
        unsettled = sum(c.unsettled for c in broker._queues[queue].consumers)
        return broker.depth(queue), unsettled
    return await asyncio.get_running_loop().run_in_executor(None, _rabbit_queue_counts, queue)


async def settled(context, *queues):
    """Wait until every message of ``queues`` is settled for good."""
    for queue in queues:
        async def empty():
            return await queue_counts(context, queue) == (0, 0)
        await eventually(empty, timeout=15, interval=0.1)


def count_process_calls(monkeypatch):
    """Record each image processing call as (thread, data); still runs the real thing."""
    calls = []
    real = processor_module.process

    def process(data, *args, **kwargs):
        calls.append((threading.current_thread(), bytes(data)))
        return real(data, *args, **kwargs)
    monkeypatch.setattr(processor_module, "process", process)
    return calls


# -- the happy path ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_valid_upload_is_stored_and_announced(context, caplog):
    data = make_image("PNG", size=(40, 30))
    upload = make_upload(data)
    await publish_upload(context, upload)

    status = await finished(context, upload.request_id)
    assert status["status"] == "stored", status
    assert status["nickname"] == upload.nickname and status["error"] is None
    image_id = status["image_id"]
    stored, mime, sha256 = await context.storage.get_image_content(image_id)
    assert stored == data and mime == "image/png"

    [event] = await eventually(lambda: notifications(caplog, "image.uploaded",
                                                     upload.request_id))
    assert CONTRACT_FIELDS <= set(event)
    assert event == dict(event, image_id=image_id, request_id=upload.request_id,
                         nickname=upload.nickname, mime_type="image/png", width=40, height=30,
                         size=len(data), url="/api/images/%d/content" % image_id)
    image = await context.storage.get_image(image_id)
    assert image["sha256"] == sha256 and image["request_id"] == upload.request_id


# -- uploads that can never be stored ------------------------------------------------

@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("kind", ["text", "truncated png"])
async def test_body_that_is_not_an_image_fails_once_and_is_acked(context, caplog,
                                                                  monkeypatch, kind):
    calls = count_process_calls(monkeypatch)
    retried = []  # on_failure is the only way back into the queues (retry or dead letter)
    real_on_failure = Processor.on_failure

    async def on_failure(self, message, exc):
        retried.append(message.message_id)
        await real_on_failure(self, message, exc)
    monkeypatch.setattr(Processor, "on_failure", on_failure)
    png = make_image("PNG", size=(200, 150))
    data = b"hello, this is plain text\n" if kind == "text" else png[:len(png) // 2]
    upload = make_upload(data)
    await publish_upload(context, upload)

    status = await finished(context, upload.request_id)
    assert status["status"] == "failed", status
    assert status["error"] and status["image_id"] is None
    [event] = await eventually(lambda: notifications(caplog, "image.failed", upload.request_id))
    assert CONTRACT_FIELDS <= set(event)
    assert event["error"] == status["error"]
    assert (event["image_id"], event["url"], event["nickname"]) == (None, None, upload.nickname)

    topology = context.broker.topology
    await settled(context, topology.upload_queue, topology.notifications_queue)
    # Acked, and never handed to on_failure: nothing went to a retry queue, so nothing comes back.
    assert retried == []
    assert [d for _, d in calls if d == data] == [data]
    assert len(notifications(caplog, "image.failed", upload.request_id)) == 1
    assert (await context.storage.get_upload(upload.request_id))["status"] == "failed"


@pytest.mark.gen_test(timeout=30)
async def test_upload_without_nickname_fails_saying_so(context, caplog):
    upload = make_upload()
    args = upload.publish_args()
    del args["headers"]["nickname"]
    await publish_upload(context, upload, headers=args["headers"])

    status = await finished(context, upload.request_id)
    assert status["status"] == "failed"
    assert "nickname" in status["error"]
    [event] = await eventually(lambda: notifications(caplog, "image.failed", upload.request_id))
    assert "nickname" in event["error"]
    await settled(context, context.broker.topology.upload_queue)


# -- at-least-once delivery, exactly-once effect ---------------------------------------

@pytest.mark.gen_test(timeout=40)
async def test_same_upload_twice_is_stored_and_announced_once(context, caplog):
    upload = make_upload()
    published = []
    broker = context.broker
    real_publish = broker.publish

    async def recording_publish(exchange, routing_key, body, **kwargs):
        published.append((exchange, routing_key, kwargs.get("message_id")))
        return await real_publish(exchange, routing_key, body, **kwargs)
    broker.publish = recording_publish
    try:
        await publish_upload(context, upload)
        await publish_upload(context, upload)
        status = await finished(context, upload.request_id)
        assert status["status"] == "stored"
        topology = broker.topology
        # Both copies processed, both events handled.
        await eventually(lambda: len([p for p in published
                                      if p[:2] == (topology.events_exchange,
                                                   "image.uploaded")]) == 2)
        await settled(context, topology.upload_queue, topology.notifications_queue)
    finally:
        del broker.publish

    events = [p for p in published if p[0] == topology.events_exchange]
    uploaded = (topology.events_exchange, "image.uploaded", "image.uploaded:" + upload.request_id)
    processing = (topology.events_exchange, "image.processing",
                  "image.processing:" + upload.request_id)
    # Each copy that found the upload unfinished announced it began: one or two
    # image.processing (one id, so listeners drop the repeat), then one image.uploaded each.
    assert [e for e in events if e != processing] == [uploaded] * 2
    assert 1 <= events.count(processing) <= 2
    assert events[0] == processing
    assert await images_with_request(context, upload.request_id) == 1
    again = await context.storage.get_upload(upload.request_id)
    assert (again["status"], again["image_id"]) == ("stored", status["image_id"])
    assert len(notifications(caplog, "image.uploaded", upload.request_id)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_same_notification_delivered_twice_at_once_runs_its_action_once(context, caplog):
    """Two copies of one event in flight together: one log line, not two."""
    broker = context.broker
    request_id = uuid.uuid4().hex
    body = json.dumps({"event": "image.uploaded", "image_id": 7, "request_id": request_id,
                       "nickname": "twice", "mime_type": "image/png", "width": 1, "height": 1,
                       "size": 10, "url": "/api/images/7/content"}).encode()
    await asyncio.gather(*[
        broker.publish(broker.topology.events_exchange, "image.uploaded", body,
                       message_id="image.uploaded:" + request_id,
                       content_type="application/json", mandatory=True)
        for _ in range(2)])
    await eventually(lambda: notifications(caplog, "image.uploaded", request_id))
    await settled(context, broker.topology.notifications_queue)
    assert len(notifications(caplog, "image.uploaded", request_id)) == 1


@pytest.mark.gen_test(timeout=40)
async def test_transient_storage_fault_is_retried_not_lost(context, caplog):
    class FailsOnce:
        """The real storage, except that the first store_image raises StorageError."""

        def __init__(self, inner):
            self.inner = inner
            self.attempts = []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def store_image(self, request_id, image):
            self.attempts.append(time.monotonic())
            if len(self.attempts) == 1:
                raise StorageError("the database went away (injected)")
            return await self.inner.store_image(request_id, image)

    storage = context.storage = FailsOnce(context.storage)
    try:
        upload = make_upload()
        await publish_upload(context, upload)
        status = await finished(context, upload.request_id)
        assert status["status"] == "stored"
        assert len(storage.attempts) == 2
        # Came back through the first retry queue, not straight away.
        assert storage.attempts[1] - storage.attempts[0] >= conftest.TEST_RETRY_DELAYS[0] - 0.02
        await eventually(lambda: notifications(caplog, "image.uploaded", upload.request_id))
        topology = context.broker.topology
        await settled(context, topology.upload_queue, topology.notifications_queue)
        assert len(storage.attempts) == 2
        assert await images_with_request(context, upload.request_id) == 1
        assert len(notifications(caplog, "image.uploaded", upload.request_id)) == 1
    finally:
        context.storage = storage.inner


# -- a foreign AMQP client, by the README contract -------------------------------------

@pytest.mark.gen_test(timeout=40)
async def test_foreign_amqp_client_feeds_the_processor_and_hears_the_event(context):
    if context.config.broker_type != "rabbitmq":
        pytest.skip("a foreign AMQP client needs RabbitMQ")
    prefix = context.config.amqp_prefix
    data = make_image("JPEG", size=(20, 10))
    request_id = str(uuid.uuid4())
    run = asyncio.get_running_loop().run_in_executor
    conn = conftest.amqp_connection()
    try:
        channel = conn.channel()

        def listen_and_publish():
            listener = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(listener, prefix + "photo-app", routing_key="image.uploaded")
            channel.confirm_delivery()
            channel.basic_publish(
                prefix + "image-processing", "image-processing-queue", data,
                pika.BasicProperties(message_id=request_id, content_type="image/jpeg",
                                     delivery_mode=2,
                                     headers={"nickname": "foreign", "filename": "p.jpg",
                                              "size": len(data)}),
                mandatory=True)
            return listener
        listener = await run(None, listen_and_publish)

        status = await finished(context, request_id)
        assert status["status"] == "stored", status
        content = await context.storage.get_image_content(status["image_id"])
        assert content[:2] == (data, "image/jpeg")

        def get_event():
            method, properties, body = channel.basic_get(listener, auto_ack=True)
            return (properties, body) if method else None

        async def event_arrived():
            return await run(None, get_event)
        properties, body = await eventually(event_arrived)
        event = json.loads(body)
        assert CONTRACT_FIELDS <= set(event)
        assert event["event"] == "image.uploaded"
        assert (event["request_id"], event["image_id"], event["nickname"]) == (
            request_id, status["image_id"], "foreign")
        assert (event["mime_type"], event["width"], event["height"], event["size"]) == (
            "image/jpeg", 20, 10, len(data))
        assert properties.message_id == "image.uploaded:" + request_id
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2
    finally:
        await run(None, conn.close)


# -- how the processor runs ------------------------------------------------------------

@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=30)
async def test_image_work_runs_in_the_image_executor(context, monkeypatch):
    calls = count_process_calls(monkeypatch)
    upload = make_upload()
    await publish_upload(context, upload)
    assert (await finished(context, upload.request_id))["status"] == "stored"
    [thread] = [t for t, d in calls if d == upload.data]
    assert thread is not threading.main_thread()
    assert thread.name.startswith("image")
    assert thread is not threading.current_thread()


def gated_process(monkeypatch):
    """Image processing held until the test sets the returned gate; ``entered`` is set
    once a call is waiting at it.  (The thread, not the loop, waits.)"""
    gate, entered = threading.Event(), threading.Event()
    real = processor_module.process

    def process(*args, **kwargs):
        entered.set()
        gate.wait(30)
        return real(*args, **kwargs)
    monkeypatch.setattr(processor_module, "process", process)
    return gate, entered


NO_CONSUMERS = {"roles": ("web",)}  # the test starts its own processor


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [NO_CONSUMERS])
async def test_stop_waits_for_the_message_in_flight(context, monkeypatch):
    gate, entered = gated_process(monkeypatch)
    processor = Processor(context)
    processor.start()
    upload = make_upload()
    await publish_upload(context, upload)
    await eventually(entered.is_set)

    stopping = asyncio.ensure_future(processor.stop(20))
    await asyncio.sleep(0.2)  # stop() has had every chance to return, and must not have
    assert not stopping.done(), "stop() returned while a message was still in flight"
    gate.set()
    await stopping
    status = await context.storage.get_upload(upload.request_id)
    assert status["status"] == "stored"  # finished before stop() returned
    await settled(context, context.broker.topology.upload_queue)  # and acked


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [NO_CONSUMERS])
async def test_stop_requeues_what_does_not_finish_in_time(context, monkeypatch):
    gate, entered = gated_process(monkeypatch)
    processor = Processor(context)
    processor.start()
    upload = make_upload()
    await publish_upload(context, upload)
    await eventually(entered.is_set)

    await processor.stop(0.1)  # returns although the gate is still closed
    assert not gate.is_set()
    assert (await context.storage.get_upload(upload.request_id))["status"] == "processing"

    # The message went back to the queue: the next processor stores it.
    gate.set()
    await stored_by_a_new_processor(context, upload)


async def stored_by_a_new_processor(context, upload):
    """Start a processor; ``upload`` (back in its queue) ends stored, once, and acked."""
    processor = Processor(context)
    processor.start()
    try:
        assert (await finished(context, upload.request_id))["status"] == "stored"
    finally:
        await processor.stop(5)
    await settled(context, context.broker.topology.upload_queue)
    assert await images_with_request(context, upload.request_id) == 1
