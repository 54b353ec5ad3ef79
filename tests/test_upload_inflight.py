"""MAX_INFLIGHT_UPLOAD_BYTES: uploads held open by the test count with their
Content-Length from the moment their headers arrive; the next upload past the
cap is answered 503 + Retry-After before its body is read, and the bytes are
released when a request ends, however it ends."""

import asyncio
import json

import pytest

from tests.helpers import eventually, make_image, multipart, post_upload

CONTENT_TYPE, BODY = multipart({"nickname": "held"},
                               {"image_data": ("held.png", make_image(size=(120, 90)))})


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


@pytest.fixture
def config_overrides():
    return {"max_inflight_upload_bytes": 2 * len(BODY) - 1}  # room for one held upload


async def open_upload(port, sent):
    """A connection that sent an upload's headers and its first ``sent`` body bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                 b"Content-Length: %d\r\n\r\n" % (CONTENT_TYPE.encode(), len(BODY)))
    writer.write(BODY[:sent])
    await writer.drain()
    return reader, writer


async def read_answer(reader):
    """``(status, headers, body)`` of one HTTP answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("Content-Length", 0)))
    return int(lines[0].split()[1]), headers, body


@pytest.mark.gen_test(timeout=30)
async def test_uploads_past_the_cap_are_refused_until_the_held_one_ends(
        http_server, http_port, http_client, base_url, context):
    held_reader, held = await open_upload(http_port, len(BODY) // 2)
    await eventually(lambda: context.inflight_upload_bytes == len(BODY))

    reader, writer = await open_upload(http_port, 0)  # headers only: nothing is read
    status, headers, body = await read_answer(reader)
    writer.close()
    assert status == 503 and headers["Retry-After"] == "5"
    assert json.loads(body)["error"] == "upload not accepted, try again"
    assert context.inflight_upload_bytes == len(BODY)  # the refused one holds nothing

    held.write(BODY[len(BODY) // 2:])
    status, _headers, body = await read_answer(held_reader)
    held.close()
    assert status == 202, body
    await eventually(lambda: context.inflight_upload_bytes == 0)
    response = await post_upload(http_client, base_url, "next", make_image())
    assert response.code == 202, response.body


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_whose_client_goes_away_releases_its_bytes(
        http_server, http_port, http_client, base_url, context):
    _reader, held = await open_upload(http_port, 100)
    await eventually(lambda: context.inflight_upload_bytes == len(BODY))
    held.close()
    await eventually(lambda: context.inflight_upload_bytes == 0)
    response = await post_upload(http_client, base_url, "next", make_image())
    assert response.code == 202, response.body


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_upload_releases_its_bytes(http_client, base_url, context):
    response = await post_upload(http_client, base_url, "", make_image())  # no nickname
    assert response.code == 400
    assert context.inflight_upload_bytes == 0
