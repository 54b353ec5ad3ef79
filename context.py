"""The context: configuration and open backends, handed to every handler and consumer.

``open_context`` is the one place that picks and opens the database, cache and
broker from the configuration, and says on the log which is in use and where.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from broker import EVENT_KEYS, IMAGE_DELETED, open_broker
from cache import forget_image, open_cache
from handlers.events import EventHub
from imaging.workers import ImageWorkers
from metrics import Metrics
from storage import open_storage
from uploads import RequestIds

log = logging.getLogger(__name__)


@dataclass
class Context:
    config: object
    storage: object
    cache: object
    broker: object
    # Where the processor's Pillow work runs (IMAGE_POOL, IMAGE_WORKERS).
    image_workers: ImageWorkers
    # Issues and recognises the upload request ids, under the database's key.
    request_ids: RequestIds
    # This process's Prometheus metrics (metrics.py).
    metrics: Metrics = field(default_factory=Metrics)
    # This process's WebSocket clients and the events it hears for them (web role).
    events: EventHub = field(default_factory=EventHub)
    # HTTP requests in progress, from their headers to their answer (drained at shutdown).
    requests: set = field(default_factory=set)
    # Bytes of upload bodies being received (MAX_INFLIGHT_UPLOAD_BYTES caps it).
    inflight_upload_bytes: int = 0


async def open_context(config):
    storage = open_storage(config)
    log.info("database: %s", storage.describe())
    await storage.migrate()
    request_ids = RequestIds(await storage.request_id_secret())
    cache = open_cache(config)
    log.info("cache: %s", cache.describe())
    metrics = Metrics()
    broker = open_broker(config, metrics)
    log.info("broker: %s", broker.describe())
    await broker.start()
    workers = ImageWorkers(config.image_workers, config.image_pool)
    context = Context(config, storage, cache, broker, workers, request_ids,
                      metrics=metrics)
    if "web" in config.roles:
        context.events.listeners.append(lambda event: forget_deleted(context, event))
        broker.subscribe(broker.topology.events_exchange, EVENT_KEYS, context.events.on_message,
                         on_subscribed=lambda: events_resumed(context))
    return context


def events_resumed(context):
    """The event subscription is in place (again): deletes announced while it was not
    may have been missed, so this process forgets the image bytes it holds in memory."""
    dropped = context.cache.clear_local()
    if dropped:
        log.info("events subscribed again: dropped %d in-process cache entries", dropped)


def forget_deleted(context, event):
    """Every web process drops its cached copies of an image deleted on any node."""
    if event.get("event") == IMAGE_DELETED and isinstance(event.get("image_id"), int):
        asyncio.ensure_future(forget_image(context.cache, event["image_id"],
                                           context.config.thumbnail_sizes))


async def close_context(context):
    await context.broker.close()
    await context.cache.close()
    await context.storage.close()
    context.image_workers.close()
