"""The upload size limit: judged from Content-Length before the body is read,
counted while a chunked body streams in, and checked on the file itself."""

import asyncio
import json
import socket
import threading
import tracemalloc

import pytest

from handlers import upload as upload_module
from tests.helpers import make_image, multipart, post_upload

LIMIT = 100_000


@pytest.fixture(params=["embedded"])
def stack(request):
    return request.param


@pytest.fixture
def config_overrides():
    return {"max_upload_bytes": LIMIT}


def read_response(sock):
    """Read until the peer closes or a full small response arrived; return bytes."""
    sock.settimeout(10)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b"Content-Length:" in head:
            length = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                break
    return data


@pytest.mark.gen_test(timeout=30)
async def test_content_length_over_the_limit_is_refused_before_the_body(
        http_server, http_port, context, io_loop):
    def send_headers_only():
        with socket.create_connection(("127.0.0.1", http_port)) as sock:
            sock.sendall(b"POST /api/images HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 50000000\r\n\r\n")
            return read_response(sock)
    response = await io_loop.run_in_executor(None, send_headers_only)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body == {"error": "image too large", "detail": "the limit is %d bytes" % LIMIT}


@pytest.mark.gen_test(timeout=30)
async def test_chunked_body_growing_past_the_limit_is_refused(
        http_server, http_port, context, io_loop):
    def send_chunked():
        with socket.create_connection(("127.0.0.1", http_port)) as sock:
            sock.sendall(b"POST /api/images HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 16384
            try:
                for _ in range(40):  # 640 KB, well past the limit
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed; the answer is still readable
            return read_response(sock)
    response = await io_loop.run_in_executor(None, send_chunked)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


@pytest.mark.gen_test(timeout=30)
async def test_a_file_over_the_limit_is_a_413_and_one_at_the_limit_is_accepted(
        http_client, base_url, context):
    png = make_image()
    over = png + b"\0" * (LIMIT + 1 - len(png))
    response = await post_upload(http_client, base_url, "big", over)
    assert response.code == 413
    assert json.loads(response.body)["error"] == "image too large"

    at_limit = png + b"\0" * (LIMIT - len(png))
    response = await post_upload(http_client, base_url, "big", at_limit)
    assert response.code == 202, response.body


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_upload_leaves_the_service_healthy(http_client, base_url, context):
    content_type, body = multipart({"nickname": "x"}, {"image_data": ("a.png", b"\0" * LIMIT)})
    response = await http_client.fetch(base_url + "/api/images", method="POST", body=body + body,
                                       headers={"Content-Type": content_type}, raise_error=False)
    assert response.code == 413
    health = await http_client.fetch(base_url + "/healthz")
    assert health.code == 200
    response = await post_upload(http_client, base_url, "small", make_image())
    assert response.code == 202


@pytest.mark.gen_test(timeout=30)
async def test_a_body_holds_only_the_bytes_that_have_arrived(http_server, http_port, context,
                                                             io_loop):
    """The buffer grows with the body, so no IOLoop step zeroes a whole upload's
    worth of memory up front (and a client that declares a large body but sends
    little holds little)."""
    declared, sent = 90_000, 1_000
    done = threading.Event()

    def send_the_start():
        with socket.create_connection(("127.0.0.1", http_port)) as sock:
            sock.sendall(b"POST /api/images HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (declared, b"x" * sent))
            done.wait(20)

    def held_by_the_upload_body():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, upload_module.__file__)])
        return sum(stat.size for stat in snapshot.statistics("filename"))

    tracemalloc.start()
    client = io_loop.run_in_executor(None, send_the_start)
    try:
        # Until the handler holds what was sent (counted from its reservation on).
        while context.inflight_upload_bytes < declared or held_by_the_upload_body() < sent:
            await asyncio.sleep(0.01)
        # about the 1,000 bytes sent (1,571 measured), nowhere near the 90,000 declared
        assert held_by_the_upload_body() < declared // 10
    finally:
        done.set()
        tracemalloc.stop()
        await client
