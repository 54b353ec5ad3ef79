"""Holes in accepting uploads, each pinned by a test that held the hole open:

- a requeue that loses the dead letter's bytes when its publish fails;
- an upload answered 503 whose refusal the database could not record, then
  stored anyway when its message arrived late;
- driver error text in the answers to anonymous clients.

Faults are injected (a broker whose upload publishes fail, a storage method
that raises), and what must be in flight is held there by the test: a storage
call that waits on an Event, a message kept back and delivered when the test
says so.
"""

import asyncio
import json
import logging
import uuid

import pytest

from broker import BrokerUnavailable
from storage import StorageError
from tests.helpers import (FaultyStorage, GatedStorage, eventually, make_image, post_upload,
                           wait_for_upload)

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
# What a driver says when the database host is gone: none of it may reach a client.
DRIVER_TEXT = ('OperationalError: could not connect to server: Connection refused\n'
               '\tIs the server running on host "db.internal" (10.1.2.3) and accepting\n'
               '\tTCP/IP connections on port 5432?')
DRIVER_WORDS = ("OperationalError", "10.1.2.3", "db.internal", "5432")


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


@pytest.fixture
def config_overrides():
    return {"api_token": TOKEN}


def no_driver_text(text):
    return not any(word in text for word in DRIVER_WORDS)


class UploadPublishes:
    """The broker, except that upload publishes raise ``error`` instead; each
    message is kept in ``held`` so the test can deliver it later (a confirm that
    timed out although the broker took the message)."""

    def __init__(self, broker, monkeypatch, error):
        self.broker, self.real, self.error, self.held = broker, broker.publish, error, []
        monkeypatch.setattr(broker, "publish", self.publish)

    async def publish(self, exchange, routing_key, body, **kwargs):
        if exchange != self.broker.topology.upload_exchange:
            return await self.real(exchange, routing_key, body, **kwargs)
        self.held.append((exchange, routing_key, body, kwargs))
        raise self.error

    async def deliver(self):
        for exchange, routing_key, body, kwargs in self.held:
            await self.real(exchange, routing_key, body, **kwargs)


class DownAfter:
    """The real storage until ``down`` is set; then every call raises StorageError."""

    def __init__(self, inner):
        self.inner, self.down = inner, False

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def call(*args, **kwargs):
            if self.down:
                raise StorageError(DRIVER_TEXT)
            return await attribute(*args, **kwargs)
        return call


async def dead_letter(storage, data, nickname="unlucky"):
    request_id = uuid.uuid4().hex
    await storage.record_dead_letter(request_id, nickname, "photo.png", "image/png", data, 3,
                                     "gave up after 3 attempts: StorageError: " + DRIVER_TEXT)
    return request_id


async def requeue(http_client, base_url, request_id):
    return await http_client.fetch("%s/api/failed/%s/requeue" % (base_url, request_id),
                                   method="POST", body=b"", headers=AUTH, raise_error=False)


async def held_requeue(http_client, base_url, request_id, storage):
    """Start a requeue; return its answer's future once the route, its message
    published and confirmed, waits at removing the dead letter (``storage`` Gated)."""
    answer = asyncio.ensure_future(requeue(http_client, base_url, request_id))
    await eventually(lambda: storage.waiting == 1)
    return answer


# -- requeue: the dead letter is the only copy until the broker confirmed ---------

@pytest.mark.gen_test(timeout=30)
async def test_a_requeue_that_crashes_before_its_publish_keeps_the_bytes(
        http_client, base_url, context, monkeypatch):
    data = make_image(color=(1, 2, 3))
    request_id = await dead_letter(context.storage, data)
    UploadPublishes(context.broker, monkeypatch, RuntimeError("the process died here"))
    response = await requeue(http_client, base_url, request_id)
    assert response.code == 500
    letter = await context.storage.get_dead_letter(request_id)
    assert letter is not None and letter["data"] == data


@pytest.mark.gen_test(timeout=30)
async def test_a_requeue_refused_while_the_database_fails_keeps_the_bytes(
        http_client, base_url, context, monkeypatch):
    data = make_image(color=(4, 5, 6))
    request_id = await dead_letter(context.storage, data)
    storage = context.storage = DownAfter(context.storage)
    publishes = UploadPublishes(context.broker, monkeypatch, BrokerUnavailable("nack"))
    real_publish = publishes.publish

    async def publish_then_database_down(*args, **kwargs):
        try:
            return await real_publish(*args, **kwargs)
        finally:
            storage.down = True
    monkeypatch.setattr(context.broker, "publish", publish_then_database_down)
    try:
        response = await requeue(http_client, base_url, request_id)
    finally:
        context.storage = storage.inner
    assert response.code in (503, 504)
    letter = await context.storage.get_dead_letter(request_id)
    assert letter is not None and letter["data"] == data
    # With the database back, the upload is as it was before the requeue.
    status = await eventually(lambda: dead_lettered(http_client, base_url, request_id))
    assert status["status"] == "failed" and status["attempts"] == 3


async def dead_lettered(http_client, base_url, request_id):
    response = await http_client.fetch("%s/api/uploads/%s" % (base_url, request_id))
    status = json.loads(response.body)
    return status if status["dead_lettered"] else None


@pytest.mark.gen_test(timeout=30)
async def test_a_requeued_upload_taken_at_once_is_stored_and_its_letter_removed(
        http_client, base_url, context):
    data = make_image(color=(7, 8, 9))
    request_id = await dead_letter(context.storage, data)
    # Hold the removal of the dead letter: the processor takes the message the
    # moment it is published, and stores it, before the route goes on.
    storage = context.storage = GatedStorage(context.storage, "forget_dead_letter")
    try:
        answer = await held_requeue(http_client, base_url, request_id, storage)
        status = await wait_for_upload(http_client, base_url, request_id)
        assert status["status"] == "stored" and status["dead_lettered"] is False
        assert not answer.done()
        storage.gate.set()
        response = await answer
    finally:
        context.storage = storage.inner
    assert response.code == 202
    assert await context.storage.get_dead_letter(request_id) is None


@pytest.mark.gen_test(timeout=40)
async def test_a_requeued_upload_dead_lettered_again_at_once_keeps_its_letter(
        http_client, base_url, context):
    data = make_image(color=(10, 11, 12))
    request_id = await dead_letter(context.storage, data)
    # Storing fails every time, so the upload runs out of attempts again and is
    # recorded again, all while the route still holds its removal of the letter.
    failing = FaultyStorage(context.storage, "store_image")
    storage = context.storage = GatedStorage(failing, "forget_dead_letter")
    try:
        answer = await held_requeue(http_client, base_url, request_id, storage)
        await eventually(lambda: len(failing.calls) == context.config.max_attempts, timeout=20)
        status = await eventually(lambda: dead_lettered(http_client, base_url, request_id))
        assert status["status"] == "failed" and status["attempts"] == 3
        storage.gate.set()
        response = await answer
    finally:
        context.storage = failing.inner
    assert response.code == 202
    letter = await context.storage.get_dead_letter(request_id)
    assert letter is not None and letter["data"] == data
    listed = json.loads((await http_client.fetch(base_url + "/api/failed", headers=AUTH)).body)
    assert [entry["request_id"] for entry in listed["failed"]] == [request_id]


@pytest.mark.gen_test(timeout=30)
async def test_a_requeue_whose_letter_cannot_be_removed_is_still_accepted(
        http_client, base_url, context):
    data = make_image(color=(13, 14, 15))
    request_id = await dead_letter(context.storage, data)
    storage = context.storage = FaultyStorage(context.storage, "forget_dead_letter")
    try:
        response = await requeue(http_client, base_url, request_id)
        assert response.code == 202  # it is in the broker: the letter is a spare copy
        status = await wait_for_upload(http_client, base_url, request_id)
    finally:
        context.storage = storage.inner
    assert status["status"] == "stored"


# -- an upload is either in the broker (202) or refused (503), never both ----------

@pytest.mark.gen_test(timeout=30)
async def test_a_refusal_the_database_cannot_record_is_not_a_503_that_gets_stored(
        http_client, base_url, context, monkeypatch):
    publishes = UploadPublishes(context.broker, monkeypatch,
                                BrokerUnavailable("no confirm from rabbitmq within 10.0 s"))
    # The refusal fails once (the database blinked); the web keeps trying it.
    storage = context.storage = FaultyStorage(context.storage, "refuse_upload", failing={1})
    try:
        response = await post_upload(http_client, base_url, "late", make_image(color=(3, 3, 3)))
        assert response.code == 504, response.body
        body = json.loads(response.body)
        request_id = body["request_id"]
        assert body["status_url"] == "/api/uploads/" + request_id
        assert "Retry-After" not in response.headers
        await eventually(lambda: len(storage.calls) == 2)
    finally:
        context.storage = storage.inner

    async def status():
        return json.loads((await http_client.fetch(base_url + body["status_url"])).body)
    assert (await status())["status"] == "refused"
    await publishes.deliver()  # the message the broker had after all
    await eventually(lambda: status_with_attempts(http_client, base_url, request_id))
    final = await status()
    assert final["status"] == "refused" and final["image_id"] is None


async def status_with_attempts(http_client, base_url, request_id):
    response = await http_client.fetch("%s/api/uploads/%s" % (base_url, request_id))
    return json.loads(response.body)["attempts"] >= 1  # the processor saw it, and dropped it


@pytest.mark.gen_test(timeout=30)
async def test_a_refusal_that_finds_the_processor_has_it_is_a_202(
        http_client, base_url, context, monkeypatch):
    publishes = UploadPublishes(context.broker, monkeypatch, BrokerUnavailable("timeout"))
    storage = context.storage = GatedStorage(context.storage, "refuse_upload")
    try:
        answer = asyncio.ensure_future(post_upload(http_client, base_url, "late", make_image()))
        await eventually(lambda: storage.waiting == 1)
        await publishes.deliver()  # the processor takes it before the refusal is written
        [(_, _, _, kwargs)] = publishes.held
        request_id = kwargs["message_id"]
        status = await wait_for_upload(http_client, base_url, request_id)
        storage.gate.set()
        response = await answer
    finally:
        context.storage = storage.inner
    assert response.code == 202 and status["status"] == "stored"


# -- no driver text for anonymous clients; the log has it, under the request id ----

def logged(caplog, request_id):
    return "\n".join(record.getMessage() for record in caplog.records
                     if request_id in record.getMessage())


@pytest.mark.gen_test(timeout=30)
async def test_a_database_fault_is_answered_in_plain_words_and_logged_in_full(
        http_client, base_url, context, caplog):
    caplog.set_level(logging.INFO)
    storage = context.storage = FaultyStorage(context.storage, "list_images", error=DRIVER_TEXT)
    try:
        response = await http_client.fetch(base_url + "/api/images", raise_error=False)
        page = await http_client.fetch(base_url + "/gallery", raise_error=False)
    finally:
        context.storage = storage.inner
    assert response.code == 503 and response.headers["Retry-After"]
    body = json.loads(response.body)
    assert body["error"] == "database unavailable" and body["detail"], body
    assert no_driver_text(response.body.decode())
    assert page.code == 503 and no_driver_text(page.body.decode())
    for answer in (response, page):
        request_id = answer.headers["X-Request-Id"]
        assert "10.1.2.3" in logged(caplog, request_id)


@pytest.mark.gen_test(timeout=30)
async def test_readyz_names_what_is_down_without_its_error_text(
        http_client, base_url, context, caplog):
    caplog.set_level(logging.INFO)
    storage = context.storage = FaultyStorage(context.storage, "ping", error=DRIVER_TEXT)
    try:
        response = await http_client.fetch(base_url + "/readyz", raise_error=False)
    finally:
        context.storage = storage.inner
    assert response.code == 503
    body = json.loads(response.body)
    assert body["checks"]["database"].startswith("down") and "database" in body["status"]
    assert no_driver_text(response.body.decode())
    assert "10.1.2.3" in logged(caplog, response.headers["X-Request-Id"])


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_refused_by_the_broker_says_so_in_plain_words(
        http_client, base_url, context, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    pika_text = "cannot connect: AMQPConnectionError(ConnectionRefusedError(111, 'rabbit.internal'))"
    UploadPublishes(context.broker, monkeypatch, BrokerUnavailable(pika_text))
    response = await post_upload(http_client, base_url, "alice", make_image())
    assert response.code == 503
    assert "rabbit.internal" not in response.body.decode()
    request_id = response.headers["X-Request-Id"]
    assert "rabbit.internal" in logged(caplog, request_id)
    status = json.loads((await http_client.fetch(base_url + "/api/uploads/" + request_id)).body)
    assert status["status"] == "refused" and "rabbit.internal" not in status["error"]


@pytest.mark.gen_test(timeout=30)
async def test_a_dead_lettered_upload_shows_its_uploader_plain_words(
        http_client, base_url, context):
    request_id = await dead_letter(context.storage, make_image())
    status = json.loads((await http_client.fetch(base_url + "/api/uploads/" + request_id)).body)
    assert status["status"] == "failed" and status["dead_lettered"] is True
    assert status["error"] and no_driver_text(status["error"]), status
    page = await http_client.fetch(base_url + "/uploads/" + request_id)
    assert no_driver_text(page.body.decode())
    # The operator, who holds the token, sees the reason in full.
    listed = json.loads((await http_client.fetch(base_url + "/api/failed", headers=AUTH)).body)
    assert "10.1.2.3" in listed["failed"][0]["error"]
