"""Passing faults are retried through the retry queues, permanent ones are not,
and what runs out of attempts is dead-lettered, listed and re-queued: on every
stack (both databases, both brokers)."""

import json
import uuid

import pytest

from broker import Topology
from tests import conftest
from tests.helpers import FaultyStorage, make_image, post_upload, wait_for_upload

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


@pytest.fixture
def config_overrides():
    return {"api_token": TOKEN}


async def upload(http_client, base_url, data=None, nickname="retry"):
    response = await post_upload(http_client, base_url, nickname, data or make_image())
    assert response.code == 202, response.body
    return json.loads(response.body)["request_id"]


@pytest.mark.gen_test(timeout=40)
async def test_a_passing_fault_is_retried_with_growing_delays(http_client, base_url, context):
    storage = context.storage = FaultyStorage(context.storage, "store_image", failing={1, 2})
    try:
        request_id = await upload(http_client, base_url)
        status = await wait_for_upload(http_client, base_url, request_id)
    finally:
        context.storage = storage.inner
    assert status["status"] == "stored"
    assert status["attempts"] == 3 and status["dead_lettered"] is False
    first, second, third = storage.calls
    delays = conftest.TEST_RETRY_DELAYS
    assert second - first >= delays[0] - 0.02   # never a tight loop
    assert third - second >= delays[1] - 0.02   # and the wait grows


@pytest.mark.gen_test(timeout=40)
async def test_an_invalid_image_fails_at_once_without_retries(http_client, base_url, context):
    broken = make_image("JPEG")[:300]  # starts like a JPEG, stops short
    request_id = await upload(http_client, base_url, broken)
    status = await wait_for_upload(http_client, base_url, request_id)
    assert status["status"] == "failed" and "truncated" in status["error"]
    assert status["attempts"] == 1 and status["dead_lettered"] is False
    listed = await http_client.fetch(base_url + "/api/failed", headers=AUTH)
    assert json.loads(listed.body)["failed"] == []


@pytest.mark.gen_test(timeout=60)
async def test_out_of_attempts_is_dead_lettered_listed_and_requeued(http_client, base_url,
                                                                    context):
    data = make_image(color=(9, 8, 7))
    storage = context.storage = FaultyStorage(context.storage, "store_image")
    try:
        request_id = await upload(http_client, base_url, data, nickname="unlucky")
        status = await wait_for_upload(http_client, base_url, request_id)
        assert status["status"] == "failed" and status["dead_lettered"] is True
        assert status["error"].startswith("it could not be processed after 3 attempts")  # plain words
        assert len(storage.calls) == 3
    finally:
        context.storage = storage.inner

    listed = json.loads((await http_client.fetch(base_url + "/api/failed", headers=AUTH)).body)
    [letter] = listed["failed"]
    assert (letter["request_id"], letter["nickname"], letter["attempts"], letter["size"]) == (
        request_id, "unlucky", 3, len(data))
    assert letter["content_type"] == "image/png" and letter["filename"] == "photo.png"
    assert "StorageError" in letter["error"]
    topology = context.broker.topology
    if context.config.broker_type == "memory":
        assert context.broker.depth(topology.dead_queue) == 0  # recorded and acked

    # The cause is fixed (the fault is gone): one call sends it back.
    response = await http_client.fetch(base_url + letter["requeue_url"], method="POST",
                                       body=b"", headers=AUTH)
    assert response.code == 202
    assert json.loads(response.body)["status_url"] == "/api/uploads/" + request_id
    status = await wait_for_upload(http_client, base_url, request_id)
    assert status["status"] == "stored" and status["dead_lettered"] is False
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, status["image_id"]))
    assert content.body == data
    listed = json.loads((await http_client.fetch(base_url + "/api/failed", headers=AUTH)).body)
    assert listed["failed"] == []


@pytest.mark.gen_test(timeout=40)
async def test_a_dead_letter_waits_while_the_database_is_down(http_client, base_url, context):
    """The recorder cannot write either: the dead letter stays queued until it can."""
    storage = context.storage = FaultyStorage(context.storage, "store_image")
    recorder_storage = FaultyStorage(storage, "record_dead_letter", failing={1})
    context.storage = recorder_storage
    try:
        request_id = await upload(http_client, base_url)
        status = await wait_for_upload(http_client, base_url, request_id)
    finally:
        context.storage = storage.inner
    assert status["dead_lettered"] is True
    assert len(recorder_storage.calls) == 2


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=40)
async def test_an_upload_redelivered_too_often_is_dead_lettered_untried(http_client, base_url,
                                                                       context, monkeypatch):
    """A message that keeps crashing its processor is not tried for ever."""
    import consumers.processor as processor_module
    tried = []
    monkeypatch.setattr(processor_module, "process", lambda *args: tried.append(args))
    request_id = "crashy-" + uuid.uuid4().hex
    for _ in range(context.config.max_attempts):  # earlier deliveries that never finished
        await context.storage.mark_processing(request_id, "crashy")
    broker = context.broker
    await broker.publish(broker.topology.upload_exchange, "image-processing-queue",
                         make_image(), message_id=request_id, content_type="image/png",
                         headers={"nickname": "crashy", "filename": "x.png", "size": 1})
    status = await wait_for_upload(http_client, base_url, request_id)
    assert status["dead_lettered"] is True and "after 3 attempts" in status["error"]
    listed = json.loads((await http_client.fetch(base_url + "/api/failed", headers=AUTH)).body)
    assert "did the processor crash" in listed["failed"][0]["error"]  # for the operator
    assert tried == []


@pytest.mark.gen_test(timeout=30)
async def test_operator_routes_need_the_token(http_client, base_url, context):
    # No credentials, or not a bearer token: 401.  A wrong token: 403.
    for headers, code in [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                          ({"Authorization": TOKEN}, 401), ({"Authorization": "Bearer "}, 401),
                          (AUTH, 200)]:
        response = await http_client.fetch(base_url + "/api/failed", headers=headers,
                                           raise_error=False)
        assert response.code == code, headers
        if code == 401:  # RFC 9110 11.6.1: a 401 names the scheme to use
            assert response.headers["WWW-Authenticate"] == "Bearer", headers
    response = await http_client.fetch(base_url + "/api/failed/nope/requeue", method="POST",
                                       body=b"", headers=AUTH, raise_error=False)
    assert response.code == 404
    context.config.api_token = ""
    response = await http_client.fetch(base_url + "/api/failed", headers=AUTH, raise_error=False)
    assert response.code == 403
    assert "API_TOKEN" in json.loads(response.body)["detail"]


def test_retry_queues_send_back_to_the_work_queue():
    topology = Topology("p.", (2, 10))
    retry = [spec for spec in topology.queues
             if spec.ttl is not None and spec.exchange == topology.retry_exchange]
    assert [(spec.name, spec.ttl) for spec in retry] == [
        ("p.image-processing-queue.retry.2s", 2), ("p.image-processing-queue.retry.10s", 10)]
    assert all(spec.dead_letter == ("p.image-processing", "image-processing-queue")
               for spec in retry)
    assert retry[0].amqp_arguments == {
        "x-message-ttl": 2000, "x-dead-letter-exchange": "p.image-processing",
        "x-dead-letter-routing-key": "image-processing-queue"}
