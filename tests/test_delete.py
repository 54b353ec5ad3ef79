"""DELETE /api/images/{id}: operator credentials, gone from every read and every
cache, statuses that say so, a second delete a 404, no resurrection by a redelivered
upload, and every web node forgetting it as soon as the image.deleted event reaches it."""

import asyncio
import json
import threading
import uuid

import pytest
import redis
import tornado.websocket

import consumers.processor as processor_module
from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable
from uploads import Upload
from cache import content_key, thumbnail_key
from tests.conftest import AMQP_URL, REDIS_URL, free_port
from tests.helpers import make_image, post_upload, wait_for_upload
from tests.processes import (RABBIT_READY, WEB_READY, fetch, process_env, upload, wait_stored,
                             wait_until)
from tests.test_consumers import settled

TOKEN = "operator-token-for-deletes"
AUTH = {"Authorization": "Bearer " + TOKEN}


@pytest.fixture
def config_overrides():
    return {"api_token": TOKEN}


async def stored_image(http_client, base_url, nickname="deletable", size=(40, 30)):
    response = await post_upload(http_client, base_url, nickname, make_image("PNG", size=size))
    assert response.code == 202, response.body
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status
    return status


async def delete(http_client, base_url, image_id, headers=AUTH):
    return await http_client.fetch("%s/api/images/%s" % (base_url, image_id), method="DELETE",
                                   headers=headers, raise_error=False)


async def get(http_client, url):
    return await http_client.fetch(url, raise_error=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_deleted_image_is_gone_from_every_read_and_every_cache(http_client, base_url,
                                                                      context):
    status = await stored_image(http_client, base_url)
    image_id, request_id = status["image_id"], status["request_id"]
    kept = await stored_image(http_client, base_url, size=(41, 30))  # same nickname, stays
    sizes = context.config.thumbnail_sizes
    reads = ["/api/images/%d/content" % image_id, "/api/images/%d" % image_id,
             "/photos/%d" % image_id] + [
        "/api/images/%d/thumbnail?size=%d" % (image_id, size) for size in sizes]
    for path in reads:
        assert (await get(http_client, base_url + path)).code == 200, path
    cache = context.cache
    keys = [content_key(image_id)] + [thumbnail_key(image_id, size) for size in sizes]
    if context.config.cache_type != "none":
        for key in keys:
            assert await cache.get(key) is not None, key  # the reads filled the cache

    # Credentials first: none 401, wrong 403, and nothing is deleted by either.
    assert (await delete(http_client, base_url, image_id, headers={})).code == 401
    wrong = await delete(http_client, base_url, image_id, {"Authorization": "Bearer nope"})
    assert wrong.code == 403
    assert (await get(http_client, base_url + reads[0])).code == 200

    socket = await tornado.websocket.websocket_connect(
        base_url.replace("http://", "ws://") + "/api/events")
    response = await delete(http_client, base_url, image_id)
    assert response.code == 204 and response.body == b""
    for path in reads:
        assert (await get(http_client, base_url + path)).code == 404, path
    for key in keys:
        assert await cache.get(key) is None, key
    listing = json.loads((await get(http_client, base_url + "/api/images?nickname=deletable")).body)
    assert [image["id"] for image in listing["images"]] == [kept["image_id"]]
    seed = json.loads((await get(http_client, base_url + "/images/deletable")).body)
    assert len(seed) == 1
    gone = json.loads((await get(http_client, base_url + "/api/uploads/" + request_id)).body)
    assert (gone["status"], gone["image_id"]) == ("deleted", None)

    event = {}
    while event.get("event") != "image.deleted":  # the second upload's events may come first
        event = json.loads(await asyncio.wait_for(socket.read_message(), 10))
    assert event == {"event": "image.deleted", "image_id": image_id, "nickname": "deletable",
                     "request_id": request_id}
    socket.close()

    assert (await delete(http_client, base_url, image_id)).code == 404  # twice: 404
    assert (await delete(http_client, base_url, 987654321)).code == 404
    assert (await get(http_client, base_url + "/api/images/%d" % kept["image_id"])).code == 200


@pytest.mark.image_threads
@pytest.mark.gen_test(timeout=60)
async def test_a_redelivered_upload_never_brings_a_deleted_image_back(http_client, base_url,
                                                                     context, monkeypatch):
    broker = context.broker

    async def publish(upload):
        await broker.publish(broker.topology.upload_exchange, UPLOAD_ROUTING_KEY,
                             mandatory=True, **upload.publish_args())

    # 1. The same upload delivered again after the delete.
    status = await stored_image(http_client, base_url, nickname="again")
    image_id = status["image_id"]
    content = await get(http_client, base_url + "/api/images/%d/content" % image_id)
    assert (await delete(http_client, base_url, image_id)).code == 204
    await publish(Upload(status["request_id"], "again", "x.png", "image/png", content.body))

    # 2. A copy already being processed when the delete happens.  Both copies of one
    # upload reach the image work (so both found it unfinished); the first goes on only
    # once the second is there, and the second is held at a gate until the first is
    # stored and deleted.
    both_in, gate = threading.Barrier(2, timeout=30), threading.Event()
    real = processor_module.process
    calls = []

    def process(*args, **kwargs):
        calls.append(1)
        turn = len(calls)
        both_in.wait()
        if turn == 2:
            gate.wait(30)
        return real(*args, **kwargs)
    monkeypatch.setattr(processor_module, "process", process)
    data = make_image("PNG", size=(33, 22), color=(1, 2, 3))
    racing = Upload(uuid.uuid4().hex, "racing", "r.png", "image/png", data)
    await publish(racing)
    await publish(racing)
    first = await wait_for_upload(http_client, base_url, racing.request_id)
    assert first["status"] == "stored"
    assert (await delete(http_client, base_url, first["image_id"])).code == 204
    gate.set()
    await settled(context, broker.topology.upload_queue)  # the held copy is done, and acked
    assert len(calls) == 2
    for request_id, image_id in ((status["request_id"], image_id),
                                 (racing.request_id, first["image_id"])):
        upload = await context.storage.get_upload(request_id)
        assert (upload["status"], upload["image_id"]) == ("deleted", None), upload
    listing = await context.storage.list_images(nickname="racing")
    assert listing == [], listing
    assert await context.storage.list_images(nickname="again") == []


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("stack", ["embedded"])
async def test_a_delete_the_broker_did_not_confirm_is_announced_by_the_next_one(
        http_client, base_url, context, monkeypatch):
    status = await stored_image(http_client, base_url, nickname="unannounced")
    broker = context.broker
    real = broker.publish

    async def refused(*args, **kwargs):
        raise BrokerUnavailable("the broker is down")
    monkeypatch.setattr(broker, "publish", refused)
    response = await delete(http_client, base_url, status["image_id"])
    assert response.code == 503 and response.headers["Retry-After"]
    assert (await get(http_client, base_url + "/api/images/%d" % status["image_id"])).code == 404

    heard = []
    monkeypatch.setattr(broker, "publish", lambda *a, **k: heard.append(k) or real(*a, **k))
    assert (await delete(http_client, base_url, status["image_id"])).code == 204
    assert [k["message_id"] for k in heard] == ["image.deleted:%d" % status["image_id"]]
    assert (await delete(http_client, base_url, status["image_id"])).code == 404


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("stack", ["embedded"])
async def test_a_signed_in_operator_deletes_with_the_cookie_and_the_xsrf_token(
        http_client, base_url, context):
    status = await stored_image(http_client, base_url, nickname="by-cookie")
    page = await get(http_client, base_url + "/login")
    xsrf = page.headers["Set-Cookie"].split("_xsrf=", 1)[1].split(";", 1)[0]
    cookies = "_xsrf=%s" % xsrf
    wrong = await http_client.fetch(base_url + "/login", method="POST", raise_error=False,
                                    body="token=nope&_xsrf=%s" % xsrf, follow_redirects=False,
                                    headers={"Cookie": cookies})
    assert wrong.code == 403 and "operator=" not in wrong.headers.get("Set-Cookie", "")
    signed = await http_client.fetch(base_url + "/login", method="POST", raise_error=False,
                                     body="token=%s&_xsrf=%s&next=/gallery" % (TOKEN, xsrf),
                                     follow_redirects=False, headers={"Cookie": cookies})
    assert signed.code == 302 and signed.headers["Location"] == "/gallery"
    set_cookie = [v for v in signed.headers.get_list("Set-Cookie") if v.startswith("operator=")]
    assert set_cookie and "HttpOnly" in set_cookie[0] and "SameSite=Strict" in set_cookie[0]
    cookies += "; " + set_cookie[0].split(";", 1)[0]

    photo = await http_client.fetch(base_url + "/photos/%d" % status["image_id"],
                                    headers={"Cookie": cookies})
    assert b'class="delete"' in photo.body
    anonymous = await get(http_client, base_url + "/photos/%d" % status["image_id"])
    assert b'class="delete"' not in anonymous.body
    # The cookie without the XSRF token is refused; with it, the image goes.
    refused = await delete(http_client, base_url, status["image_id"], {"Cookie": cookies})
    assert refused.code == 403
    assert (await get(http_client, base_url + "/api/images/%d" % status["image_id"])).code == 200
    done = await delete(http_client, base_url, status["image_id"],
                        {"Cookie": cookies, "X-XSRFToken": xsrf})
    assert done.code == 204


# -- two web processes, RabbitMQ, PostgreSQL, and each cache ------------------------------

@pytest.mark.parametrize("cache", ["redis", "memory"])
def test_a_delete_on_one_node_is_seen_by_both(postgres_url, amqp_prefix, redis_prefix, spawn,
                                              cache):
    settings = dict(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                    API_TOKEN=TOKEN)
    settings.update(REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix) if cache == "redis" \
        else settings.update(CACHE="memory")
    env = process_env(**settings)
    ports = [free_port(), free_port()]
    [spawn("web-%d" % n, ["server.py", "--role=web", "--port", str(port)], env,
           ready=WEB_READY + RABBIT_READY) for n, port in enumerate(ports)]
    spawn("processor", ["-m", "consumers.processor"], env, ready=RABBIT_READY)
    data = make_image("PNG", size=(60, 45), color=(5, 50, 150))
    code, accepted = upload(ports[0], data, nickname="two-nodes")
    assert code == 202, accepted
    image_id = wait_stored(ports[0], accepted["request_id"])["image_id"]
    paths = ["/api/images/%d/content" % image_id, "/api/images/%d/thumbnail" % image_id]
    for port in ports:
        for path in paths:
            assert fetch(port, "GET", path)[0] == 200  # each node has it cached now
    if cache == "redis":
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        keys = list(client.scan_iter(match=redis_prefix + "*"))
        assert redis_prefix.encode() + content_key(image_id).encode() in keys
        # Each node keeps its own copy in front of Redis: with Redis emptied, the
        # reads are still answered, from each process's memory.
        client.delete(*keys)
        client.close()
        for port in ports:
            for path in paths:
                assert fetch(port, "GET", path)[0] == 200

    code, _headers, body = fetch(ports[1], "DELETE", "/api/images/%d" % image_id, headers=AUTH)
    assert code == 204, body
    # The deleting node at once.
    for path in paths:
        assert fetch(ports[1], "GET", path)[0] == 404, path
    # The other node's own memory: as soon as the image.deleted event reaches it, it
    # answers 404, not the bytes it held.
    for path in paths:
        wait_until(lambda: fetch(ports[0], "GET", path)[0] == 404, 10,
                   "node 0 still serves %s from its memory" % path)
