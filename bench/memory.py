"""Memory of the web role while many large uploads are in flight at once.

    .venv/bin/python bench/memory.py [--clients 32] [--size-mb 14.2] [--report FILE]

``server.py --role=web`` on RabbitMQ + PostgreSQL (a database and an AMQP prefix of
its own, removed at the end), no processor.  ``--clients`` clients (threads of this
process, raw sockets) upload one ``--size-mb`` JPEG each (made once with
bench/upload_throughput.py's ``make_jpeg`` and kept in
$TMPDIR/photo-app-bench-memory/), all at once: each sends its request headers and,
unless answered at once (a 503 comes before the body is read), its body.  Each
phase has a server of its own; "in flight" is the admitted bodies' Content-Length
(what MAX_INFLIGHT_UPLOAD_BYTES counts); the peak is the web process's VmHWM.

1. All at once, every upload admitted (MAX_INFLIGHT_UPLOAD_BYTES above what the
   clients send), each body sent at its own pace: peak RSS / (1.3 x in flight +
   150 MB), target <= 1.0, and the idle RSS (after one small upload).
2. The same, but each client holds back its body's last byte until every body is
   in the server (its RSS stops growing): all are then parsed and published
   together, the worst case.
3. MAX_INFLIGHT_UPLOAD_BYTES at its default (256 MiB): the uploads past it must
   be answered 503 with Retry-After before their bodies are sent; prints the
   answers counted (202, 503 with and without Retry-After) and the memory ratio.

MB here is 10^6 bytes.  Figures only: nothing here asserts.
"""

import argparse
import http.client
import os
import pathlib
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

from common import report
from tests.helpers import multipart
from tests.processes import Proc, free_port, process_env
from upload_throughput import amqp_channel, delete_amqp_objects, make_jpeg, pg_admin

from config import Config  # noqa: E402

MB = 1000 * 1000
ADMISSION_WAIT = 3.0  # seconds a client waits for an early answer (503) after its headers


def proc_status(pid, field):
    """A size field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def cached_jpeg(size):
    """A photo-like JPEG of about ``size`` bytes, made once and kept for later runs."""
    folder = os.path.join(tempfile.gettempdir(), "photo-app-bench-memory")
    path = os.path.join(folder, "photo-%d.jpg" % size)
    if not os.path.exists(path):
        data = make_jpeg(size)[0]
        os.makedirs(folder, exist_ok=True)
        with open(path + ".%s.partial" % uuid.uuid4().hex[:6], "wb") as out:
            out.write(data)
        os.replace(out.name, path)
    with open(path, "rb") as f:
        return f.read()


class Client(threading.Thread):
    """One upload, in steps the main thread lines up with the other clients'."""

    def __init__(self, port, head, body, headers_sent, go):
        """``go``: an Event to wait for before the body's last byte, or None."""
        super().__init__(daemon=True)
        self.port, self.head, self.body = port, head, body
        self.headers_sent, self.go = headers_sent, go
        self.decided = threading.Event()    # admitted, or answered before its body
        self.admitted = threading.Event()   # the body is being sent
        self.body_sent = threading.Event()  # all but its last byte
        self.done = threading.Event()
        self.status = self.retry_after = self.error = None

    def run(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=120) as sock:
                sock.sendall(self.head)
                self.headers_sent.wait()
                early, _, _ = select.select([sock], [], [], ADMISSION_WAIT)
                if not early:
                    self.admitted.set()
                self.decided.set()
                if not early and self.go is None:
                    sock.sendall(self.body)
                elif not early:
                    sock.sendall(self.body[:-1])
                    self.body_sent.set()
                    self.go.wait()
                    sock.sendall(self.body[-1:])
                response = http.client.HTTPResponse(sock)
                response.begin()
                response.read()
                self.status, self.retry_after = response.status, response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            self.error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            self.decided.set()
            self.body_sent.set()
            self.done.set()


def wait_rss_steady(pid, timeout=30, interval=0.1, steady=0.5):
    """Wait until the process's RSS has not grown by more than 1 MB for ``steady`` s."""
    deadline = time.monotonic() + timeout
    last, since = proc_status(pid, "VmRSS"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(interval)
        rss = proc_status(pid, "VmRSS")
        if rss > last + MB:
            last, since = rss, time.monotonic()
        elif time.monotonic() - since >= steady:
            return


def run_phase(name, env, data, args, tmp, aligned):
    """One server, ``args.clients`` uploads at once; ``aligned``: their last bytes
    held until every admitted body is in the server."""
    port = free_port()
    proc = Proc(name, ["server.py", "--role=web", "--port", str(port), "--address",
                       "127.0.0.1"], env, tmp)
    try:
        proc.wait_ready(port, timeout=60)
        small_type, small = multipart({"nickname": "warm-up"},
                                      {"image_data": ("warm.jpg", data[:2] + b"\xff" * 100)})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/images", small, {"Content-Type": small_type})
        conn.getresponse().read()
        conn.close()
        idle = proc_status(proc.popen.pid, "VmRSS")

        content_type, body = multipart({"nickname": "memory"},
                                       {"image_data": ("big.jpg", data)})
        head = ("POST /api/images HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (port, content_type, len(body))).encode("ascii")
        headers_sent, go = threading.Event(), threading.Event() if aligned else None
        clients = [Client(port, head, body, headers_sent, go) for _ in range(args.clients)]
        for client in clients:
            client.start()
        time.sleep(0.5)  # every client connected and sent its headers
        headers_sent.set()
        for client in clients:
            client.decided.wait(ADMISSION_WAIT + 60)
        admitted = [c for c in clients if c.admitted.is_set()]
        held = None
        if aligned:
            for client in admitted:
                client.body_sent.wait(120)
            wait_rss_steady(proc.popen.pid)
            held = proc_status(proc.popen.pid, "VmRSS")
            go.set()
        for client in clients:
            client.done.wait(180)
        peak = proc_status(proc.popen.pid, "VmHWM")
        in_flight = len(admitted) * len(body)
        return dict(idle=idle, held=held, peak=peak, in_flight=in_flight, body=len(body),
                    admitted=len(admitted), clients=clients)
    finally:
        proc.end(timeout=40)


def summarize(label, result, limit):
    clients = result["clients"]
    counts = {}
    for client in clients:
        key = (client.error.split(":")[0] if client.error else
               "%s%s" % (client.status, " + Retry-After" if client.retry_after else ""))
        counts[key] = counts.get(key, 0) + 1
    bound = 1.3 * result["in_flight"] + 150 * MB
    print()
    print(label)
    print("  MAX_INFLIGHT_UPLOAD_BYTES %d (%.0f MB): room for %d of the %d bodies of %.1f MB"
          % (limit, limit / MB, min(len(clients), limit // result["body"]), len(clients),
             result["body"] / MB))
    print("  answers:     %s" % ", ".join("%s: %d" % kv for kv in sorted(counts.items())))
    print("  in flight:   %d bodies at once, %.0f MB" % (result["admitted"],
                                                          result["in_flight"] / MB))
    print("  RSS:         idle %.0f MB; %speak (VmHWM) %.0f MB"
          % (result["idle"] / MB, "" if result["held"] is None else
             "every body in, none answered: %.0f MB; " % (result["held"] / MB),
             result["peak"] / MB))
    print("  peak RSS / (1.3 x in flight + 150 MB) = %.0f / %.0f = %.2f (target <= 1.0)"
          % (result["peak"] / MB, bound / MB, result["peak"] / bound))
    return counts, result["peak"] / bound


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size-mb", type=float, default=14.2, help="the JPEG's size (MB)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--amqp-url", default=os.environ.get(
        "TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline figures to FILE (bench/all.py)")
    return parser.parse_args(argv)


def _terminate(signum, frame):
    signal.raise_signal(signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    run_id = uuid.uuid4().hex[:8]
    database, prefix = "photo_bench_%s" % run_id, "photo_bench_%s." % run_id
    tmp = tempfile.TemporaryDirectory(prefix="memory-bench-")
    created = False
    try:
        data = cached_jpeg(int(args.size_mb * MB))
        amqp_channel(args.amqp_url)[0].close()  # fail early if RabbitMQ is away
        conn = pg_admin(args.postgres_url)
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE %s" % database)
        conn.close()
        created = True
        parts = urllib.parse.urlsplit(args.postgres_url)
        database_url = urllib.parse.urlunsplit(parts._replace(path="/" + database))
        env = process_env(DATABASE_URL=database_url, AMQP_URL=args.amqp_url,
                          AMQP_PREFIX=prefix, CACHE="none")
        default_limit = Config().max_inflight_upload_bytes
        print("Web role memory with %d uploads of a %.1f MB JPEG at once (RabbitMQ + "
              "PostgreSQL; database %s and AMQP prefix %r removed at the end)"
              % (args.clients, len(data) / MB, database, prefix))
        everything = args.clients * (len(data) + 64 * 1024) * 2
        everything_env = dict(env, MAX_INFLIGHT_UPLOAD_BYTES=str(everything))
        phases = []
        for key, label, phase_env, limit, aligned in (
                ("at-once", "1. All at once, each body sent at its own pace", everything_env,
                 everything, False),
                ("worst-case", "2. All at once, every body in before any is answered (the "
                 "last bytes held back)", everything_env, everything, True),
                ("default-limit", "3. The default limit, each body at its own pace", env,
                 default_limit, False)):
            result = run_phase(key, phase_env, data, args, pathlib.Path(tmp.name), aligned)
            phases.append((result,) + summarize(label, result, limit))
            delete_amqp_objects(args.amqp_url, prefix)
        (first, _, ratio), (_, _, worst_ratio), (second, counts, limited_ratio) = phases
        room = min(args.clients, default_limit // second["body"])
        excess = args.clients - room
        refused = counts.get("503 + Retry-After", 0)
        print("  past the limit: %d of the %d uploads over it answered 503 with Retry-After"
              % (refused, excess))

        report(args.report, "memory", "peak RSS / (1.3 x in flight + 150 MB), %d x %.1f MB "
               "uploads at once, --role=web" % (args.clients, len(data) / MB), round(ratio, 2),
               "<= 1.0")
        report(args.report, "memory", "idle RSS, MB (--role=web)", round(first["idle"] / MB),
               "")
        report(args.report, "memory", "the same, every body in before any is answered",
               round(worst_ratio, 2), "<= 1.0")
        report(args.report, "memory", "the same with MAX_INFLIGHT_UPLOAD_BYTES at its default",
               round(limited_ratio, 2), "<= 1.0")
        report(args.report, "memory", "uploads past MAX_INFLIGHT_UPLOAD_BYTES answered 503 + "
               "Retry-After / uploads past it", round(refused / excess, 2) if excess else 1.0,
               ">= 1.0")
    finally:
        if created:
            try:
                delete_amqp_objects(args.amqp_url, prefix)
            except Exception as exc:
                print("cleanup: AMQP objects: %s" % exc, file=sys.stderr)
            conn = pg_admin(args.postgres_url)
            with conn.cursor() as cursor:
                cursor.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % database)
            conn.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
