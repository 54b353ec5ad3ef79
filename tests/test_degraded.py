"""Uploads are refused (503 + Retry-After), never half-accepted, when the
broker cannot take them; reads keep working without the broker or the cache."""

import json
import logging
import sqlite3

import pytest

from storage import NewImage
from tests.conftest import amqp_connection, free_port, make_config
from context import close_context
from handlers import make_app
from tests.helpers import make_image, post_upload, wait_for_upload


def upload_statuses(config):
    path = config.database_url[len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM uploads")]


@pytest.fixture
def stack():
    return "mixed"  # SQLite (rows counted directly), RabbitMQ, no cache


@pytest.fixture
def app(request):
    """The app on the context fixture the test names with ``uses(...)``."""
    return make_app(request.getfixturevalue(request.param))


def uses(context_fixture):
    return pytest.mark.parametrize("app", [context_fixture], indirect=True)


@pytest.fixture
def down_context(io_loop, request, tmp_path):
    """A web process whose RabbitMQ never answers (a closed port)."""
    config = make_config(request, tmp_path, "sqlite", "memory", "memory",
                         amqp_url="amqp://guest:guest@127.0.0.1:%d/%%2F" % free_port())
    from context import open_context
    context = io_loop.run_sync(lambda: open_context(config))
    yield context
    io_loop.run_sync(lambda: close_context(context))


@uses("down_context")
@pytest.mark.gen_test(timeout=30)
async def test_no_broker_means_503_with_retry_after_and_no_row(app, http_client, base_url,
                                                               down_context):
    response = await post_upload(http_client, base_url, "alice", make_image())
    assert response.code == 503
    assert response.headers["Retry-After"] == "5"
    body = json.loads(response.body)
    assert body["error"] == "upload not accepted, try again"
    assert "not connected" in body["detail"]
    assert upload_statuses(down_context.config) == []  # refused before anything was written

    ready = await http_client.fetch(base_url + "/readyz", raise_error=False)
    assert ready.code == 503
    assert ready.headers["Retry-After"] == "5"
    ready = json.loads(ready.body)
    assert ready["status"] == "unavailable: broker"
    assert ready["checks"]["broker"].startswith("down")
    assert ready["checks"]["database"] == "ok"


@uses("down_context")
@pytest.mark.gen_test(timeout=30)
async def test_reads_keep_working_without_the_broker(app, http_client, base_url, down_context):
    data = make_image("JPEG")
    image = await down_context.storage.store_image("r-1", NewImage(
        "alice", "image/jpeg", data, 64, 48, "0" * 64))
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, image["id"]))
    assert content.body == data
    meta = await http_client.fetch("%s/api/images/%d" % (base_url, image["id"]))
    assert json.loads(meta.body)["nickname"] == "alice"
    assert (await http_client.fetch(base_url + "/healthz")).code == 200




@uses("context")
@pytest.mark.gen_test(timeout=30)
async def test_an_unroutable_upload_is_returned_and_refused(app, http_client, base_url, context):
    """With the upload queue unbound, RabbitMQ returns the mandatory publish: 503, no row."""
    topology = context.broker.topology
    conn = amqp_connection()
    conn.channel().queue_unbind(topology.upload_queue, topology.upload_exchange,
                                routing_key="image-processing-queue")
    conn.close()
    response = await post_upload(http_client, base_url, "alice", make_image())
    assert response.code == 503, response.body
    assert "did not take the upload" in json.loads(response.body)["detail"]  # plain words
    assert upload_statuses(context.config) == ["refused"]  # dropped should it ever arrive


@uses("context")
@pytest.mark.parametrize("config_overrides", [{"cache_url": "redis://127.0.0.1:%d/0"
                                               % free_port()}])  # nothing listens there
@pytest.mark.gen_test(timeout=30)
async def test_redis_down_reads_come_from_the_database(app, http_client, base_url, context,
                                                       caplog):
    caplog.set_level(logging.WARNING, logger="cache.redis")
    data = make_image("GIF")
    response = await post_upload(http_client, base_url, "alice", data)
    assert response.code == 202
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    for _ in range(2):
        content = await http_client.fetch("%s/api/images/%d/content"
                                          % (base_url, status["image_id"]))
        assert content.code == 200 and content.body == data
    assert any("reading from the database" in r.getMessage() for r in caplog.records)
    ready = await http_client.fetch(base_url + "/readyz")
    checks = json.loads(ready.body)["checks"]
    assert ready.code == 200 and checks["cache"].startswith("down")
