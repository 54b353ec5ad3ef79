"""The app as real OS processes: ``python server.py``, ``python -m consumers.processor``
and ``python -m consumers.notifier``, started with an environment built for each test,
driven over HTTP, stopped with real signals.

Each process writes its stdout and stderr (the log) to files in the test's tmp_path;
``spawn`` (tests/conftest.py) starts one, waits until its log says it is ready, and
at teardown ends every process it started that is still running.
"""

import http.client
import json
import os
import signal
import socket
import urllib.parse

import psycopg2
import pytest
import redis

from tests.conftest import AMQP_URL, REDIS_URL, ROOT, free_port
from tests.gated import Gate
from tests.helpers import make_image, multipart
from tests.processes import (RABBIT_READY, WEB_READY, content, fetch, no_traceback,
                             process_env, upload, wait_all_stored, wait_stored, wait_until)

# -- 1. zero configuration ------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_embedded_defaults_serve_an_upload_and_stop_cleanly(spawn, tmp_path, signum):
    repo_db = os.path.join(ROOT, "data", "photo-app.db")
    repo_db_before = os.stat(repo_db).st_mtime_ns if os.path.exists(repo_db) else None
    db_path = tmp_path / "db" / "photos.db"
    port = free_port()
    web = spawn("server", ["server.py", "--port", str(port)],
                process_env(SQLITE_DB_PATH=db_path), ready=WEB_READY)

    log = web.log()
    for line in ("database: sqlite at %s" % db_path, "cache: memory", "broker: in-process"):
        assert log.count(line) == 1, "expected one %r line:\n%s" % (line, log)
    for backend in ("database: ", "cache: ", "broker: "):
        assert log.count(backend) == 1, "expected one %r line:\n%s" % (backend, log)
    assert "roles: web, processor, notifier" in log

    data = make_image("PNG", size=(40, 30), color=(9, 99, 199))
    code, accepted = upload(port, data, nickname="zero-config")
    assert code == 202, accepted
    stored = wait_stored(port, accepted["request_id"])
    headers, body = content(port, stored["image_id"])
    assert body == data
    assert headers["Content-Type"] == "image/png"
    assert db_path.exists()

    assert web.stop(signum, timeout=5) == 0, web.describe()
    log = web.log()
    assert "%s: shutting down" % signal.Signals(signum).name in log
    assert log.rstrip().endswith("stopped"), log
    assert no_traceback(log), log
    repo_db_after = os.stat(repo_db).st_mtime_ns if os.path.exists(repo_db) else None
    assert repo_db_after == repo_db_before, "the repository's data/ database was touched"


# -- 2. configuration errors ------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["server.py", "--role=web"], ["role web needs a real RabbitMQ", "AMQP_URL"]),
    (["server.py", "--role=web,processor"], ["needs a real RabbitMQ", "AMQP_URL"]),
    (["-m", "consumers.processor"], ["role processor needs a real RabbitMQ", "AMQP_URL"]),
    (["-m", "consumers.notifier"], ["role notifier needs a real RabbitMQ", "AMQP_URL"]),
    (["server.py", "--role=bogus"], ["--role takes all, web, processor, notifier", "bogus"]),
    (["server.py", "--role=web,bogus"], ["--role takes", "bogus"]),
], ids=["web", "web+processor", "processor-module", "notifier-module", "bogus", "web+bogus"])
def test_a_role_that_cannot_work_is_refused_at_start(spawn, tmp_path, args, expected):
    proc = spawn("server", args, process_env(SQLITE_DB_PATH=tmp_path / "unused.db"))
    assert proc.wait(timeout=10) == 2, proc.describe()
    stderr = proc.log()
    assert stderr.startswith("photo-app: configuration error:"), stderr
    for text in expected:
        assert text in stderr, stderr
    assert no_traceback(stderr), stderr
    assert stderr.count("\n") == 1, "one line, not a log: %r" % stderr
    assert not (tmp_path / "unused.db").exists(), "nothing should start on a bad configuration"


# -- 3. the split deployment --------------------------------------------------------------

def legacy_database_env(url):
    """DB_TYPE + PG* names for a postgresql:// URL."""
    parts = urllib.parse.urlsplit(url)
    env = {"DB_TYPE": "postgres", "PGHOST": parts.hostname or "127.0.0.1",
           "PGPORT": parts.port or 5432, "PGDATABASE": parts.path.lstrip("/")}
    if parts.username:
        env["PGUSER"] = urllib.parse.unquote(parts.username)
    if parts.password:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
    return env


def legacy_amqp_env(url):
    """RABBITMQ_* names for an amqp:// URL on the default vhost (None for another vhost)."""
    parts = urllib.parse.urlsplit(url)
    if urllib.parse.unquote(parts.path[1:] or "/") != "/":
        return None
    return {"RABBITMQ_HOST": parts.hostname, "RABBITMQ_PORT": parts.port or 5672,
            "RABBITMQ_USER": urllib.parse.unquote(parts.username or "guest"),
            "RABBITMQ_PASSWORD": urllib.parse.unquote(parts.password or "guest")}


def legacy_redis_env(url):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or parts.username or parts.password:
        return None
    return {"REDIS_HOST": parts.hostname, "REDIS_PORT": parts.port or 6379,
            "REDIS_DB": parts.path.lstrip("/") or "0"}


def test_split_roles_in_three_processes(postgres_url, amqp_prefix, redis_prefix, spawn):
    port = free_port()
    web = spawn("web", ["server.py", "--role=web", "--port", str(port)],
                process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                            REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix),
                ready=WEB_READY + RABBIT_READY)

    # The processor reads the seed's names (DB_TYPE, PG*, RABBITMQ_*), which config.py
    # folds into the URL forms; the notifier reads the URLs, and REDIS_HOST/PORT/DB.
    amqp_legacy = legacy_amqp_env(AMQP_URL)
    processor_env = dict(legacy_database_env(postgres_url), AMQP_PREFIX=amqp_prefix,
                         REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix)
    processor_env.update(amqp_legacy or {"AMQP_URL": AMQP_URL})
    processor = spawn("processor", ["-m", "consumers.processor"], process_env(**processor_env),
                      ready=RABBIT_READY)
    notifier_env = dict(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                        CACHE_PREFIX=redis_prefix)
    notifier_env.update(legacy_redis_env(REDIS_URL) or {"REDIS_URL": REDIS_URL})
    notifier = spawn("notifier", ["-m", "consumers.notifier"], process_env(**notifier_env),
                     ready=RABBIT_READY)

    database_name = urllib.parse.urlsplit(postgres_url).path.lstrip("/")
    for proc, roles in ((web, "web"), (processor, "processor"), (notifier, "notifier")):
        log = proc.log()
        assert "roles: %s\n" % roles in log, log
        assert "database: postgres at postgresql://" in log and "/%s\n" % database_name in log, log
        assert "broker: rabbitmq at amqp://" in log and repr(amqp_prefix) in log, log
        assert "cache: redis at redis://" in log and repr(redis_prefix) in log, log
    # The seed's names really were what the processor went by.
    assert "DATABASE_URL" not in processor_env
    assert ("database: postgres at postgresql://%s@%s:%s/%s\n" % (
        processor_env.get("PGUSER", "postgres") + (":***" if "PGPASSWORD" in processor_env
                                                    else ""), processor_env["PGHOST"],
        processor_env["PGPORT"], processor_env["PGDATABASE"])) in processor.log()
    if amqp_legacy:
        assert ("broker: rabbitmq at amqp://%s:***@%s:%s/%%2F (name prefix %r)" % (
            amqp_legacy["RABBITMQ_USER"], amqp_legacy["RABBITMQ_HOST"],
            amqp_legacy["RABBITMQ_PORT"], amqp_prefix)) in processor.log()
    assert "Processor consuming %simage-processing-queue" % amqp_prefix in processor.log()
    assert "Notifier consuming %sphoto-app.notifications" % amqp_prefix in notifier.log()
    assert "consuming" not in web.log()

    data = make_image("JPEG", size=(50, 40), color=(10, 200, 30))
    code, accepted = upload(port, data, nickname="split", filename="split.jpg")
    assert code == 202, accepted
    request_id = accepted["request_id"]
    stored = wait_stored(port, request_id)
    image_id = stored["image_id"]
    processor.wait_for_log("upload %s stored as image %s" % (request_id, image_id))
    assert "[%s]: 202 POST /api/images" % request_id in web.log()  # its access line

    cache = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    try:
        key = "%simage:%d" % (redis_prefix, image_id)
        assert not cache.exists(key)
        _headers, first = content(port, image_id)
        assert first == data
        assert cache.exists(key), "the first read should have filled the cache"
        assert cache.hget(key, "data") == data
        assert cache.hget(key, "mime_type") == b"image/jpeg"
        headers, second = content(port, image_id)  # from the web process's memory now
        assert second == data
        assert headers["Content-Type"] == "image/jpeg"
    finally:
        cache.close()

    line = notifier.wait_for_log('"request_id": "%s"' % request_id)
    notification = [text for text in line.splitlines()
                    if "notification " in text and request_id in text]
    assert len(notification) == 1, line
    event = json.loads(notification[0].split("notification ", 1)[1])
    assert event["event"] == "image.uploaded"
    assert (event["image_id"], event["nickname"], event["size"]) == (image_id, "split", len(data))

    for proc in (web, processor, notifier):
        assert proc.stop(signal.SIGTERM) == 0, proc.describe()
        log = proc.log()
        assert "SIGTERM: shutting down" in log and log.rstrip().endswith("stopped"), log
        assert no_traceback(log), log


# -- 4. a processor stopped in the middle of a stream of uploads -------------------------

def image(n):
    """A small image whose colour differs for each n, so none is a duplicate of another."""
    return make_image("PNG", size=(32, 32), color=(1, 2 + n // 256, n % 256))


def stored_rows(postgres_url):
    conn = psycopg2.connect(postgres_url, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT request_id, count(*) FROM images GROUP BY request_id")
            images = dict(cursor.fetchall())
            cursor.execute("SELECT request_id, status FROM uploads")
            uploads = dict(cursor.fetchall())
        return images, uploads
    finally:
        conn.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_processor_stopped_mid_stream_loses_and_duplicates_nothing(postgres_url, amqp_prefix,
                                                                   spawn, signum):
    port = free_port()
    services = dict(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                    CACHE="none")
    web = spawn("web", ["server.py", "--role=web", "--port", str(port)], process_env(**services),
                ready=WEB_READY + RABBIT_READY)
    # The first processor's image work waits at a gate: two uploads pass, the third
    # is held in the middle of processing when the signal comes, and the rest of its
    # prefetch window is delivered but unacked.
    gate = Gate(web.stderr_path.parent / "gate")
    gate.allow(2)
    first = spawn("processor-1", gate.command("--role=processor"),
                  process_env(IMAGE_WORKERS=1, PREFETCH=4, **services), ready=RABBIT_READY)

    accepted = []

    def send(count):
        for _ in range(count):
            code, body = upload(port, image(len(accepted)), nickname="stream")
            assert code == 202, (code, body)
            accepted.append(body["request_id"])

    send(10)
    gate.wait_entered(3)
    wait_until(lambda: first.log().count("stored as image") == 2, 20,
               lambda: "two uploads not stored: %s" % first.describe())
    images, uploads = stored_rows(postgres_url)
    assert len(images) == 2
    held = {r for r, status in uploads.items() if status == "processing"}
    assert held, "the upload held at the gate is not in progress: %s" % uploads

    if signum == signal.SIGTERM:
        first.popen.send_signal(signum)
        # Once the consumer is cancelled nothing new is delivered; what was (a full
        # prefetch window) may finish now, within SHUTDOWN_TIMEOUT.
        first.wait_for_log("SIGTERM: shutting down", "message(s) in flight")
        gate.open()
        assert first.wait() == 0, first.describe()
    else:
        assert first.stop(signum) == -signal.SIGKILL

    images, uploads = stored_rows(postgres_url)
    in_flight = sorted(r for r, status in uploads.items() if status == "processing")
    if signum == signal.SIGTERM:
        # Graceful: what was in flight finished (stored and acked), nothing left half done.
        assert in_flight == [], (in_flight, first.log())
        assert held <= set(images)
        log = first.log()
        assert log.rstrip().endswith("stopped"), log
        assert no_traceback(log), log
    else:
        # Killed: what it was working on is left "processing" until redelivered.
        assert held <= set(in_flight), uploads
        assert not held & set(images)
    assert len(images) < len(accepted)

    # With no processor, RabbitMQ holds the uploads: the web tier still answers 202.
    send(15)
    code, _headers, body = fetch(port, "GET", "/readyz")
    assert code == 200, body

    second = spawn("processor-2", ["-m", "consumers.processor"], process_env(**services),
                   ready=RABBIT_READY)
    send(15)
    assert len(accepted) == len(set(accepted)) == 40

    final = wait_all_stored(port, accepted, timeout=40)
    assert {r: s["status"] for r, s in final.items()} == dict.fromkeys(accepted, "stored")
    assert len({s["image_id"] for s in final.values()}) == 40

    images, uploads = stored_rows(postgres_url)
    assert set(images) == set(accepted)
    assert all(count == 1 for count in images.values()), images
    assert uploads == dict.fromkeys(accepted, "stored")
    for request_id in in_flight:
        assert request_id in second.log(), "the redelivered %s went elsewhere" % request_id

    for proc in (second, web):
        assert proc.stop(signal.SIGTERM) == 0, proc.describe()
        assert no_traceback(proc.log()), proc.log()
    assert no_traceback(first.log())


# -- 5. the database is unreachable at start ----------------------------------------------

@pytest.fixture
def rabbitmq_settings(request):
    return dict(AMQP_URL=AMQP_URL, AMQP_PREFIX=request.getfixturevalue("amqp_prefix"))


@pytest.mark.parametrize("args,broker", [
    (["server.py"], "embedded"),
    (["-m", "consumers.processor"], "rabbitmq"),
    (["server.py", "--role=web"], "rabbitmq"),
], ids=["all-roles", "processor", "web"])
def test_an_unreachable_database_at_start_is_one_clear_error(spawn, request, args, broker):
    closed = free_port()
    url = "postgresql://postgres@127.0.0.1:%d/photo_app" % closed
    settings = dict(DATABASE_URL=url)
    if broker == "rabbitmq":
        settings.update(request.getfixturevalue("rabbitmq_settings"))
    proc = spawn("server", args + ["--port", str(free_port())], process_env(**settings))
    try:
        code = proc.wait(timeout=30)
    finally:
        proc.end()  # before the RabbitMQ fixture, set up after spawn, is torn down
    log = proc.log()
    assert code > 0, proc.describe()  # an error exit, not killed by a signal
    errors = [line for line in log.splitlines() if "the database is unavailable" in line]
    assert len(errors) == 1, log
    assert "ERROR" in errors[0] and "127.0.0.1" in errors[0] and str(closed) in errors[0], log
    assert no_traceback(log), log
    assert "web: listening on" not in log and "rabbitmq connected" not in log, log


# -- 6. SIGTERM while a request is in progress ----------------------------------------------

def send_request_head(port, path, content_type, length):
    """Send a request's head and return once the server has read it and started the
    request: it asks for ``100-continue``, which the server answers only then."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                 b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                 % (path.encode(), content_type.encode(), length))
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(1)
        assert chunk, "the connection closed before 100 Continue: %r" % interim
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return sock


def read_response(sock):
    """``(status, body)`` of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before an answer: %r" % data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), body


def test_sigterm_lets_an_upload_in_progress_finish(postgres_url, amqp_prefix, spawn):
    """Shutting the web tier down stops taking connections but answers the requests
    already in progress: an upload whose body is still arriving gets its 202, and it
    is stored.  Idle keep-alive connections do not hold the shutdown up."""
    port = free_port()
    services = dict(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                    CACHE="none")
    web = spawn("web", ["server.py", "--role=web", "--port", str(port)],
                process_env(SHUTDOWN_TIMEOUT=10, **services), ready=WEB_READY + RABBIT_READY)
    processor = spawn("processor", ["-m", "consumers.processor"], process_env(**services),
                      ready=RABBIT_READY)

    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # keep-alive, then idle
    idle.request("GET", "/healthz")
    response = idle.getresponse()
    response.read()
    assert response.status == 200

    data = make_image("PNG", size=(20, 20), color=(7, 8, 9))
    content_type, body = multipart({"nickname": "late"}, {"image_data": ("late.png", data)})
    sock = send_request_head(port, "/api/images", content_type, len(body))
    try:
        sock.sendall(body[:len(body) // 2])
        web.popen.send_signal(signal.SIGTERM)
        web.wait_for_log("SIGTERM: shutting down")
        with pytest.raises(OSError):  # no new connections once shutting down
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sock.sendall(body[len(body) // 2:])
        status, answer = read_response(sock)
    finally:
        sock.close()
    assert status == 202, answer
    request_id = json.loads(answer)["request_id"]
    # The idle keep-alive connection was closed by the server, not left to linger.
    assert web.wait() == 0, web.describe()
    assert idle.sock.recv(1) == b"", "the idle connection was left open"
    idle.close()
    processor.wait_for_log("upload %s stored as image" % request_id)
    _images, uploads = stored_rows(postgres_url)
    assert uploads == {request_id: "stored"}
    assert no_traceback(web.log()), web.log()
    assert processor.stop() == 0, processor.describe()


def test_sigterm_does_not_wait_for_ever_on_a_stalled_upload(spawn, tmp_path):
    port = free_port()
    web = spawn("server", ["server.py", "--port", str(port)],
                process_env(SQLITE_DB_PATH=tmp_path / "photos.db", SHUTDOWN_TIMEOUT=1),
                ready=WEB_READY)
    sock = send_request_head(port, "/api/images", "multipart/form-data; boundary=x", 10_000)
    try:
        sock.sendall(b"--x\r\n")
        # SHUTDOWN_TIMEOUT=1: the stalled upload is cut off then, well within stop()'s limit.
        assert web.stop(signal.SIGTERM) == 0, web.describe()
    finally:
        sock.close()
    log = web.log()
    assert "web: 1 request(s) still in progress; closing them" in log, log
    assert log.rstrip().endswith("stopped") and no_traceback(log), log
