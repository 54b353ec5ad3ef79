"""Every final status is final: a redelivered upload that already ended ``failed``
(dead-lettered or not) is never processed again; it only publishes its own final
event once more (same message id, so the notifier drops the repeat)."""

import pytest

from tests.helpers import eventually
from tests.test_consumers import (count_process_calls, finished, images_with_request,
                                  make_upload, notifications, publish_upload, settled)


@pytest.fixture(autouse=True)
def notifications_logged(caplog):
    caplog.set_level("INFO", logger="photo_app.notifications")


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=40)
async def test_a_redelivered_dead_lettered_upload_is_not_stored(context, caplog, monkeypatch):
    calls = count_process_calls(monkeypatch)
    upload = make_upload()  # a valid image: processing it again would store it
    # Dead-lettered after 2 attempts (MAX_ATTEMPTS was 2 then; it is 3 now), and then
    # delivered once more (the processor's ack of it was lost, say).
    await context.storage.record_dead_letter(
        upload.request_id, upload.nickname, upload.filename, upload.mime_type, upload.data, 2,
        "gave up after 2 attempts: StorageError: the database went away")
    await publish_upload(context, upload)

    [event] = await eventually(lambda: notifications(caplog, "image.failed", upload.request_id))
    assert event["error"].startswith("gave up after 2 attempts")
    topology = context.broker.topology
    await settled(context, topology.upload_queue, topology.notifications_queue)
    status = await context.storage.get_upload(upload.request_id)
    assert (status["status"], status["dead_lettered"], status["image_id"]) == ("failed", True,
                                                                               None)
    assert await images_with_request(context, upload.request_id) == 0
    assert [d for _, d in calls if d == upload.data] == []
    assert notifications(caplog, "image.uploaded", upload.request_id) == []


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=40)
async def test_a_redelivered_failed_upload_only_announces_its_failure_again(context, caplog,
                                                                            monkeypatch):
    calls = count_process_calls(monkeypatch)
    broker = context.broker
    published = []
    real_publish = broker.publish

    async def recording_publish(exchange, routing_key, body, **kwargs):
        published.append((routing_key, kwargs.get("message_id")))
        return await real_publish(exchange, routing_key, body, **kwargs)
    broker.publish = recording_publish
    try:
        upload = make_upload(b"plain text, not an image")
        await publish_upload(context, upload)
        first = await finished(context, upload.request_id)
        assert first["status"] == "failed"
        await publish_upload(context, upload)  # delivered once more
        await eventually(lambda: published.count(
            ("image.failed", "image.failed:" + upload.request_id)) == 2)
        topology = broker.topology
        await settled(context, topology.upload_queue, topology.notifications_queue)
    finally:
        del broker.publish
    assert [d for _, d in calls if d == upload.data] == [upload.data]  # processed once
    again = await context.storage.get_upload(upload.request_id)
    assert (again["status"], again["error"]) == ("failed", first["error"])
    assert len(notifications(caplog, "image.failed", upload.request_id)) == 1
