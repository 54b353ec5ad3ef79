"""Prometheus metrics: the families DESIGN names ("Operations"), in one registry
per process (the context's), so tests that build several apps in one process
never share counters.

``GET /metrics`` (handlers/metrics.py) serves them in the web role; a process
without it serves the same handler on METRICS_PORT.  Queue depths are asked of
the broker when scraped (``Broker.depths()``, awaited by the handler: passive
declares on RabbitMQ), never on a timer and never blocking the IOLoop.
"""

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

UPLOAD_OUTCOMES = ("accepted", "refused", "rejected")
PROCESSED_OUTCOMES = ("stored", "duplicate", "failed", "retried", "dead_lettered")
CACHE_RESULTS = ("hit", "miss", "error")
# Seconds a scrape waits for the broker's queue depths before leaving them out.
DEPTHS_TIMEOUT = 2.0


def upload_outcome(status):
    """What an upload POST answered ``status`` counts as: accepted (2xx/3xx), rejected
    (4xx: the upload is wrong) or refused (5xx, in practice 503 and 504: the service
    did not take it, and it can be sent again)."""
    if status < 400:
        return "accepted"
    return "rejected" if status < 500 else "refused"


async def queue_depths(broker):
    """``broker.depths()``, or None when the broker cannot say within DEPTHS_TIMEOUT."""
    try:
        return await asyncio.wait_for(broker.depths(), DEPTHS_TIMEOUT)
    except Exception as exc:  # the callers answer whatever the broker's state
        log.warning("queue depths unavailable: %s: %s", type(exc).__name__, exc)
        return None


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered, by route (the handler class)",
            ["handler", "method", "code"], registry=registry)
        self.http_request_duration = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request, by route",
            ["handler", "method"], registry=registry)
        self.uploads = Counter(
            "photo_app_uploads", "Upload requests answered: accepted, refused, rejected",
            ["outcome"], registry=registry)
        self.processed = Counter(
            "photo_app_processed", "Upload messages the processor finished, by outcome",
            ["outcome"], registry=registry)
        self.processing_seconds = Histogram(
            "photo_app_processing_seconds", "Image work per upload (validate, orient, "
            "thumbnails), in the image executor", registry=registry)
        self.cache_requests = Counter(
            "photo_app_cache_requests", "Image byte reads through the cache, by result",
            ["result"], registry=registry)
        self.notifications = Counter(
            "photo_app_notifications", "Notification actions, by action and outcome",
            ["action", "outcome"], registry=registry)
        self.broker_confirm_seconds = Histogram(
            "photo_app_broker_confirm_seconds", "Time from publish to the broker's confirm",
            registry=registry)
        self.queue_messages = Gauge(
            "photo_app_queue_messages", "Messages waiting in each queue, as the broker "
            "counts them when scraped", ["queue"], registry=registry)
        for outcome in UPLOAD_OUTCOMES:  # present at 0 from the start
            self.uploads.labels(outcome)
        for outcome in PROCESSED_OUTCOMES:
            self.processed.labels(outcome)
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)

    async def refresh_queues(self, broker):
        """Set the queue gauges from the broker's own counts; when the broker cannot
        say (not connected, too slow) they are left out rather than stale."""
        depths = await queue_depths(broker)
        self.queue_messages.clear()
        for queue, count in (depths or {}).items():
            self.queue_messages.labels(queue).set(count)

    def cache_counts(self):
        """This process's ``{result: image reads}`` through the cache (``CACHE_RESULTS``)."""
        return {result: int(self.registry.get_sample_value(
            "photo_app_cache_requests_total", {"result": result}) or 0)
            for result in CACHE_RESULTS}

    def exposition(self):
        return generate_latest(self.registry)
