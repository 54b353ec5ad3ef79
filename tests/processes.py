"""Running the app as OS processes, and talking to it with the standard
library only: the plumbing the tests and the benchmarks (bench/) share.

``Proc`` is one process (``python server.py ...`` or ``python -m consumers.X``)
whose log goes to a file; the ``spawn`` fixture (tests/conftest.py) starts them
and ends them at teardown, a benchmark when it is done.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

from config import environment_names
from tests.helpers import multipart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READY_TIMEOUT = 20   # seconds a process gets to say it is ready
STOP_TIMEOUT = 10    # seconds a process gets to exit after a signal

# Every environment variable config.py (or server.py) reads: removed from the
# inherited environment, so each process sees only the settings its test gives.
CONFIG_ENV = environment_names()

WEB_READY = ("web: listening on",)
RABBIT_READY = ("rabbitmq connected",)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent():
    """In the child: get SIGTERM if its parent dies (Linux), so no server outlives
    the test run or benchmark that started it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def process_env(**settings):
    """os.environ without any app setting, plus ``settings`` (values made str)."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
    env.update(PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")
    env.update({k: str(v) for k, v in settings.items()})
    return env


class Proc:
    """One app process; its stderr (the log) and stdout go to files."""

    def __init__(self, name, args, env, directory):
        self.name = name
        self.args = args
        self.stderr_path = directory / ("%s.stderr" % name)
        self.stdout_path = directory / ("%s.stdout" % name)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          preexec_fn=die_with_parent)

    @property
    def pid(self):
        return self.popen.pid

    def log(self):
        return self.stderr_path.read_text(errors="replace")

    def describe(self):
        return "%s (%s), exit code %s; its log:\n%s" % (
            self.name, " ".join(self.args), self.popen.poll(), self.log()[-6000:])

    def wait_for_log(self, *texts, timeout=READY_TIMEOUT):
        """Wait until every one of ``texts`` is in the log; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(text in log for text in texts):
                return log
            if self.popen.poll() is not None:
                raise AssertionError("%s exited before logging %r: %s"
                                     % (self.name, texts, self.describe()))
            if time.monotonic() > deadline:
                raise AssertionError("%s did not log %r within %ss: %s"
                                     % (self.name, texts, timeout, self.describe()))
            time.sleep(0.05)

    def wait_ready(self, port, timeout=READY_TIMEOUT):
        """Wait until ``GET /readyz`` on ``port`` answers 200 (whatever the log
        level); fail if the process exits first."""
        def ready():
            if self.popen.poll() is not None:
                raise AssertionError("%s exited before it was ready: %s"
                                     % (self.name, self.describe()))
            try:
                return fetch(port, "GET", "/readyz", timeout=2)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout, lambda: "%s not ready: %s" % (self.name, self.describe()))

    def wait(self, timeout=STOP_TIMEOUT):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s still running after %ss: %s"
                                 % (self.name, timeout, self.describe())) from None

    def stop(self, signum=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send ``signum`` and return the exit code."""
        self.popen.send_signal(signum)
        return self.wait(timeout)

    def end(self, timeout=5):
        """Teardown: make sure the process is gone, whatever state it is in
        (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def split_deployment(spawn, env, webs=2):
    """Start ``webs`` web processes, a processor and a notifier, each its own process
    on RabbitMQ (``spawn``: the conftest fixture); return the web processes' ports."""
    ports = [free_port() for _ in range(webs)]
    for n, port in enumerate(ports):
        spawn("web-%d" % n, ["server.py", "--role=web", "--port", str(port)], env,
              ready=WEB_READY + RABBIT_READY)
    spawn("processor", ["-m", "consumers.processor"], env, ready=RABBIT_READY)
    spawn("notifier", ["-m", "consumers.notifier"], env, ready=RABBIT_READY)
    return ports


def wait_until(check, timeout, message, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("%s (not within %ss)" % (message() if callable(message)
                                                          else message, timeout))
        time.sleep(interval)


# -- HTTP, with the standard library only -----------------------------------------

def exchange(conn, method, path, body=None, headers=None):
    """One request on an open ``http.client`` connection: ``(status, headers, body)``."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def fetch(port, method, path, body=None, headers=None, timeout=10):
    """``(status, headers, body)``; goes straight to 127.0.0.1 (no proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return exchange(conn, method, path, body, headers)
    finally:
        conn.close()


def upload(port, data, nickname="alice", filename="photo.png", timeout=10):
    content_type, body = multipart({"nickname": nickname}, {"image_data": (filename, data)})
    status, _headers, body = fetch(port, "POST", "/api/images", body,
                                  {"Content-Type": content_type}, timeout=timeout)
    return status, (json.loads(body) if body else None)


def upload_status(port, request_id):
    status, _headers, body = fetch(port, "GET", "/api/uploads/%s" % request_id)
    return json.loads(body) if status == 200 else None


def wait_stored(port, request_id, timeout=20):
    def finished():
        status = upload_status(port, request_id)
        return status if status and status["status"] in ("stored", "failed") else None
    final = wait_until(finished, timeout, lambda: "upload %s not finished: %s"
                       % (request_id, upload_status(port, request_id)))
    assert final["status"] == "stored", final
    return final


def wait_all_stored(port, request_ids, timeout=30):
    """Poll the status route until every upload is final; return {request_id: status}."""
    final = {}
    deadline = time.monotonic() + timeout
    while len(final) < len(request_ids):
        for request_id in request_ids:
            if request_id not in final:
                status = upload_status(port, request_id)
                if status and status["status"] in ("stored", "failed"):
                    final[request_id] = status
        if len(final) < len(request_ids):
            if time.monotonic() > deadline:
                missing = [r for r in request_ids if r not in final]
                raise AssertionError("%d upload(s) not finished after %ss, e.g. %s: %s"
                                     % (len(missing), timeout, missing[0],
                                        upload_status(port, missing[0])))
            time.sleep(0.1)
    return final


def content(port, image_id):
    status, headers, body = fetch(port, "GET", "/api/images/%d/content" % image_id)
    assert status == 200, body
    return headers, body


def no_traceback(text):
    return "Traceback" not in text
