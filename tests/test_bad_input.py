"""Bad input never hurts the service.

1. A table of malformed requests, sent as raw bytes over a socket (so that no
   client library tidies them up), each answered with its exact 4xx and a JSON
   ``{"error", "detail"}`` -- or, where Tornado answers before any handler
   (malformed HTTP), its bare ``400`` -- after which ``/healthz`` answers and a
   valid upload is still accepted and stored.  Run on the embedded and the
   services stacks.
2. Requests that look hostile but are valid (SQL-like and HTML-like nicknames,
   duplicated fields, several files, a path-like file name) are accepted and
   stored verbatim; a slow body completes while the IOLoop keeps answering; a
   body that never arrives is cut off after BODY_TIMEOUT (a real process).
3. A property-based test (hypothesis) sends a couple of thousand generated
   uploads to a real server process: never a 5xx, only the documented
   statuses, JSON on the API routes, the process alive at the end and every
   accepted upload finished (stored or failed).

Decisions these tests pin down:
- a field sent twice: the first value wins (as in the seed's Flask app, where
  ``request.form["nickname"]`` is the first value) -- an empty first nickname is
  a 400 even if a second one is set;
- several ``image_data`` files: the first one is the upload, the others are
  ignored (``request.files["image_data"]`` in the seed); it alone is judged, so
  a text file first is a 415 even if an image follows.
"""

import functools
import io
import json
import os
import re
import socket
import sqlite3
import time
import urllib.parse
from collections import namedtuple

import psycopg2
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from PIL import Image
from tornado.escape import xhtml_escape
from tornado.tcpclient import TCPClient

from uploads import InvalidUpload, clean_nickname
from handlers.upload import MULTIPART_OVERHEAD
from tests.conftest import free_port
from tests.helpers import make_image, post_upload, wait_for_upload
from tests.processes import (WEB_READY, fetch, no_traceback, process_env, upload,
                             upload_status, wait_stored)

LIMIT = 100_000                          # MAX_UPLOAD_BYTES in these tests
BODY_LIMIT = LIMIT + MULTIPART_OVERHEAD  # the most a request body may carry
BOUNDARY = "----photoAppTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY
PNG = make_image("PNG", size=(8, 6), color=(10, 120, 240))


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


@pytest.fixture
def config_overrides():
    return {"max_upload_bytes": LIMIT}


# -- building requests as bytes ---------------------------------------------------------

def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


Part = namedtuple("Part", "name payload filename content_type", defaults=(None, None))


def form(*parts, boundary=BOUNDARY, closing=True):
    """A multipart body of ``parts`` (names, values and file names as given, bytes or str)."""
    boundary = _bytes(boundary)
    out = []
    for part in parts:
        disposition = b'form-data; name="%s"' % _bytes(part.name)
        if part.filename is not None:
            disposition += b'; filename="%s"' % _bytes(part.filename)
        head = b"Content-Disposition: " + disposition + b"\r\n"
        if part.content_type is not None:
            head += b"Content-Type: " + _bytes(part.content_type) + b"\r\n"
        out.append(b"--" + boundary + b"\r\n" + head + b"\r\n" + _bytes(part.payload) + b"\r\n")
    if closing:
        out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def nick(value):
    return Part("nickname", value)


def image(data=PNG, filename="photo.png"):
    return Part("image_data", data, filename, "image/png")


def upload_form(nickname="alice", data=PNG, **kwargs):
    return form(nick(nickname), image(data), **kwargs)


def raw_request(method, path, headers=(), body=b"", length=True):
    """The bytes of one HTTP/1.1 request.  ``headers`` are (name, value) pairs sent
    as given; ``Content-Length`` is added for the body unless ``length`` is False."""
    lines = [b"%s %s HTTP/1.1" % (_bytes(method), _bytes(path)), b"Host: 127.0.0.1",
             b"Connection: close"]
    lines += [b"%s: %s" % (_bytes(name), _bytes(value)) for name, value in headers]
    if length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(body, content_type=CONTENT_TYPE, path="/api/images", headers=(), length=True):
    head = [] if content_type is None else [("Content-Type", content_type)]
    return raw_request("POST", path, head + list(headers), body, length)


def get(path, headers=()):
    return raw_request("GET", path, headers)


def headers_only(extra=(), path="/api/images"):
    """A POST whose headers promise ``extra``'s Content-Length but send no body."""
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
            % (_bytes(path), _bytes(CONTENT_TYPE))
            + b"".join(b"%s: %s\r\n" % (_bytes(k), _bytes(v)) for k, v in extra) + b"\r\n")


def chunked(body, size=16384):
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


# -- reading responses -------------------------------------------------------------------

Response = namedtuple("Response", "status headers body interim raw")


def _split_interim(data):
    """``(interim status lines, rest)``: 1xx responses before the final one."""
    interim = []
    while re.match(rb"HTTP/1\.[01] 1\d\d", data) and b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        interim.append(head.split(b"\r\n")[0])
    return interim, data


def _complete(data):
    """True when ``data`` holds a final response whose Content-Length body arrived."""
    _interim, data = _split_interim(data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    return bool(match) and len(body) >= int(match.group(1))


def parse_response(data):
    """A Response from the bytes on the wire; status None when nothing came."""
    interim, rest = _split_interim(data)
    if not rest:
        return Response(None, {}, b"", interim, data)
    head, _, body = rest.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    assert match, "not an HTTP response: %r" % data[:300]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(match.group(1)), headers, body, interim, data)


def read_response(sock, timeout=10):
    """Read until the peer closes or a complete response arrived."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while not _complete(data):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        except socket.timeout:
            raise AssertionError("no complete answer within %ss; got %r"
                                 % (timeout, data[:300])) from None
        if not chunk:
            break
        data += chunk
        if time.monotonic() > deadline:
            raise AssertionError("no complete answer within %ss" % timeout)
    return parse_response(data)


def exchange(port, *pieces, timeout=10):
    """Send ``pieces`` on a new connection, return the Response.  A server that answers
    early and closes may make the sending fail: the answer is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_response(sock, timeout)


# -- the table ---------------------------------------------------------------------------

JSON, RAW, HTML, CLOSED = "json", "raw", "html", "closed"
Case = namedtuple("Case", "id pieces status error detail kind", defaults=(JSON,))


def case(id, request, status, error=None, detail=None, kind=JSON):
    pieces = request if isinstance(request, tuple) else (request,)
    return pytest.param(Case(id, pieces, status, error, detail, kind), id=id)


E_REQUEST, E_NICK, E_FILE = "bad request", "bad nickname", "missing file"
E_TYPE, E_SIZE, E_404, E_405 = "unsupported image type", "image too large", "not found", \
    "Method Not Allowed"
NOT_MULTIPART = "send multipart/form-data"
OVER = "the limit is %d bytes" % LIMIT
TEXT = b"just some notes, not an image\n"

CASES = [
    # -- the body and its type
    case("no-body", post(b""), 400, E_REQUEST, "no final boundary found"),
    case("no-body-no-content-type", post(b"", content_type=None), 400, E_REQUEST,
         NOT_MULTIPART),
    case("json-body", post(b'{"nickname": "alice", "image_data": "iVBORw0KGgo="}',
                           "application/json"), 400, E_REQUEST, NOT_MULTIPART),
    case("urlencoded-form", post(b"nickname=alice&image_data=%89PNG%0D%0A",
                                 "application/x-www-form-urlencoded"), 400, E_REQUEST,
         NOT_MULTIPART),
    case("text-plain-body", post(upload_form(), "text/plain"), 400, E_REQUEST, NOT_MULTIPART),
    case("content-encoding-gzip", post(upload_form(), headers=[("Content-Encoding", "gzip")]),
         400, E_REQUEST, "Unsupported Content-Encoding"),
    # -- the nickname
    case("no-nickname-field", post(form(image())), 400, E_NICK, "nickname is required"),
    case("empty-nickname", post(upload_form("")), 400, E_NICK, "nickname is required"),
    case("whitespace-nickname", post(upload_form(" \t \r\n  ")), 400, E_NICK,
         "nickname is required"),
    case("nickname-101-chars", post(upload_form("n" * 101)), 400, E_NICK,
         "nickname is longer than 100 characters"),
    case("nickname-10000-chars", post(upload_form("n" * 10_000)), 400, E_NICK,
         "nickname is longer than 100 characters"),
    case("nickname-control-chars", post(upload_form("bell\x07and\x1b[31mescape")), 400,
         E_NICK, "nickname contains control characters"),
    case("nickname-nul-byte", post(upload_form("nul\x00byte")), 400, E_NICK,
         "nickname contains control characters"),
    case("nickname-newline-inside", post(upload_form("two\nlines")), 400, E_NICK,
         "nickname contains control characters"),
    case("nickname-not-utf8", post(upload_form(b"caf\xe9")), 400, E_NICK,
         "nickname is not valid UTF-8"),
    case("nickname-utf8-surrogate", post(upload_form(b"\xed\xa0\x80x")), 400, E_NICK,
         "nickname is not valid UTF-8"),
    case("nickname-overlong-utf8", post(upload_form(b"\xc0\xaf")), 400, E_NICK,
         "nickname is not valid UTF-8"),
    case("nickname-sent-as-file", post(form(Part("nickname", "alice", "nick.txt"), image())),
         400, E_NICK, "nickname is required"),
    case("first-nickname-empty", post(form(nick(""), nick("second"), image())), 400, E_NICK,
         "nickname is required"),
    # -- the file
    case("no-file-field", post(form(nick("alice"))), 400, E_FILE,
         "attach the image as the field image_data"),
    case("empty-file", post(upload_form(data=b"")), 400, E_FILE,
         "attach the image as the field image_data"),
    case("file-sent-as-plain-field", post(form(nick("alice"), Part("image_data", PNG))), 400,
         E_FILE, "attach the image as the field image_data"),
    case("file-is-text", post(form(nick("alice"), image(TEXT, "notes.txt"))), 415, E_TYPE,
         "the file is not one of image/jpeg"),
    case("file-is-html-named-png", post(upload_form(data=b"<html><script>alert(1)</script>")),
         415, E_TYPE, "the file is not one of"),
    case("file-is-svg", post(upload_form(data=b'<svg xmlns="http://www.w3.org/2000/svg"/>')),
         415, E_TYPE, "the file is not one of"),
    case("first-file-is-text", post(form(nick("alice"), image(TEXT), image(PNG))), 415,
         E_TYPE, "the file is not one of"),
    case("file-over-the-limit", post(upload_form(data=PNG + b"\0" * (LIMIT + 1 - len(PNG)))),
         413, E_SIZE, OVER),
    case("filename-not-utf8", post(upload_form().replace(b'filename="photo.png"',
                                                         b'filename="\xff\xfe.png"')),
         400, E_REQUEST, "malformed multipart body"),
    case("filename-with-nul", post(form(nick("alice"), image(PNG, "photo.png\x00.txt"))), 400,
         E_REQUEST, "malformed multipart body"),
    # -- the multipart framing
    case("wrong-boundary", post(upload_form(boundary="someOtherBoundary")), 400, E_REQUEST,
         "no final boundary found"),
    case("missing-boundary-parameter", post(upload_form(), "multipart/form-data"), 400,
         E_REQUEST, "multipart boundary not found"),
    case("empty-boundary-parameter", post(upload_form(), "multipart/form-data; boundary="),
         400, E_REQUEST, "multipart boundary not found"),
    case("multipart-type-with-suffix",
         post(upload_form(), "multipart/form-dataxyz; boundary=" + BOUNDARY), 400, E_REQUEST,
         "Invalid content type"),
    case("truncated-body", post(upload_form()[:len(upload_form()) // 2]), 400, E_REQUEST,
         "no final boundary found"),
    case("no-closing-boundary", post(upload_form(closing=False)), 400, E_REQUEST,
         "no final boundary found"),
    case("part-without-headers",
         post(b"--%s\r\nno headers at all\r\n--%s--\r\n" % ((BOUNDARY.encode(),) * 2)), 400,
         E_REQUEST, "missing headers"),
    case("part-without-name", post(form(Part("", b"alice"), image())), 400, E_REQUEST,
         "missing name"),
    case("part-not-form-data", post(upload_form().replace(b"form-data; name=\"nickname\"",
                                                          b"attachment; name=\"nickname\"")),
         400, E_REQUEST, "Invalid multipart/form-data"),
    case("too-many-parts", post(form(*([nick("alice")] * 101), image())), 400, E_REQUEST,
         "too many parts"),
    # -- sizes and lengths
    case("content-length-over-the-limit", headers_only([("Content-Length", "50000000")]), 413,
         E_SIZE, OVER),
    case("content-length-of-5000-digits", headers_only([("Content-Length", "9" * 5000)]), 413,
         E_SIZE, OVER),
    case("expect-100-continue-over-the-limit",
         headers_only([("Content-Length", str(BODY_LIMIT + 1)), ("Expect", "100-continue")]),
         413, E_SIZE, OVER),
    case("chunked-body-over-the-limit",
         (headers_only([("Transfer-Encoding", "chunked")]),
          chunked(upload_form(data=PNG + b"\0" * (BODY_LIMIT + 65536)))), 413, E_SIZE, OVER),
    # -- malformed HTTP: Tornado answers a bare 400 before any handler runs
    case("garbage-request-line", b"HELLO THERE\r\n\r\n", 400, kind=RAW),
    case("header-line-without-colon",
         b"POST /api/images HTTP/1.1\r\nHost: x\r\nnot a header line\r\n\r\n", 400, kind=RAW),
    case("content-length-not-a-number", post(upload_form(), length=False,
                                             headers=[("Content-Length", "12abc")]),
         400, kind=RAW),
    case("content-length-superscript-digit", post(b"xx", length=False,
                                                  headers=[("Content-Length", b"\xb2")]),
         400, kind=RAW),
    case("content-length-negative", post(b"", length=False,
                                         headers=[("Content-Length", "-5")]), 400, kind=RAW),
    case("content-lengths-unequal", post(upload_form(), length=False,
                                         headers=[("Content-Length", "10"),
                                                  ("Content-Length", "20")]), 400, kind=RAW),
    case("content-length-and-chunked", post(chunked(upload_form()), headers=[
        ("Transfer-Encoding", "chunked")]), 400, kind=RAW),
    case("chunk-size-not-hex", (headers_only([("Transfer-Encoding", "chunked")]),
                                b"zz\r\nabc\r\n0\r\n\r\n"), 400, kind=RAW),
    # Tornado closes a connection whose headers pass 64 KB, without an answer.
    case("headers-over-64kb", get("/healthz", [("X-Padding", "p" * 70_000)]), None,
         kind=CLOSED),
    # -- methods
    case("put", raw_request("PUT", "/api/images", [("Content-Type", CONTENT_TYPE)],
                            upload_form()), 405, E_405,
         "PUT is not allowed here; use GET or POST"),
    case("delete", raw_request("DELETE", "/api/images"), 405, E_405,
         "DELETE is not allowed here; use GET or POST"),
    case("patch", raw_request("PATCH", "/api/images", [("Content-Type", CONTENT_TYPE)],
                              upload_form()), 405, E_405,
         "PATCH is not allowed here; use GET or POST"),
    case("unknown-method", raw_request("BREW", "/api/images"), 405, E_405,
         "BREW is not allowed here; use GET or POST"),
    case("post-to-an-image", post(upload_form(), path="/api/images/1"), 405, E_405,
         "POST is not allowed here; use GET or DELETE"),
    # -- paths
    case("path-dot-dot-etc-passwd", get("/api/images/../../etc/passwd"), 404, E_404,
         "no route for /api/images/../../etc/passwd"),
    case("path-encoded-dot-dot", get("/api/images/%2e%2e/"), 404, E_404, "no route for"),
    case("path-dot-dot-after-content", get("/api/images/1/content/../../x"), 404, E_404,
         "no route for"),
    case("path-double-slashes", post(upload_form(), path="//api//images"), 404, E_404,
         "no route for //api//images"),
    case("path-upload-id-200-chars", get("/api/uploads/" + "a" * 200), 404, E_404,
         "no route for"),
    case("path-image-id-too-big", get("/api/images/99999999999999999999"), 404, E_404,
         "no route for"),
    case("path-image-id-encoded-nul", get("/api/images/1%00"), 404, E_404, "no route for"),
    case("path-nickname-not-utf8", get("/images/%FF"), 400, "Bad Request", "Invalid unicode"),
    case("path-nickname-nul", get("/images/a%00b"), 400, E_NICK,
         "nickname contains control characters"),
    case("query-limit-not-a-number", get("/api/images?limit=abc"), 400, "bad limit",
         "limit must be a whole number"),
    case("query-cursor-forged", get("/api/images?cursor=%27%20OR%201%3D1"), 400, "bad cursor",
         "cursor must be a next_cursor"),
    case("query-nickname-not-utf8", get("/api/images?nickname=%FF"), 400, "Bad Request",
         "Invalid unicode in nickname"),
    case("query-thumbnail-size-superscript", get("/api/images/1/thumbnail?size=%C2%B2"), 400,
         "bad size", "size must be one of"),
    # -- the seed's routes
    case("seed-form-missing-file", post(form(nick("alice")), path="/",
                                        headers=[("Accept", "application/json")]),
         400, E_FILE, "attach the image as the field image_data"),
    case("seed-form-error-as-page", post(form(nick("alice")), path="/"), 400,
         "The upload was not accepted", "attach the image as the field image_data", kind=HTML),
    case("sniff-mime-no-file", post(form(nick("alice")), path="/sniff-mime"), 400, E_FILE,
         "attach the file as the field image_data"),
    case("sniff-mime-truncated-body", post(upload_form()[:40], path="/sniff-mime"), 400,
         "Bad Request", "no final boundary found"),
]


def check_answer(case, response):
    assert response.status == case.status, response.raw[:600]
    assert not response.interim, "interim answers: %r" % response.interim
    if case.kind == CLOSED:
        assert response.raw == b""
    elif case.kind == RAW:
        assert "content-type" not in response.headers, response.raw[:600]
        assert response.body == b""
    elif case.kind == HTML:
        assert response.headers["content-type"].startswith("text/html"), response.raw[:600]
        text = response.body.decode()
        assert case.error in text and case.detail in text, text
    else:
        assert response.headers["content-type"] == "application/json; charset=UTF-8"
        body = json.loads(response.body)
        assert set(body) == {"error", "detail"}, body
        assert body["error"] == case.error, body
        assert case.detail in body["detail"], body
        if case.status == 405:
            assert response.headers["allow"] == case.detail.rpartition("use ")[2] \
                .replace(" or ", ", "), response.headers


async def assert_healthy(http_client, base_url, tag):
    """/healthz answers and a valid upload is accepted and ends stored."""
    health = await http_client.fetch(base_url + "/healthz", raise_error=False)
    assert health.code == 200, health.body
    data = make_image("PNG", size=(12, 9), color=tuple(os.urandom(3)))
    response = await post_upload(http_client, base_url, "after-" + tag[:40], data)
    assert response.code == 202, response.body
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status
    return status


@pytest.mark.parametrize("case", CASES)
@pytest.mark.gen_test(timeout=40)
async def test_a_malformed_request_gets_its_4xx_and_the_service_stays_healthy(
        case, http_server, http_port, http_client, base_url, context, io_loop):
    response = await io_loop.run_in_executor(
        None, functools.partial(exchange, http_port, *case.pieces))
    check_answer(case, response)
    await assert_healthy(http_client, base_url, case.id)
    if case.id == "path-double-slashes":  # the upload sent to the wrong path went nowhere
        assert await context.storage.list_images(nickname="alice", limit=10) == []


def test_the_table_is_big_enough():
    assert len({param.values[0].id for param in CASES}) == len(CASES) >= 22


# -- valid, however hostile they look --------------------------------------------------------

def query(config, sql):
    """The rows of ``sql``, straight from the test's database."""
    if config.db_type == "sqlite":
        conn = sqlite3.connect(config.database_url[len("sqlite:///"):])
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    conn = psycopg2.connect(config.database_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        conn.close()


def database_tables(config):
    sql = ("SELECT name FROM sqlite_master WHERE type = 'table'" if config.db_type == "sqlite"
           else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row[0] for row in query(config, sql)}


async def post_raw(io_loop, port, body, path="/api/images", headers=()):
    return await io_loop.run_in_executor(
        None, functools.partial(exchange, port, post(body, path=path, headers=headers)))


async def accepted_and_finished(io_loop, http_client, base_url, port, body, **kwargs):
    response = await post_raw(io_loop, port, body, **kwargs)
    assert response.status == 202, response.raw[:600]
    accepted = json.loads(response.body)
    return accepted, await wait_for_upload(http_client, base_url, accepted["request_id"])


@pytest.mark.parametrize("nickname", [
    "'; DROP TABLE images; --",
    "Robert'); DROP TABLE uploads;--",
    "x' OR '1'='1",
    "'; SELECT pg_sleep(30); --",
])
@pytest.mark.gen_test(timeout=40)
async def test_sql_like_nicknames_are_plain_text(nickname, http_server, http_port, http_client,
                                                 base_url, config, context, io_loop):
    data = make_image("PNG", size=(10, 10), color=(1, 2, 3))
    accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                   upload_form(nickname, data))
    assert status["status"] == "stored" and status["nickname"] == nickname, status
    assert {"images", "uploads", "thumbnails", "dead_letters"} <= database_tables(config)
    assert query(config, "SELECT nickname FROM images") == [(nickname,)]
    assert query(config, "SELECT nickname FROM uploads") == [(nickname,)]
    listing = await http_client.fetch("%s/api/images?nickname=%s"
                                      % (base_url, urllib.parse.quote(nickname)))
    images = json.loads(listing.body)["images"]
    assert [image["nickname"] for image in images] == [nickname]
    everyone = json.loads((await http_client.fetch(base_url + "/api/images")).body)["images"]
    assert len(everyone) == 1  # no OR '1'='1' widened anything
    seed = await http_client.fetch("%s/images/%s" % (base_url, urllib.parse.quote(nickname)))
    assert len(json.loads(seed.body)) == 1
    await assert_healthy(http_client, base_url, "sql")
    assert {"images", "uploads", "thumbnails", "dead_letters"} <= database_tables(config)


@pytest.mark.parametrize("nickname", [
    '<script>alert("x")</script>',
    "<img src=x onerror=alert(1)>&amp;",
])
@pytest.mark.gen_test(timeout=40)
async def test_html_like_nicknames_are_stored_verbatim_and_escaped_in_pages(
        nickname, http_server, http_port, http_client, base_url, context, io_loop):
    accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                   upload_form(nickname))
    assert status["status"] == "stored" and status["nickname"] == nickname, status
    raw_status = await http_client.fetch(base_url + accepted["status_url"])
    assert json.loads(raw_status.body)["nickname"] == nickname
    assert raw_status.headers["Content-Type"].startswith("application/json")
    meta = json.loads((await http_client.fetch(base_url + status["image_url"])).body)
    assert meta["nickname"] == nickname

    page = (await http_client.fetch("%s/photos/%d" % (base_url, meta["id"]))).body.decode()
    assert xhtml_escape(nickname) in page
    assert nickname not in page
    gallery = (await http_client.fetch(base_url + "/gallery")).body.decode()
    assert xhtml_escape(nickname) in gallery and nickname not in gallery

    # The seed's POST / answers an HTML fragment: escaped there too.
    response = await post_raw(io_loop, http_port, upload_form(nickname, make_image("GIF")),
                              path="/")
    assert response.status == 202, response.raw[:600]
    assert xhtml_escape(nickname).encode() in response.body
    assert nickname.encode() not in response.body


@pytest.mark.gen_test(timeout=40)
async def test_a_duplicated_nickname_field_first_wins(http_server, http_port, http_client,
                                                      base_url, context, io_loop):
    body = form(nick("first"), nick("second"), image())
    _accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                    body)
    assert status["status"] == "stored" and status["nickname"] == "first", status


@pytest.mark.gen_test(timeout=40)
async def test_several_image_files_first_wins(http_server, http_port, http_client, base_url,
                                              context, io_loop):
    first = make_image("PNG", size=(7, 5), color=(1, 1, 1))
    second = make_image("JPEG", size=(30, 20))
    body = form(nick("files"), image(first, "first.png"), image(second, "second.jpg"),
                image(TEXT, "third.txt"))
    _accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                    body)
    assert status["status"] == "stored", status
    content = await http_client.fetch(base_url + "/api/images/%d/content" % status["image_id"])
    assert content.body == first
    listing = json.loads((await http_client.fetch(base_url + "/api/images")).body)["images"]
    assert [image["id"] for image in listing] == [status["image_id"]]


@pytest.mark.parametrize("filename", [
    "../../../../etc/passwd", "C:\\Windows\\system32\\evil.exe", "x" * 2000,
    "名前 🦊.png", "<script>x</script>.png",
])
@pytest.mark.gen_test(timeout=40)
async def test_any_file_name_is_only_a_name(filename, http_server, http_port, http_client,
                                            base_url, context, io_loop):
    data = make_image("PNG", size=(6, 6), color=(3, 2, 1))
    body = form(nick("  trimmed  "), image(data, filename))
    _accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                    body)
    assert status["status"] == "stored" and status["nickname"] == "trimmed", status


@pytest.mark.gen_test(timeout=40)
async def test_a_truncated_image_with_real_magic_is_accepted_then_fails_not_stuck(
        http_server, http_port, http_client, base_url, context, io_loop):
    data = make_image("JPEG", size=(40, 30))
    _accepted, status = await accepted_and_finished(io_loop, http_client, base_url, http_port,
                                                    upload_form("cut", data[:len(data) // 3]))
    assert status["status"] == "failed" and status["error"], status
    await assert_healthy(http_client, base_url, "truncated")


@pytest.mark.gen_test(timeout=40)
async def test_expect_100_continue_within_the_limit_gets_continue_then_202(
        http_server, http_port, http_client, base_url, context, io_loop):
    body = upload_form("patient")

    def send():
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
            sock.sendall(headers_only([("Content-Length", str(len(body))),
                                       ("Expect", "100-continue")]))
            sock.settimeout(10)
            interim = sock.recv(1024)
            sock.sendall(body)
            return interim, read_response(sock)
    interim, response = await io_loop.run_in_executor(None, send)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    assert response.status == 202, response.raw[:600]
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status


# -- slow bodies, and bodies that never come -----------------------------------------------------

def noisy_png(side):
    """A PNG that does not compress: about 3 * side**2 bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.gen_test(timeout=60)
async def test_a_slow_body_completes_while_other_requests_are_answered(
        http_server, http_port, http_client, base_url, context, io_loop):
    """An upload whose body arrives piece by piece holds nothing up: between any two
    of its pieces, another request is answered (the test sends the next piece only
    after that answer, so the upload is incomplete all the while)."""
    data = noisy_png(130)  # ~50 KB
    request = post(upload_form("slowpoke", data))
    step = len(request) // 10 + 1
    pieces = [request[i:i + step] for i in range(0, len(request), step)]
    stream = await TCPClient().connect("127.0.0.1", http_port)
    try:
        for piece in pieces[:-1]:
            await stream.write(piece)
            health = await http_client.fetch(base_url + "/healthz")
            assert health.code == 200
        await stream.write(pieces[-1])
        response = parse_response(await read_one_response(stream))
    finally:
        stream.close()
    assert response.status == 202, response.raw[:600]
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status
    content = await http_client.fetch(base_url + "/api/images/%d/content" % status["image_id"])
    assert content.body == data


async def read_one_response(stream):
    """The bytes of one response with a Content-Length, read from a Tornado IOStream."""
    head = await stream.read_until(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return head + await stream.read_bytes(length)


BODY_TIMEOUT = 2.0


def wait_closed(sock, timeout):
    """Seconds until the peer closed ``sock`` and the bytes it sent before."""
    sock.settimeout(timeout)
    started, data = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError("the server still holds the connection after %ss" % timeout)
        if not chunk:
            break
        data += chunk
    return time.monotonic() - started, data


def test_a_body_shorter_than_its_content_length_is_cut_off_after_body_timeout(spawn, tmp_path):
    port = free_port()
    web = spawn("server", ["server.py", "--port", str(port)],
                process_env(SQLITE_DB_PATH=tmp_path / "photos.db", MAX_UPLOAD_BYTES=LIMIT,
                            BODY_TIMEOUT=BODY_TIMEOUT, SHUTDOWN_TIMEOUT=10), ready=WEB_READY)
    body = upload_form("never-finished", noisy_png(60))
    promise = headers_only([("Content-Length", str(len(body)))])

    # Clients that stay connected: held at most BODY_TIMEOUT, then closed unanswered.
    stalled = []
    sent_at = time.monotonic()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(promise + body[:len(body) // 2])
        stalled.append(sock)
    # Meanwhile the service answers.
    assert fetch(port, "GET", "/healthz")[0] == 200
    for sock in stalled:
        _waited, data = wait_closed(sock, BODY_TIMEOUT + 8)
        held = time.monotonic() - sent_at
        sock.close()
        assert data == b"", data  # Tornado closes without an answer; never a 2xx or 5xx
        assert BODY_TIMEOUT * 0.75 <= held < BODY_TIMEOUT + 5, held
    # A client that gives up (closes its side): the server lets go at once.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(promise + body[:100])
        sock.shutdown(socket.SHUT_WR)
        waited, data = wait_closed(sock, 5)
        # Let go when the client went, not when BODY_TIMEOUT ran out.
        assert waited < BODY_TIMEOUT and data == b"", (waited, data)
    # Clients that vanish mid-body.
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(promise + body[:len(body) // 3])

    assert fetch(port, "GET", "/healthz")[0] == 200
    code, accepted = upload(port, make_image("PNG", size=(9, 9)), nickname="after-timeouts")
    assert code == 202, accepted
    wait_stored(port, accepted["request_id"])
    assert "Timeout reading body" in web.log()
    # No request is left behind to hold up the shutdown (it would log "still in progress").
    assert web.stop(timeout=10) == 0, web.describe()
    log = web.log()
    assert "still in progress" not in log, log
    assert no_traceback(log), log


# -- property-based: thousands of generated uploads against a real process ----------------------

FUZZ_LIMIT = 20_000
FUZZ_BODY_LIMIT = FUZZ_LIMIT + MULTIPART_OVERHEAD
FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"RIFF\0\0\0\0WEBPVP8 ",
          b"II*\x00", b"MM\x00*", b"BM"]
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
PRINTABLE = "".join(chr(c) for c in range(32, 127))
API_CODES = {202, 400, 413, 415}
SNIFF_CODES = {200, 400}
RECEIVED = re.compile(rb"Request ([0-9a-f]{32}) received")


@st.composite
def images(draw):
    fmt = draw(st.sampled_from(FORMATS))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    color = tuple(draw(st.integers(0, 255)) for _ in range(3))
    return make_image(fmt, size=size, color=color)


def truncated(data_strategy):
    return data_strategy.flatmap(lambda data: st.integers(0, max(len(data) - 1, 0))
                                 .map(lambda n: data[:n]))


@st.composite
def file_payloads(draw):
    """``(kind, bytes)``: kind "image" for a valid image, unchanged, else "junk"."""
    kind = draw(st.sampled_from(["image"] * 6 + ["truncated", "random", "magic", "empty",
                                                 "big"]))
    if kind == "image":
        return "image", draw(images())
    if kind == "truncated":
        return "junk", draw(truncated(images()))
    if kind == "random":
        return "junk", draw(st.binary(max_size=3000))
    if kind == "magic":
        return "junk", draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=400))
    if kind == "empty":
        return "junk", b""
    size = draw(st.integers(FUZZ_LIMIT - 200, FUZZ_LIMIT + 2000))
    return "junk", PNG + b"\0" * (size - len(PNG))


@st.composite
def nickname_payloads(draw):
    kind = draw(st.sampled_from(["good"] * 5 + ["any", "ascii", "controls", "samples", "long",
                                                "bytes"]))
    text = {
        "good": lambda: st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]),
                                min_size=1, max_size=100),
        "any": lambda: st.text(max_size=120),
        "ascii": lambda: st.text(st.characters(codec="ascii"), max_size=30),
        "controls": lambda: st.text(st.characters(categories=["Cc", "Zs", "Zl", "Zp", "Cf"]),
                                    max_size=10),
        "samples": lambda: st.sampled_from([
            "alice", "'; DROP TABLE images; --", "<script>alert(1)</script>", " padded ",
            "名前", "🦊" * 100, "🦊" * 101, "", "a\x00b", "\u202egnp.exe"]),
        "long": lambda: st.integers(90, 20_000).map(lambda n: "n" * n),
        "bytes": lambda: st.binary(max_size=200),
    }[kind]()
    value = draw(text)
    return value if isinstance(value, bytes) else value.encode("utf-8")


field_names = st.one_of(
    st.sampled_from(["nickname", "image_data", "NICKNAME", "image", "image_data[]", "nick name",
                     "", "nickname\"", "image_data\r\nX-Injected: 1"]),
    st.text(max_size=20),
).map(lambda name: name.encode("utf-8"))
filenames = st.one_of(
    st.none(),
    st.sampled_from(["photo.png", "../../etc/passwd", "", "a\"b.png", "x\r\ny.png", "名前.gif"]),
    st.text(max_size=60),
).map(lambda name: None if name is None else name.encode("utf-8"))
part_types = st.one_of(st.none(), st.sampled_from(["image/png", "text/plain", "", "a/b; c=d"]),
                       st.text(st.characters(codec="ascii"), max_size=30))

Field = namedtuple("Field", "part intact")  # intact: a valid image, unchanged


@st.composite
def nickname_fields(draw, name=None):
    name = draw(field_names) if name is None else name
    return Field(Part(name, draw(nickname_payloads()), draw(filenames) if draw(st.booleans())
                      and name != b"nickname" else None, draw(part_types)), False)


@st.composite
def file_fields(draw, name=None):
    name = draw(field_names) if name is None else name
    kind, payload = draw(file_payloads())
    filename = draw(filenames)
    if name == b"image_data" and filename is None and draw(st.booleans()):
        filename = b"photo"
    return Field(Part(name, payload, filename, draw(part_types)), kind == "image")


BoundaryChoice = namedtuple("BoundaryChoice", "header body")


@st.composite
def boundaries(draw):
    body = draw(st.one_of(st.text(st.sampled_from(BCHARS), min_size=1, max_size=70),
                          st.text(st.sampled_from(PRINTABLE), min_size=1, max_size=40)))
    kind = draw(st.sampled_from(["plain"] * 8 + ["quoted", "other", "none", "empty", "type",
                                                 "upper"]))
    header = {
        "plain": "multipart/form-data; boundary=" + body,
        "quoted": 'multipart/form-data; boundary="%s"' % body,
        "other": "multipart/form-data; boundary=" + body + "x",
        "none": "multipart/form-data",
        "empty": "multipart/form-data; boundary=",
        "upper": "Multipart/Form-Data; boundary=" + body,
        "type": draw(st.one_of(
            st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                             "text/plain", "image/png", "", "multipart/mixed; boundary=" + body]),
            st.text(st.sampled_from(PRINTABLE), max_size=60))),
    }[kind]
    return BoundaryChoice(header, body)


Generated = namedtuple("Generated", "path headers body expect_stored oversized chunk")


@st.composite
def uploads(draw):
    path = draw(st.sampled_from(["/api/images"] * 7 + ["/"] * 2 + ["/sniff-mime"]))
    boundary = draw(boundaries())
    if draw(st.integers(0, 3)):  # mostly the two fields, in order
        fields = [draw(nickname_fields(b"nickname")), draw(file_fields(b"image_data"))]
        if draw(st.integers(0, 4)) == 0:
            fields = list(reversed(fields))
    else:
        fields = draw(st.lists(st.one_of(nickname_fields(), file_fields()), max_size=5))
    body = form(*(field.part for field in fields), boundary=boundary.body.encode())
    mutation = draw(st.sampled_from(["none"] * 12 + ["truncate", "flip", "drop-closing"]))
    if mutation == "truncate":
        body = body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    elif mutation == "flip" and body:
        index = draw(st.integers(0, len(body) - 1))
        body = body[:index] + bytes([body[index] ^ draw(st.integers(1, 255))]) + body[index + 1:]
    elif mutation == "drop-closing":
        body = body[:body.rfind(b"--" + boundary.body.encode())]

    headers = [("Content-Type", boundary.header)]
    if path == "/":
        accept = draw(st.sampled_from([None, "application/json", "text/html", "*/*"]))
        if accept:
            headers.append(("Accept", accept))
    oversized = path != "/sniff-mime" and draw(st.integers(0, 40)) == 0
    if not oversized:
        body = body[:FUZZ_BODY_LIMIT]  # bigger bodies: only as promised lengths (below)
    first, second = (fields + [None, None])[:2]
    expect_stored = (
        path == "/api/images" and not oversized and mutation == "none" and len(fields) == 2
        and boundary.header == "multipart/form-data; boundary=" + boundary.body
        and set(boundary.body) <= set(BCHARS)
        and (first.part.name, second.part.name) == (b"nickname", b"image_data")
        and first.part.filename is None and second.intact and plain_header(second.part.filename)
        and all(part_type_ok(field.part.content_type) for field in fields)
        and b"--" + boundary.body.encode() not in first.part.payload + second.part.payload
        and valid_nickname(first.part.payload))
    chunk = None if oversized or draw(st.integers(0, 5)) else draw(st.integers(64, 20_000))
    return Generated(path, headers, body, expect_stored, oversized, chunk)


def plain_header(filename):
    """A file name any multipart parser reads back as it is (and not empty)."""
    return bool(filename) and re.fullmatch(r"[\w .()\-\[\]!#$%&'+,;=@^{}~]+",
                                           filename.decode("utf-8")) is not None


def part_type_ok(content_type):
    return content_type is None or re.fullmatch("[ -~]*", content_type) is not None


def valid_nickname(payload):
    try:
        clean_nickname(payload.decode("utf-8"))
    except (UnicodeDecodeError, InvalidUpload):
        return False
    return b"\r" not in payload and b"\n" not in payload


class Client:
    """One keep-alive connection, opened again whenever the server closed it."""

    def __init__(self, port):
        self.port, self.sock, self.used = port, None, False
        self.connections = 0

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock, self.used = None, False

    def request(self, method, path, headers, body, expect=False, chunk=None):
        """The Response; ``expect``: send only the headers (with Expect: 100-continue
        and a length past the limit) and read the answer; ``chunk``: send the body
        chunked, in chunks of that size."""
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.connections += 1
            reused = self.used
            self.used = True
            head = [(k, v) for k, v in headers]
            if expect:
                head += [("Expect", "100-continue"),
                         ("Content-Length", str(FUZZ_BODY_LIMIT + len(body) + 1))]
            elif chunk:
                head.append(("Transfer-Encoding", "chunked"))
            else:
                head.append(("Content-Length", str(len(body))))
            payload = b"" if expect else chunked(body, chunk) if chunk else body
            data = (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method.encode(), path.encode())
                    + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in head)
                    + b"\r\n" + payload)
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                if reused and attempt == 1:
                    self.close()
                    continue
                raise
            response = read_response(self.sock, timeout=10)
            if response.status is None and reused and attempt == 1:
                self.close()  # a keep-alive connection the server had closed
                continue
            closes = (response.headers.get("connection", "").lower() == "close"
                      or response.status == 413 or expect or "content-length" not in
                      response.headers)
            if closes:
                self.close()
            elif len(response.body) != int(response.headers["content-length"]):
                raise AssertionError("extra bytes after the answer: %r" % response.raw[-300:])
            return response
        raise AssertionError("unreachable")


def test_thousands_of_generated_uploads_never_get_a_5xx(spawn, tmp_path):
    port = free_port()
    web = spawn("server", ["server.py", "--port", str(port)],
                process_env(SQLITE_DB_PATH=tmp_path / "photos.db", MAX_UPLOAD_BYTES=FUZZ_LIMIT),
                ready=WEB_READY)
    client = Client(port)
    accepted, must_store, counts = [], [], {}

    @settings(max_examples=2000, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(uploads())
    def send(generated):
        note("%s %r, body %d bytes%s: %r" % (
            generated.path, generated.headers, len(generated.body),
            " chunked by %d" % generated.chunk if generated.chunk else "", generated.body[:500]))
        response = client.request("POST", generated.path, generated.headers, generated.body,
                                  expect=generated.oversized, chunk=generated.chunk)
        note("answer: %r" % response.raw[:800])
        assert response.status is not None, "no answer (is the server alive? %s)" \
            % web.popen.poll()
        assert response.status < 500, response.raw[:800]
        assert not response.interim or not generated.oversized, response.raw[:300]
        counts[response.status] = counts.get(response.status, 0) + 1
        content_type = response.headers.get("content-type", "")
        if generated.oversized:
            assert response.status == 413 and not response.interim, response.raw[:300]
        if generated.path == "/sniff-mime":
            assert response.status in SNIFF_CODES, response.raw[:800]
            body = json.loads(response.body)
            assert set(body) == ({"mime_type"} if response.status == 200
                                 else {"error", "detail"}), body
            return
        assert response.status in API_CODES, response.raw[:800]
        as_json = generated.path == "/api/images" or ("Accept", "application/json") in \
            generated.headers
        if as_json:
            assert content_type == "application/json; charset=UTF-8", response.raw[:800]
            body = json.loads(response.body)
            if response.status == 202:
                assert body["status"] == "queued", body
                accepted.append(body["request_id"])
            else:
                assert set(body) == {"error", "detail"} and body["error"], body
        else:
            assert content_type.startswith("text/html"), response.raw[:800]
            if response.status == 202:
                match = RECEIVED.search(response.body)
                assert match, response.body
                accepted.append(match.group(1).decode())
        if generated.expect_stored:
            assert response.status == 202, response.raw[:800]
            must_store.append(accepted[-1])

    started = time.monotonic()
    send()
    elapsed = time.monotonic() - started
    client.close()
    print("fuzz: %d requests in %.1fs over %d connections; statuses %s; %d accepted, "
          "%d of them must be stored" % (sum(counts.values()), elapsed, client.connections,
                                         dict(sorted(counts.items())), len(accepted),
                                         len(must_store)))

    assert web.popen.poll() is None, web.describe()
    assert fetch(port, "GET", "/healthz")[0] == 200
    code, body = upload(port, make_image("PNG", size=(11, 7), color=(7, 7, 7)),
                        nickname="after-the-fuzz")
    assert code == 202, body
    wait_stored(port, body["request_id"])
    assert counts.get(202, 0) >= 50 and counts.get(400, 0) >= 50, counts

    deadline = time.monotonic() + 60
    pending = set(accepted)
    finals = {}
    while pending and time.monotonic() < deadline:
        for request_id in list(pending):
            status = upload_status(port, request_id)
            if status and status["status"] in ("stored", "failed"):
                finals[request_id] = status
                pending.discard(request_id)
        if pending:
            time.sleep(0.2)
    assert not pending, "%d accepted upload(s) never finished, e.g. %s" % (
        len(pending), upload_status(port, sorted(pending)[0]))
    not_stored = [finals[r] for r in must_store if finals[r]["status"] != "stored"]
    assert not not_stored, not_stored[:3]
    assert web.popen.poll() is None, web.describe()
    log = web.log()
    assert no_traceback(log), log[-6000:]
    assert not re.search(r"tornado\.access: 5\d\d ", log), log[-6000:]
