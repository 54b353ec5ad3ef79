"""Liveness and readiness."""

import logging

from handlers.base import BaseHandler
from handlers.openapi import RETRY_AFTER, json_answer, operation, record

READY = record(status={"type": "string"}, checks=record(
    database={"type": "string"}, broker={"type": "string"}, cache={"type": "string"}))
from storage import StorageError

log = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    """``GET /healthz``: the process is up and its IOLoop answers."""

    @operation(summary="Liveness", tags=["health"], responses={
        200: json_answer("the process answers", record(status={"const": "ok"}))})
    def get(self):
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """``GET /readyz``: 200 when uploads can be taken and images read, else 503
    naming what is down.  A cache that is down is reported but does not make
    the service unready: reads then go to the database."""

    @operation(summary="Readiness of the database, broker and cache", tags=["health"],
               responses={200: json_answer("ready", READY),
                          503: json_answer("the database or the broker is down", READY,
                                           RETRY_AFTER)})
    async def get(self):
        checks = await backend_checks(self.context, self.request_id)
        down = [name for name in ("database", "broker") if checks[name] != "ok"]
        if down:
            self.set_header("Retry-After", "5")
        self.write_json({"status": "unavailable: " + ", ".join(down) if down else "ok",
                         "checks": checks}, status=503 if down else 200)


async def backend_checks(context, request_id):
    """``{"database", "broker", "cache"}``: ``"ok"``, or what is wrong, in words."""
    checks = {}
    try:
        await context.storage.ping()
        checks["database"] = "ok"
    except StorageError as exc:
        log.warning("request %s: readiness: the database is down: %s", request_id, exc)
        checks["database"] = "down: not answering"
    checks["broker"] = "ok" if context.broker.ready else "down: not connected"
    checks["cache"] = ("ok" if await context.cache.ping()
                       else "down (reads go to the database)")
    return checks
