"""Live updates: GET /api/events on every stack, the origin check, a client that
does not keep up, and every event on every web node when the roles are split."""

import asyncio
import base64
import json
import os
import socket

import pytest
import tornado.websocket

from broker import Message
from handlers.events import MAX_PENDING
from tests.conftest import AMQP_URL
from tests.helpers import make_image, post_upload
from tests.processes import process_env, split_deployment, upload

EVENT_FIELDS = {"event", "request_id", "image_id", "nickname"}


def events_url(base_url, query=""):
    return base_url.replace("http://", "ws://") + "/api/events" + query


async def next_event(socket, timeout=15):
    text = await asyncio.wait_for(socket.read_message(), timeout)
    assert text is not None, "the server closed the socket"
    return json.loads(text)


async def events_of(socket, request_id, last="image.uploaded"):
    """This upload's events, in the order they came, up to ``last``."""
    seen = []
    while not seen or seen[-1]["event"] != last:
        event = await next_event(socket)
        if event["request_id"] == request_id:
            seen.append(event)
    return seen


@pytest.mark.gen_test(timeout=40)
async def test_a_socket_sees_an_upload_go_from_processing_to_stored(http_client, base_url,
                                                                   context):
    everything = await tornado.websocket.websocket_connect(events_url(base_url))
    others = await tornado.websocket.websocket_connect(events_url(base_url, "?nickname=bob"))
    try:
        response = await post_upload(http_client, base_url, "alice", make_image("PNG"))
        assert response.code == 202, response.body
        request_id = json.loads(response.body)["request_id"]

        processing, uploaded = await events_of(everything, request_id)
        assert processing["event"] == "image.processing"
        assert processing["nickname"] == "alice"
        assert uploaded["event"] == "image.uploaded"
        assert EVENT_FIELDS <= set(uploaded)
        assert uploaded["nickname"] == "alice" and uploaded["image_id"]
        assert uploaded["duplicate"] is False
        assert uploaded["url"] == "/api/images/%d/content" % uploaded["image_id"]

        # ?nickname=bob heard none of alice's events: bob's upload is the first it gets.
        response = await post_upload(http_client, base_url, "bob", make_image("PNG", size=(9, 9)))
        bobs = json.loads(response.body)["request_id"]
        first = await next_event(others)
        assert (first["request_id"], first["event"]) == (bobs, "image.processing")
    finally:
        everything.close()
        others.close()


@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("stack", ["embedded"])
@pytest.mark.parametrize("config_overrides", [{"allowed_origins": ("https://photos.example",)}])
async def test_only_the_pages_own_host_or_an_allowed_origin_may_open_the_socket(
        http_server, http_port, context):
    loop = asyncio.get_running_loop()
    for origin, status in (("http://evil.example", 403), ("https://photos.example.evil", 403),
                           ("null", 403), ("http://127.0.0.1:%d" % http_port, 101),
                           ("https://photos.example", 101), (None, 101)):
        sock, answer = await loop.run_in_executor(None, handshake, http_port, origin)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 %d " % status), (origin, answer)


def handshake(port, origin=None, receive_buffer=None):
    """Open a WebSocket by hand: ``(socket, the server's answer head)``."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n%s\r\n"
                  % (port, key, "Origin: %s\r\n" % origin if origin else "")).encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)
        assert chunk, answer
        answer += chunk
    return sock, answer


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("stack", ["embedded"])
async def test_a_client_that_does_not_keep_up_is_dropped_and_the_others_are_not(
        http_server, base_url, http_port, context):
    hub = context.events
    reader = await tornado.websocket.websocket_connect(events_url(base_url))
    received = []

    async def read_all():
        while True:
            text = await reader.read_message()
            if text is None:
                return
            received.append(text)
    reading = asyncio.ensure_future(read_all())
    while len(hub.clients) < 1:
        await asyncio.sleep(0.01)
    readers = set(hub.clients)
    # A client that completes the handshake and then never reads (with a small receive
    # buffer, so the server's writes back up quickly).
    stuck, answer = await asyncio.get_running_loop().run_in_executor(
        None, lambda: handshake(http_port, receive_buffer=4096))
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    try:
        while len(hub.clients) < 2:
            await asyncio.sleep(0.01)
        [slow] = hub.clients - readers
        padding = "x" * 1000
        sent, most_pending = 0, 0
        while slow in hub.clients:
            assert sent < 200_000, "the slow client was never dropped"
            sent += 1
            body = json.dumps({"event": "image.uploaded", "request_id": "r-%d" % sent,
                               "nickname": "n", "padding": padding}).encode()
            hub.on_message(Message(body, "image.uploaded"))
            most_pending = max(most_pending, slow.pending)
            if sent % 50 == 0:
                await asyncio.sleep(0)  # let the loop write to the sockets
        assert most_pending <= MAX_PENDING
        # The client that reads is still there and gets every event.
        assert hub.clients == readers
        while len(received) < sent:
            await asyncio.sleep(0.01)
        assert [json.loads(text)["request_id"] for text in received] == [
            "r-%d" % n for n in range(1, sent + 1)]
    finally:
        stuck.close()
        reader.close()
        await reading


# -- every web node sees every event -----------------------------------------------------

def test_every_web_process_sees_every_event(postgres_url, amqp_prefix, spawn):
    env = process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                      CACHE="none")
    ports = split_deployment(spawn, env)

    async def run():
        sockets = [await tornado.websocket.websocket_connect(
            "ws://127.0.0.1:%d/api/events" % port) for port in ports]
        loop = asyncio.get_running_loop()
        accepted = []
        for n in range(5):
            code, body = await loop.run_in_executor(None, lambda n=n: upload(
                ports[0], make_image("PNG", size=(10 + n, 10)), nickname="everywhere"))
            assert code == 202, body
            accepted.append(body["request_id"])
        seen = []
        for client in sockets:
            events = {}
            while sum(e[-1:] == ["image.uploaded"] for e in events.values()) < len(accepted):
                event = await next_event(client)
                events.setdefault(event["request_id"], []).append(event["event"])
            seen.append(events)
            client.close()
        return accepted, seen
    accepted, seen = asyncio.run(run())
    for events in seen:
        assert set(events) == set(accepted)
        for request_id in accepted:
            assert events[request_id] == ["image.processing", "image.uploaded"], events
