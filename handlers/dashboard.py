"""The operations dashboard: ``GET /dashboard`` (the page) and ``GET /api/dashboard``
(its figures, as JSON), both for the operator.

Each figure comes from where it is true for the whole deployment, whichever web
process answers: uploads per minute and the times from accepted to stored from
the database (every processor writes there), queue depths from the broker,
health from each backend, failed uploads and deliveries from the database, and
the latest events from this process's event queue (every web process hears
every event).  Only the cache hit ratio is this process's own (its counters),
and the snapshot says so.  The page loads the snapshot, then reads it again on
each event its socket hears (at most once a second) and every few seconds.
"""

import asyncio
import math
from datetime import datetime, timedelta, timezone

from handlers.base import ApiError
from handlers.failed import OperatorHandler, failed_lists
from handlers.health import backend_checks
from handlers.openapi import (INTEGER, STRING, error, html_answer, json_answer, nullable,
                              operation, operator, record, redirect, ref)
from handlers.pages import PageHandler
from metrics import queue_depths
from storage import StorageError

MINUTES = 60  # the chart's span, one bar per minute
STORED_SAMPLE = 5000  # the latest stored uploads whose times give p50 and p95


def percentile(ordered, fraction):
    """The nearest-rank percentile of the sorted list ``ordered`` (None when empty)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def upload_figures(storage, now):
    """Per minute of the last hour (oldest first): uploads accepted, stored and
    failed, and the accepted-to-stored seconds of those stored in it."""
    first = (now - timedelta(minutes=MINUTES - 1)).replace(second=0, microsecond=0)
    activity = await storage.upload_activity(first.isoformat(), STORED_SAMPLE)
    minutes = []
    for index in range(MINUTES):
        moment = first + timedelta(minutes=index)
        key = moment.strftime("%Y-%m-%dT%H:%M")
        minutes.append({"minute": moment.isoformat(),
                        **{what: activity[what].get(key, 0)
                           for what in ("accepted", "stored", "failed")}})
    seconds = sorted(activity["stored_seconds"])
    return minutes, {"p50": percentile(seconds, 0.50), "p95": percentile(seconds, 0.95),
                     "count": len(seconds)}


async def snapshot(context, request_id):
    """Every figure of the dashboard, now.  What the database or the broker
    cannot answer is null (with the health saying why), never a stale figure."""
    now = datetime.now(timezone.utc)

    async def from_database(read):
        try:
            return await read
        except StorageError:
            return None  # backend_checks says the database is down (and logs it)

    uploads, failed, depths, health = await asyncio.gather(
        from_database(upload_figures(context.storage, now)),
        from_database(failed_lists(context.storage)), queue_depths(context.broker),
        backend_checks(context, request_id))
    minutes, processing = uploads or (None, None)
    cache = context.metrics.cache_counts()
    looked_up = cache["hit"] + cache["miss"]
    return {
        "generated_at": now.isoformat(),
        "minutes": minutes,
        "totals": minutes and {what: sum(minute[what] for minute in minutes)
                               for what in ("accepted", "stored", "failed")},
        "processing_seconds": processing,
        "queues": [{"queue": name, "holds": words,
                    "messages": None if depths is None else depths.get(name)}
                   for name, words in context.broker.topology.described_queues()],
        "cache": {"scope": "this web process", "hits": cache["hit"], "misses": cache["miss"],
                  "errors": cache["error"],
                  "hit_ratio": cache["hit"] / looked_up if looked_up else None},
        "health": health,
        "events": list(context.events.recent),
        "failed": failed and failed["failed"],
        "deliveries": failed and failed["deliveries"],
    }


COUNTS = record(accepted=INTEGER, stored=INTEGER, failed=INTEGER)
NUMBER_OR_NULL = nullable({"type": "number"})
DASHBOARD = record(
    generated_at=STRING,
    minutes=dict(nullable({"type": "array", "items": dict(COUNTS, properties=dict(
        COUNTS["properties"], minute=STRING), required=["minute", *COUNTS["required"]])}),
        description="the last %d minutes, oldest first; null while the database is down"
                    % MINUTES),
    totals=nullable(COUNTS),
    processing_seconds=dict(nullable(record(p50=NUMBER_OR_NULL, p95=NUMBER_OR_NULL,
                                            count=INTEGER)),
                            description="accepted to stored, over the uploads stored in the "
                                        "last hour (the latest %d at most)" % STORED_SAMPLE),
    queues={"type": "array", "items": record(
        queue=STRING, holds=STRING,
        messages=dict(nullable(INTEGER), description="null when the broker cannot say"))},
    cache=record(scope=STRING, hits=INTEGER, misses=INTEGER, errors=INTEGER,
                 hit_ratio=NUMBER_OR_NULL),
    health=record(database=STRING, broker=STRING, cache=STRING),
    events={"type": "array", "items": {"type": "object", "required": ["event", "heard_at"]},
            "description": "the latest events this process heard, newest first"},
    failed=nullable({"type": "array", "items": ref("DeadLetter")}),
    deliveries=nullable({"type": "array", "items": ref("FailedDelivery")}))


class DashboardHandler(OperatorHandler):
    """``GET /api/dashboard``: the dashboard's figures."""

    @operation(**operator(summary="The operations dashboard's figures", tags=["operator"],
                          responses={200: json_answer("every figure, now", DASHBOARD)}))
    async def get(self):
        self.set_header("Cache-Control", "no-store")
        self.write_json(await snapshot(self.context, self.request_id))


class DashboardPageHandler(PageHandler):
    """``GET /dashboard``: the page (static/app.js fills it from ``/api/dashboard``);
    a browser that has not signed in is sent to ``/login`` first."""

    @operation(summary="The operations dashboard", tags=["pages"], security=[
        {"bearerToken": []}, {}], responses={
            200: html_answer("the page"),
            302: redirect("not signed in: to /login, and back here after"),
            403: error("a wrong token, or API_TOKEN is not set", page=True)})
    def get(self):
        try:
            self.require_operator()
        except ApiError as exc:
            if exc.status_code != 401:
                raise
            self.redirect("/login?next=/dashboard")
            return
        self.render("dashboard.html", minutes=MINUTES)
