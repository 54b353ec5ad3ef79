"""The HTTP API, on every stack (SQLite/PostgreSQL, in-process broker/RabbitMQ,
memory/Redis/no cache): upload -> 202 -> stored -> served back byte-identical."""

import json
import uuid

import pytest

from cache import content_key
from tests.helpers import GatedStorage, eventually, make_image, post_upload, wait_for_upload
from uploads import RequestIds


@pytest.mark.gen_test(timeout=30)
async def test_upload_is_stored_and_served_back_identical(http_client, base_url, context):
    data = make_image("PNG")
    response = await post_upload(http_client, base_url, "alice", data, filename="x.png")
    assert response.code == 202, response.body
    accepted = json.loads(response.body)
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == "/api/uploads/%s" % accepted["request_id"]

    status = await wait_for_upload(http_client, base_url, accepted["request_id"])
    assert status["status"] == "stored", status
    image_id = status["image_id"]

    meta = json.loads((await http_client.fetch("%s/api/images/%d" % (base_url, image_id))).body)
    assert meta["nickname"] == "alice"
    assert (meta["mime_type"], meta["width"], meta["height"]) == ("image/png", 64, 48)
    assert meta["size"] == len(data)
    assert meta["request_id"] == accepted["request_id"]

    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, image_id))
    assert content.body == data
    assert content.headers["Content-Type"] == "image/png"
    assert content.headers["Cache-Control"] == "public, max-age=86400, immutable"
    assert content.headers["Etag"] == '"%s"' % meta["sha256"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                      ("WEBP", "image/webp")])
async def test_each_accepted_type_is_stored_with_its_type(http_client, base_url, context,
                                                          fmt, mime):
    data = make_image(fmt, size=(30, 20))
    response = await post_upload(http_client, base_url, "bob", data, filename="no-extension")
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, status["image_id"]))
    assert content.headers["Content-Type"] == mime
    assert content.body == data


@pytest.mark.gen_test(timeout=30)
async def test_content_answers_304_to_its_etag_and_is_cached(http_client, base_url, context):
    data = make_image("PNG", color=(1, 2, 3))
    response = await post_upload(http_client, base_url, "carol", data)
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    url = "%s/api/images/%d/content" % (base_url, status["image_id"])
    first = await http_client.fetch(url)
    again = await http_client.fetch(url, headers={"If-None-Match": first.headers["Etag"]},
                                    raise_error=False)
    assert again.code == 304
    assert again.body == b""
    other = await http_client.fetch(url, headers={"If-None-Match": '"something-else"'})
    assert other.code == 200 and other.body == data

    cached = await context.cache.get(content_key(status["image_id"]))
    if context.config.cache_type == "none":
        assert cached is None
    else:
        assert cached.data == data and cached.mime_type == "image/png"
        assert cached.etag == first.headers["Etag"]


@pytest.mark.gen_test(timeout=30)
async def test_a_cached_image_is_served_from_the_cache(http_client, base_url, context):
    """A hit never reaches the database: a planted entry is what comes back
    (and with the cache off, the database's bytes are)."""
    from cache import CachedImage
    data = make_image()
    response = await post_upload(http_client, base_url, "dan", data)
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    await context.cache.set(content_key(status["image_id"]), CachedImage(b"from-cache", "image/gif", '"x"'))
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, status["image_id"]))
    if context.config.cache_type == "none":
        assert (content.body, content.headers["Content-Type"]) == (data, "image/png")
    else:
        assert (content.body, content.headers["Content-Type"]) == (b"from-cache", "image/gif")


@pytest.mark.gen_test(timeout=30)
async def test_body_that_is_not_an_image_is_refused_with_415(http_client, base_url, context):
    for data, name in [(b"just some text, not a picture", "photo.jpg"),
                       (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "x.png"),
                       (b"%PDF-1.4\n", "doc.gif")]:
        response = await post_upload(http_client, base_url, "eve", data, filename=name)
        assert response.code == 415, (name, response.body)
        body = json.loads(response.body)
        assert body["error"] == "unsupported image type"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("nickname,detail", [
    (None, "nickname is required"),
    ("", "nickname is required"),
    ("   ", "nickname is required"),
    ("x" * 101, "longer than 100"),
    ("tab\tname", "control characters"),
    ("next\u0085line", "control characters"),
    ("evil\u202etxt.jpg", "control characters"),
])
async def test_bad_nickname_is_a_400(http_client, base_url, context, nickname, detail):
    response = await post_upload(http_client, base_url, nickname, make_image())
    assert response.code == 400
    body = json.loads(response.body)
    assert body["error"] == "bad nickname"
    assert detail in body["detail"]


@pytest.mark.gen_test(timeout=30)
async def test_nickname_is_trimmed_and_100_characters_is_fine(http_client, base_url, context):
    name = "n" * 100
    response = await post_upload(http_client, base_url, "  %s  " % name, make_image())
    assert response.code == 202
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["nickname"] == name and status["status"] == "stored"


@pytest.mark.gen_test(timeout=30)
async def test_missing_or_empty_file_is_a_400(http_client, base_url, context):
    for data in (None, b""):
        response = await post_upload(http_client, base_url, "frank", data)
        assert response.code == 400
        assert json.loads(response.body)["error"] == "missing file"


@pytest.mark.gen_test(timeout=30)
async def test_body_that_is_not_multipart_is_a_400(http_client, base_url, context):
    response = await http_client.fetch(base_url + "/api/images", method="POST",
                                       body=json.dumps({"nickname": "x"}),
                                       headers={"Content-Type": "application/json"},
                                       raise_error=False)
    assert response.code == 400
    assert "multipart/form-data" in json.loads(response.body)["detail"]


@pytest.mark.gen_test(timeout=30)
async def test_an_accepted_upload_is_queued_before_any_row_is_written(http_client, base_url,
                                                                     context):
    """The web tier writes nothing when it accepts an upload: from its 202 until the
    processor begins it, the status route knows it from its request id alone."""
    storage = context.storage = GatedStorage(context.storage, "mark_processing")
    try:
        response = await post_upload(http_client, base_url, "dora", make_image(color=(9, 8, 7)))
        assert response.code == 202, response.body
        request_id = json.loads(response.body)["request_id"]
        assert response.headers["X-Request-Id"] == request_id
        await eventually(lambda: storage.waiting == 1)  # the processor has it, held
        assert await storage.inner.get_upload(request_id) is None
        answer = await http_client.fetch(base_url + "/api/uploads/" + request_id)
        queued = json.loads(answer.body)
        assert {k: queued[k] for k in ("request_id", "nickname", "status", "image_id",
                                       "attempts")} \
            == {"request_id": request_id, "nickname": None, "status": "queued",
                "image_id": None, "attempts": 0}
        storage.gate.set()
        status = await wait_for_upload(http_client, base_url, request_id)
    finally:
        context.storage = storage.inner
    assert (status["status"], status["nickname"]) == ("stored", "dora")
    # The processor's row is dated when the upload was accepted, as its id says.
    assert status["created_at"] == queued["created_at"]


@pytest.mark.gen_test(timeout=30)
async def test_only_request_ids_this_service_issued_are_queued_without_a_row(
        http_client, base_url, context):
    issued = context.request_ids.issue()
    forged = issued[:-1] + ("0" if issued[-1] != "0" else "1")  # the tag does not match
    elsewhere = RequestIds("another deployment's secret").issue()
    for request_id, code in ((issued, 200), (forged, 404), (elsewhere, 404),
                             (issued.upper(), 404), (uuid.uuid4().hex, 404)):
        response = await http_client.fetch(base_url + "/api/uploads/" + request_id,
                                           raise_error=False)
        assert response.code == code, request_id
    # Every process of the database shares the key: a new one recognises the id.
    assert RequestIds(await context.storage.request_id_secret()).accepted_at(issued)


@pytest.mark.gen_test(timeout=30)
async def test_unknown_ids_are_json_404s(http_client, base_url, context):
    for path in ("/api/uploads/doesnotexist", "/api/images/999999",
                 "/api/images/999999/content", "/no/such/route"):
        response = await http_client.fetch(base_url + path, raise_error=False)
        assert response.code == 404, path
        assert json.loads(response.body)["error"], path


@pytest.mark.gen_test(timeout=30)
async def test_wrong_method_is_a_json_405(http_client, base_url, context):
    response = await http_client.fetch(base_url + "/api/images/1", method="PUT", body=b"{}",
                                       raise_error=False)
    assert response.code == 405
    assert json.loads(response.body)["error"]
    assert "GET" in response.headers["Allow"].split(", ")
    assert "PUT" not in response.headers["Allow"]


@pytest.mark.gen_test(timeout=30)
async def test_health_and_readiness(http_client, base_url, context):
    health = await http_client.fetch(base_url + "/healthz")
    assert json.loads(health.body) == {"status": "ok"}
    ready = json.loads((await http_client.fetch(base_url + "/readyz")).body)
    assert ready["status"] == "ok"
    assert ready["checks"] == {"database": "ok", "broker": "ok", "cache": "ok"}
