"""Faults for real: RabbitMQ, PostgreSQL and Redis stopped and started on this
machine, roles as OS processes, uploads counted.

The promise under test: every upload answered 202 ends ``stored`` (or ``failed``
with a reason) exactly once, nothing answered 202 is missing, and an upload the
system could not take is refused with 503 and Retry-After, never half-accepted.
Every test restores each service it stopped, even when it fails.

Each test prints its counts (run with ``-s`` to see them): accepted, stored,
failed, refused, duplicates absorbed, and the seconds to recover.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pika
import psycopg2
import pytest
import redis

from tests.conftest import AMQP_URL, REDIS_URL, free_port, require
from tests.helpers import make_image, multipart
from tests.processes import (RABBIT_READY, WEB_READY, fetch, process_env, upload,
                             upload_status, wait_all_stored, wait_until)

PG_VERSION = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else ""
SERVICES = {
    "rabbitmq": {"port": 5672,
                 "stop": ["rabbitmqctl", "stop_app"],
                 "start": ["rabbitmqctl", "start_app"]},
    "postgres": {"port": 5432,
                 "stop": ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main",
                          "stop", "-m", "fast"],
                 "start": ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main",
                           "start"]},
    "redis": {"port": 6379,
              "stop": ["redis-cli", "-p", "6379", "shutdown", "nosave"],
              "start": ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                        "--port", "6379", "--save", "", "--appendonly", "no",
                        "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]},
}
RESTORE_TIMEOUT = 90


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def answers(name):
    """True when the service takes real work, not just TCP connections."""
    try:
        if name == "rabbitmq":
            pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?socket_timeout=2")).close()
        elif name == "postgres":
            psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                             connect_timeout=2).close()
        else:
            redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
        return True
    except Exception:
        return False


class Services:
    """Stops and starts the machine's services; remembers what it stopped."""

    def __init__(self):
        self.stopped = set()
        self.alarm = False
        self.startup = {}  # seconds from the start command until the service answered

    def run(self, command):
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=120)

    def stop(self, name):
        self.stopped.add(name)
        self.run(SERVICES[name]["stop"])
        wait_until(lambda: not port_open(SERVICES[name]["port"]), 60,
                   "%s still listening after stop" % name)
        return time.monotonic()

    def start(self, name):
        """Start ``name``; return the moment it answers again."""
        if name == "redis":
            os.makedirs("/var/lib/redis", exist_ok=True)
            os.makedirs("/var/log/redis", exist_ok=True)
        issued = time.monotonic()
        self.run(SERVICES[name]["start"])
        wait_until(lambda: answers(name), RESTORE_TIMEOUT, "%s did not come back" % name)
        self.stopped.discard(name)
        answered = time.monotonic()
        self.startup[name] = answered - issued
        return answered

    def memory_alarm(self, on):
        """Set RabbitMQ's memory watermark so low that it blocks every publisher."""
        self.alarm = on
        self.run(["rabbitmqctl", "set_vm_memory_high_watermark", "0.000001" if on else "0.4"])

    def restore(self):
        if self.alarm:
            self.memory_alarm(False)
        for name in list(self.stopped):
            if not answers(name):
                self.start(name)
        self.stopped.clear()


@pytest.fixture
def services():
    for tool in ("rabbitmqctl", "pg_ctlcluster", "redis-server", "redis-cli"):
        require("%s (to stop and start services)" % tool,
                lambda tool=tool: shutil.which(tool) or (_ for _ in ()).throw(
                    RuntimeError("not installed")))
    control = Services()
    yield control
    control.restore()


class Uploader(threading.Thread):
    """Uploads distinct images in a loop and records every answer: (time, status
    code or None for no answer, request id of a 202, Retry-After of a 503)."""

    def __init__(self, port, nickname):
        super().__init__(daemon=True)
        self.port, self.nickname = port, nickname
        self.answers = []
        self.problems = []  # what the thread found wrong; the test checks it (check())
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            n += 1
            data = make_image("PNG", size=(24, 16), color=(n % 256, n // 256 % 256, 77))
            content_type, body = multipart({"nickname": self.nickname},
                                           {"image_data": ("p.png", data)})
            try:
                code, headers, answer = fetch(self.port, "POST", "/api/images", body,
                                              {"Content-Type": content_type})
            except OSError:
                self.answers.append((time.monotonic(), None, None, None))
                continue
            if code == 503 and not headers.get("Retry-After"):
                self.problems.append("a 503 without Retry-After: %r" % answer)
            if code not in (202, 503):
                self.problems.append("answered %s: %r" % (code, answer))
            request_id = json.loads(answer)["request_id"] if code == 202 else None
            self.answers.append((time.monotonic(), code, request_id,
                                 headers.get("Retry-After")))
            time.sleep(0.02)

    def begin(self):
        self.start()
        return self

    def accepted(self):
        return [request_id for _t, code, request_id, _r in self.answers if code == 202]

    def count(self, code):
        return sum(1 for _t, c, _r, _x in self.answers if c == code)

    def first_after(self, moment, code):
        return next((t for t, c, _r, _x in self.answers if t > moment and c == code), None)

    def count_after(self, moment, code):
        return sum(1 for t, c, _r, _x in self.answers if t > moment and c == code)

    def stop(self):
        self.halt.set()
        self.join(30)

    def check(self):
        """Every answer was a 202 or a 503 with Retry-After, and every upload got one."""
        assert self.problems == [], self.problems
        assert self.count(None) == 0, "%d upload(s) got no answer" % self.count(None)


def env_for(postgres_url, amqp_prefix, redis_prefix, **extra):
    return process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                       REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix, CONFIRM_TIMEOUT=3,
                       CACHE_TIMEOUT=0.3, RETRY_DELAYS="0.5,1,2,4", MAX_ATTEMPTS=10, **extra)


def start_roles(spawn, env, port, notifier=False):
    web = spawn("web", ["server.py", "--role=web", "--port", str(port)], env,
                ready=WEB_READY + RABBIT_READY)
    processor = spawn("processor", ["-m", "consumers.processor"], env, ready=RABBIT_READY)
    roles = [web, processor]
    if notifier:
        roles.append(spawn("notifier", ["-m", "consumers.notifier"], env, ready=RABBIT_READY))
    return roles


def stored_image_id(port, request_id, timeout=30):
    """Wait until the upload is stored; its image id."""
    return wait_until(lambda: (upload_status(port, request_id) or {}).get("image_id"), timeout,
                      "upload %s not stored" % request_id)


def query(postgres_url, sql):
    conn = psycopg2.connect(postgres_url, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        conn.close()


def check_every_accepted_upload_ended_once(port, postgres_url, uploader, timeout=90):
    """The promise: every upload answered 202 or 503; each 202 final, stored (the
    request id is unique in the table), and nothing else stored; no 202 marked refused."""
    uploader.check()
    accepted = uploader.accepted()
    assert len(accepted) == len(set(accepted))
    final = wait_all_stored(port, accepted, timeout=timeout)
    stored = [r for r, status in final.items() if status["status"] == "stored"]
    failed = {r: status["error"] for r, status in final.items() if status["status"] == "failed"}
    rows = {r for (r,) in query(postgres_url, "SELECT request_id FROM images")}
    assert rows == set(stored), rows ^ set(stored)
    refused = {r for (r,) in query(postgres_url,
                                   "SELECT request_id FROM uploads WHERE status = 'refused'")}
    assert not refused & set(accepted), "answered 202 but marked refused: %s" % (
        refused & set(accepted))
    assert all(reason for reason in failed.values()), failed
    return stored, failed


def absorbed(*procs):
    """Redeliveries that found their upload already stored (so stored nothing)."""
    return sum(proc.log().count("was stored before (redelivery)") for proc in procs)


def report(name, uploader, stored, failed, recoveries, duplicates, services=None):
    """One line of figures; recoveries count from the moment the service answered."""
    startup = ", ".join("%s %.1f s" % item for item in (services.startup if services
                                                         else {}).items())
    print("\n[%s] accepted %d, stored %d, failed %d, refused %d (503), no answer %d, "
          "duplicates absorbed %d; back to normal after the service answered: %s%s" % (
              name, len(uploader.accepted()), len(stored), len(failed), uploader.count(503),
              uploader.count(None), duplicates,
              ", ".join("%s %.1f s" % item for item in recoveries.items()),
              "; service start-up: " + startup if startup else ""))


def wait_for_accepted(uploader, count, timeout=60):
    target = len(uploader.accepted()) + count
    wait_until(lambda: len(uploader.accepted()) >= target, timeout,
               "uploads are not being accepted")


# -- RabbitMQ ------------------------------------------------------------------------

def test_rabbitmq_restart_refuses_then_recovers_and_loses_nothing(
        postgres_url, amqp_prefix, redis_prefix, services, spawn):
    port = free_port()
    web, processor = start_roles(spawn, env_for(postgres_url, amqp_prefix, redis_prefix), port)
    uploader = Uploader(port, "rabbit").begin()
    try:
        wait_for_accepted(uploader, 15)
        image_id = stored_image_id(port, uploader.accepted()[0])

        down = services.stop("rabbitmq")
        wait_until(lambda: uploader.first_after(down, 503), 20, "no 503 while RabbitMQ is down")
        code, headers, _ = fetch(port, "GET", "/api/images/%d/content" % image_id)
        assert code == 200, "reads must keep working without the broker"
        code, headers, body = fetch(port, "GET", "/readyz")
        assert code == 503 and b"broker" in body and headers.get("Retry-After")

        up = services.start("rabbitmq")
        back = wait_until(lambda: uploader.first_after(up, 202), 60, "no 202 after RabbitMQ came back")
        wait_for_accepted(uploader, 15)
    finally:
        uploader.stop()
    stored, failed = check_every_accepted_upload_ended_once(port, postgres_url, uploader)
    assert failed == {}
    report("rabbitmq restart", uploader, stored, failed, {"uploads": back - up},
           absorbed(processor), services)


def test_a_blocked_broker_answers_503_instead_of_hanging(postgres_url, amqp_prefix,
                                                         redis_prefix, services, spawn):
    port = free_port()
    start_roles(spawn, env_for(postgres_url, amqp_prefix, redis_prefix), port)
    uploader = Uploader(port, "blocked").begin()
    try:
        wait_for_accepted(uploader, 5)
        blocked = time.monotonic()
        services.memory_alarm(True)
        # Refused once the confirm timeout (3 s) runs out, not left hanging: an upload
        # left without an answer would show in uploader.check() (its socket gives up at 10 s).
        refused_at = wait_until(lambda: uploader.first_after(blocked, 503), 30,
                                "no 503 while the broker blocks publishers")
        services.memory_alarm(False)
        unblocked = time.monotonic()
        back = wait_until(lambda: uploader.first_after(unblocked, 202), 60, "no 202 after unblock")
        wait_for_accepted(uploader, 5)
    finally:
        uploader.stop()
    stored, failed = check_every_accepted_upload_ended_once(port, postgres_url, uploader)
    assert failed == {}
    report("memory alarm", uploader, stored, failed,
           {"refused after": refused_at - blocked, "uploads": back - unblocked}, 0)


# -- PostgreSQL -------------------------------------------------------------------------

def test_postgres_restart_uploads_go_on_reads_fail_fast_and_nothing_is_lost(
        postgres_url, amqp_prefix, redis_prefix, services, spawn):
    port = free_port()
    web, processor = start_roles(spawn, env_for(postgres_url, amqp_prefix, redis_prefix,
                                                 CACHE="none"), port)
    uploader = Uploader(port, "postgres").begin()
    try:
        wait_for_accepted(uploader, 15)
        image_id = stored_image_id(port, uploader.accepted()[0])
        down = services.stop("postgres")
        # Accepting needs only the broker: uploads go on being accepted, and wait in
        # RabbitMQ until the processor can store them.
        wait_until(lambda: uploader.count_after(down, 202) >= 10, 30,
                   "uploads are not accepted while PostgreSQL is down")
        # Reads fail with a 503 instead of hanging (fetch's socket would give up at 10 s).
        code, headers, body = fetch(port, "GET", "/api/images/%d" % image_id)
        assert code == 503 and headers.get("Retry-After"), body
        code, _headers, body = fetch(port, "GET", "/readyz")
        assert code == 503 and b"database" in body

        up = services.start("postgres")
        reads_back = wait_until(
            lambda: fetch(port, "GET", "/api/images/%d" % image_id)[0] == 200 and time.monotonic(),
            30, "reads did not recover")
        wait_for_accepted(uploader, 15)
    finally:
        uploader.stop()
    stored, failed = check_every_accepted_upload_ended_once(port, postgres_url, uploader)
    assert failed == {}
    assert uploader.count(503) == 0  # the broker took every upload all along
    report("postgres restart", uploader, stored, failed, {"reads": reads_back - up},
           absorbed(processor), services)


# -- Redis ------------------------------------------------------------------------------

def test_redis_stopped_reads_come_from_the_database_and_it_is_used_again(
        postgres_url, amqp_prefix, redis_prefix, services, spawn):
    port = free_port()
    # No image fits the web process's in-process tier (CACHE_MAX_BYTES=1), so every read
    # asks Redis (tests/test_cache_tier.py has the tier during an outage).
    start_roles(spawn, env_for(postgres_url, amqp_prefix, redis_prefix, CACHE_MAX_BYTES=1),
                port)
    data = make_image("PNG", size=(50, 40), color=(3, 6, 9))
    code, body = upload(port, data, nickname="cached")
    assert code == 202
    image_id = stored_image_id(port, body["request_id"])
    path = "/api/images/%d/content" % image_id
    key = "%simage:%d" % (redis_prefix, image_id)
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    assert fetch(port, "GET", path)[2] == data
    assert client.exists(key)

    services.stop("redis")
    for _ in range(5):  # from the database, without waiting on Redis (fetch gives up at 10 s)
        code, _headers, body = fetch(port, "GET", path)
        assert (code, body) == (200, data)
    code, _headers, ready = fetch(port, "GET", "/readyz")
    assert code == 200 and b"cache" in ready

    up = services.start("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    assert not client.exists(key)  # Redis keeps nothing on disk here
    back = wait_until(lambda: fetch(port, "GET", path)[2] == data and client.exists(key)
                      and time.monotonic(), 30, "Redis not used again after it came back")
    print("\n[redis stop] reads during the outage: 5 of 5 answered 200 from the database; "
          "cache used again %.1f s after Redis came back" % (back - up))


# -- everything at once ---------------------------------------------------------------------

def test_uploads_survive_broker_database_cache_and_processor_faults(
        postgres_url, amqp_prefix, redis_prefix, services, spawn):
    """The issue's scenario: while uploads stream in, restart RabbitMQ, restart
    PostgreSQL, stop Redis, and kill the processor; every 202 ends stored once."""
    port = free_port()
    env = env_for(postgres_url, amqp_prefix, redis_prefix)
    web, processor, notifier = start_roles(spawn, env, port, notifier=True)
    processors = [processor]
    uploader = Uploader(port, "chaos").begin()
    recoveries = {}
    try:
        wait_for_accepted(uploader, 30)
        down = services.stop("rabbitmq")
        wait_until(lambda: uploader.first_after(down, 503), 20, "no 503 while RabbitMQ is down")
        up = services.start("rabbitmq")
        recoveries["rabbitmq"] = wait_until(lambda: uploader.first_after(up, 202), 60,
                                            "no 202 after RabbitMQ") - up
        wait_for_accepted(uploader, 30)

        down = services.stop("postgres")
        wait_until(lambda: uploader.count_after(down, 202) >= 10, 30,
                   "uploads are not accepted while PostgreSQL is down")
        services.start("postgres")
        wait_for_accepted(uploader, 30)

        services.stop("redis")
        wait_for_accepted(uploader, 30)
        services.start("redis")

        processors[0].stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for_accepted(uploader, 20)  # RabbitMQ keeps them while no processor runs
        processors.append(spawn("processor-2", ["-m", "consumers.processor"], env,
                                ready=RABBIT_READY))
        recoveries["processor"] = time.monotonic() - killed
        wait_for_accepted(uploader, 30)
    finally:
        uploader.stop()
    stored, failed = check_every_accepted_upload_ended_once(port, postgres_url, uploader,
                                                            timeout=120)
    assert failed == {}
    assert len(uploader.accepted()) >= 150
    report("all faults", uploader, stored, failed, recoveries, absorbed(*processors), services)
