"""An upload's body is held in one buffer, and the image copied out of it once:
the web tier's peak of traced memory for one upload stays near twice its size
(it was more than three times: the chunks, their join, and the multipart
parser's two copies).  While the broker confirms, its copy is the only one."""

import os
import socket
import tracemalloc

import pytest

import handlers.images
import handlers.upload
from context import close_context
from handlers import make_app
from tests.conftest import start_context
from tests.helpers import multipart, post_upload

SIZE = 8 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["embedded"])
def stack(request):
    return request.param


@pytest.fixture
def web_context(io_loop, config):
    """The web role alone: no processor takes the message (and allocates) meanwhile."""
    context = io_loop.run_sync(lambda: start_context(config))
    yield context
    io_loop.run_sync(lambda: close_context(context))


@pytest.fixture
def app(web_context):
    return make_app(web_context)


def send(port, request):
    """Send ``request`` whole from a blocking socket (no copies) and read the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(memoryview(request))
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.gen_test(timeout=60)
async def test_one_upload_peaks_near_twice_its_size(http_server, http_port, io_loop,
                                                    web_context):
    data = PNG_SIGNATURE + os.urandom(SIZE - len(PNG_SIGNATURE))
    content_type, body = multipart({"nickname": "big"}, {"image_data": ("big.png", data)})
    request = (b"POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
               b"Content-Length: %d\r\n\r\n" % (content_type.encode(), len(body))) + body
    del data, body
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        status = await io_loop.run_in_executor(None, send, http_port, request)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert status == b"HTTP/1.1 202 Accepted", status
    print("peak of traced memory for one %d-byte upload: %.2f times its size"
          % (SIZE, peak / SIZE))
    assert peak < 2.5 * SIZE, "peak %.2f times the upload's size" % (peak / SIZE)


@pytest.mark.gen_test(timeout=30)
async def test_the_bytes_are_handed_to_the_broker_not_kept_while_it_confirms(
        http_client, base_url, web_context, monkeypatch):
    """While the confirm is awaited the broker's copy is the only one (with RabbitMQ,
    pika's frames wait in its buffer meanwhile: the handler's would be a second)."""
    broker, held = web_context.broker, []
    real_publish, real_accept = broker.publish, handlers.upload.accept_upload

    async def accept(context, upload, requeue=False):
        held.append(upload)
        return await real_accept(context, upload, requeue)

    async def publish(*args, **kwargs):
        assert len(kwargs["body"]) == SIZE
        assert [upload.data for upload in held] == [None]  # the caller let go of it
        return await real_publish(*args, **kwargs)
    monkeypatch.setattr(handlers.images, "accept_upload", accept)
    monkeypatch.setattr(broker, "publish", publish)
    data = PNG_SIGNATURE + os.urandom(SIZE - len(PNG_SIGNATURE))
    response = await post_upload(http_client, base_url, "big", data, "big.png")
    assert response.code == 202, response.body
    assert len(held) == 1
