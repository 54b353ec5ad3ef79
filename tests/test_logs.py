"""Logs that follow one upload: LOG_FORMAT=json in every role, the request id carried
from the upload through the processor and the notifier, and access lines with the
route, status, duration and request id."""

import json
import logging
import signal

from logs import JsonFormatter, RequestIdFilter, TextFormatter, set_request_id
from tests.conftest import AMQP_URL, free_port
from tests.helpers import make_image
from tests.processes import (RABBIT_READY, WEB_READY, no_traceback, process_env, upload,
                             wait_stored)


def json_lines(proc):
    """Every line the process logged, each parsed: a line that is not JSON fails."""
    entries = []
    for line in proc.log().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError("%s logged a line that is not JSON: %r" % (proc.name, line))
    return entries


def test_one_upload_is_followed_across_three_processes(postgres_url, amqp_prefix, spawn):
    port = free_port()
    env = process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                      CACHE="none", LOG_FORMAT="json")
    web = spawn("web", ["server.py", "--role=web", "--port", str(port)], env,
                ready=WEB_READY + RABBIT_READY)
    processor = spawn("processor", ["-m", "consumers.processor"], env, ready=RABBIT_READY)
    notifier = spawn("notifier", ["-m", "consumers.notifier"], env, ready=RABBIT_READY)

    code, accepted = upload(port, make_image("PNG", size=(30, 20)), nickname="followed")
    assert code == 202, accepted
    request_id = accepted["request_id"]
    wait_stored(port, request_id)
    notifier.wait_for_log("notification ")
    for proc in (web, processor, notifier):
        assert proc.stop(signal.SIGTERM) == 0, proc.describe()
        assert no_traceback(proc.log()), proc.log()

    lines = {proc.name: json_lines(proc) for proc in (web, processor, notifier)}
    for name, entries in lines.items():
        assert entries, name
        for entry in entries:
            assert {"time", "level", "logger", "message"} <= set(entry), entry
        mine = [entry for entry in entries if entry.get("request_id") == request_id]
        assert mine, "no %s line names request %s:\n%s" % (name, request_id, entries)
        # Lines outside any upload (start-up, shutdown) carry no request id.
        assert not any("request_id" in entry for entry in entries
                       if entry["message"].startswith("roles: ")), entries

    def messages(name):
        return [e["message"] for e in lines[name] if e.get("request_id") == request_id]
    assert any("stored as image" in text for text in messages("processor"))
    assert any(text.startswith("notification ") for text in messages("notifier"))

    [access] = [e for e in lines["web"] if e["logger"] == "tornado.access"
                and e.get("method") == "POST"]
    assert access["request_id"] == request_id
    assert (access["status"], access["path"], access["route"]) == (202, "/api/images",
                                                                   "ImagesHandler")
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    status_reads = [e for e in lines["web"] if e["logger"] == "tornado.access"
                    and e.get("path") == "/api/uploads/%s" % request_id]
    assert status_reads and all(e["request_id"] == request_id for e in status_reads)


def record(message, **extra):
    entry = logging.LogRecord("photo_app.test", logging.WARNING, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    RequestIdFilter().filter(entry)
    return entry


def test_the_request_id_in_force_stamps_each_line_and_ends_with_its_task():
    import asyncio

    async def handle(request_id):
        set_request_id(request_id)
        await asyncio.sleep(0)
        return record("inside")

    async def main():
        inside = await asyncio.gather(handle("r-1"), handle("r-2"))
        return inside, record("outside")
    (first, second), outside = asyncio.run(main())
    assert (first.request_id, second.request_id, outside.request_id) == ("r-1", "r-2", None)
    assert TextFormatter().format(first).endswith("photo_app.test [r-1]: inside")
    assert TextFormatter().format(outside).endswith("photo_app.test: outside")
    assert json.loads(JsonFormatter().format(first))["request_id"] == "r-1"
    assert "request_id" not in json.loads(JsonFormatter().format(outside))


def test_a_json_line_keeps_the_exception_and_any_text_in_one_line():
    try:
        raise ValueError("bad \"quoted\"\nsecond line")
    except ValueError:
        import sys
        entry = record("failed: %s", exc_info=sys.exc_info())
    entry.args = ("naïve \u2028 text",)
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed: naïve \u2028 text"
    assert parsed["level"] == "WARNING" and parsed["logger"] == "photo_app.test"
    assert "ValueError: bad" in parsed["exception"]
