"""Logging for every role: the human format by default, or one JSON object per line.

``LOG_FORMAT=json`` writes each record as ``{"time", "level", "logger", "message"}``
plus ``request_id`` wherever one is known, so one upload can be followed from the
web process through the processor and the notifier.  The request id is carried in
a context variable: set once where a request or a message is taken up
(``set_request_id``), it reaches every log line written while handling it,
including lines of the libraries called on the way, and ends with that task.
"""

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

FORMATS = ("text", "json")
_request_id = contextvars.ContextVar("request_id", default=None)

# Fields an access log line passes in ``extra`` (handlers/__init__.py log_request).
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms")


def set_request_id(request_id):
    """The request id of the upload handled from here on in this task (None: none)."""
    _request_id.set(request_id or None)


def current_request_id():
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id in force where it was logged."""

    def filter(self, record):
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message``, the request id where one is known."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s")

    def format(self, record):
        record.request = "" if record.request_id is None else " [%s]" % record.request_id
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                 .isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.request_id is not None:
            entry["request_id"] = record.request_id
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # ASCII: no character can split the line


def setup_logging(log_format="text", level="INFO"):
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # Neither format shows where a call was made, nor its thread or process: so
    # logging need not look them up for every record (the logging HOWTO's
    # "Optimization"; an access line is written for every request).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pika").setLevel(logging.WARNING)
