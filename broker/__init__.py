"""The message broker: where uploads wait for the processor and events for the notifier.

``Broker`` is the contract both backends keep (RabbitMQ through pika, and the
in-process broker of the zero-configuration demo).  Consumers and the upload
handler only ever talk to this contract, so the same code runs on both.

Semantics both backends share: durable direct exchanges, durable queues,
persistent messages, per-consumer prefetch, manual ack/nack with requeue and
the ``redelivered`` flag, and publishes that return only once the broker has
taken responsibility for the message (a publisher confirm) or raise
``BrokerUnavailable``.
"""

import time
from dataclasses import dataclass, field

from config import Config
from metrics import Metrics

# The routing keys of the contract (DESIGN.md).  Exchange and queue names get a
# deployment prefix (AMQP_PREFIX); routing keys do not.
UPLOAD_ROUTING_KEY = "image-processing-queue"
IMAGE_PROCESSING = "image.processing"
IMAGE_UPLOADED = "image.uploaded"
IMAGE_FAILED = "image.failed"
IMAGE_DELETED = "image.deleted"
# Every event of the events exchange: what each web process hears for its pages.
EVENT_KEYS = (IMAGE_PROCESSING, IMAGE_UPLOADED, IMAGE_FAILED, IMAGE_DELETED)
DEAD_ROUTING_KEY = "dead"
# Notifier actions that deliver outside (notify/): each has its own queue of
# deliveries, routed by the action's name, and its own delay queues for retries.
DELIVERY_ACTIONS = ("webhook", "email")
PARKED_ROUTING_KEY = "parked"


class BrokerUnavailable(Exception):
    """The broker did not take the message (nack, return, no connection, timeout)."""


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue, its bindings, and (for a delay queue) where its
    messages go once they have waited ``ttl`` seconds."""
    name: str
    exchange: str
    routing_keys: tuple
    ttl: float = None
    dead_letter: tuple = None  # (exchange, routing key)
    queue_type: str = "classic"  # or "quorum" (AMQP_QUEUE_TYPE)

    @property
    def amqp_arguments(self):
        """The queue's ``x-`` arguments as AMQP declares them."""
        arguments = {}
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        if self.ttl is not None:
            arguments.update({"x-message-ttl": int(self.ttl * 1000),
                              "x-dead-letter-exchange": self.dead_letter[0],
                              "x-dead-letter-routing-key": self.dead_letter[1]})
            if self.queue_type == "quorum":
                # A quorum queue dead-letters at most once by default: a message
                # lost on the way back would be an upload lost.  At-least-once
                # needs reject-publish overflow (RabbitMQ 3.10 and later).
                arguments.update({"x-dead-letter-strategy": "at-least-once",
                                  "x-overflow": "reject-publish"})
        return arguments


class Topology:
    """Every exchange, queue and binding, under one name prefix.

    Uploads that failed for a passing reason wait in a retry queue (one per
    delay, so a short wait never queues behind a long one) and then flow back
    to the work queue; uploads that ran out of attempts go to the dead-letter
    queue, where they wait to be recorded and, once the cause is fixed,
    re-queued.  A message a consumer failed too often (``MAX_DELIVERIES``, see
    ``consumers.base``) is parked in the parking queue, which nothing consumes:
    it waits there for an operator.
    """

    def __init__(self, prefix="", retry_delays=Config.retry_delays,
                 queue_type=Config.amqp_queue_type,
                 delivery_delays=Config.webhook_retry_delays):
        self.prefix = prefix
        self.queue_type = queue_type
        self.upload_exchange = prefix + "image-processing"
        self.upload_queue = prefix + "image-processing-queue"
        self.retry_exchange = prefix + "image-processing.retry"
        self.dead_exchange = prefix + "image-processing.dead"
        self.dead_queue = prefix + "image-processing-queue.dead"
        self.events_exchange = prefix + "photo-app"
        self.notifications_queue = prefix + "photo-app.notifications"
        self.parked_exchange = prefix + "photo-app.parked"
        self.parked_queue = prefix + "photo-app.parked"
        self.retry_delays = tuple(retry_delays)
        # Webhook and e-mail deliveries (one message per delivery, consumers/deliveries.py).
        self.deliveries_exchange = prefix + "photo-app.deliveries"
        self.deliveries_retry_exchange = prefix + "photo-app.deliveries.retry"
        self.delivery_delays = tuple(delivery_delays)

    @staticmethod
    def retry_key(delay):
        return "retry.%gs" % delay

    def retry_queue(self, delay):
        return "%s.%s" % (self.upload_queue, self.retry_key(delay))

    def delivery_queue(self, action):
        return "%sphoto-app.%s" % (self.prefix, action)

    def delivery_retry_queue(self, action, delay):
        return "%s.%s" % (self.delivery_queue(action), self.retry_key(delay))

    @classmethod
    def delivery_retry_key(cls, action, delay):
        return "%s.%s" % (action, cls.retry_key(delay))

    @property
    def webhook_queue(self):
        return self.delivery_queue("webhook")

    @property
    def email_queue(self):
        return self.delivery_queue("email")

    def delivery_queues(self):
        """Per action: its queue, and one delay queue per retry delay that leads back to it."""
        return [spec for action in DELIVERY_ACTIONS for spec in [
            QueueSpec(self.delivery_queue(action), self.deliveries_exchange, (action,),
                      queue_type=self.queue_type),
            *[QueueSpec(self.delivery_retry_queue(action, delay),
                        self.deliveries_retry_exchange,
                        (self.delivery_retry_key(action, delay),),
                        ttl=delay, dead_letter=(self.deliveries_exchange, action),
                        queue_type=self.queue_type)
              for delay in self.delivery_delays]]]

    def described_queues(self):
        """``[(queue name, what it holds, in words)]``, in the order of ``queues``."""
        return [
            (self.upload_queue, "uploads"),
            *[(self.retry_queue(delay), "uploads to retry after %gs" % delay)
              for delay in self.retry_delays],
            (self.dead_queue, "dead letters to record"),
            (self.notifications_queue, "notifications"),
            (self.parked_queue, "parked messages"),
            *[entry for action in DELIVERY_ACTIONS for entry in [
                (self.delivery_queue(action), "%s deliveries" % action),
                *[(self.delivery_retry_queue(action, delay),
                   "%s retries after %gs" % (action, delay)) for delay in self.delivery_delays]]],
        ]

    @property
    def exchanges(self):
        return [self.upload_exchange, self.retry_exchange, self.dead_exchange,
                self.events_exchange, self.parked_exchange, self.deliveries_exchange,
                self.deliveries_retry_exchange]

    @property
    def queues(self):
        back_to_work = (self.upload_exchange, UPLOAD_ROUTING_KEY)
        kind = self.queue_type
        return [
            QueueSpec(self.upload_queue, self.upload_exchange, (UPLOAD_ROUTING_KEY,),
                      queue_type=kind),
            *[QueueSpec(self.retry_queue(delay), self.retry_exchange, (self.retry_key(delay),),
                        ttl=delay, dead_letter=back_to_work, queue_type=kind)
              for delay in self.retry_delays],
            QueueSpec(self.dead_queue, self.dead_exchange, (DEAD_ROUTING_KEY,), queue_type=kind),
            QueueSpec(self.notifications_queue, self.events_exchange,
                      (IMAGE_UPLOADED, IMAGE_FAILED, IMAGE_DELETED), queue_type=kind),
            QueueSpec(self.parked_queue, self.parked_exchange, (PARKED_ROUTING_KEY,),
                      queue_type=kind),
            *self.delivery_queues(),
        ]


@dataclass
class Message:
    """One delivery.  Exactly one of ``ack()`` / ``nack()`` settles it."""
    body: bytes
    routing_key: str
    message_id: str = None
    content_type: str = None
    headers: dict = field(default_factory=dict)
    redelivered: bool = False
    settle: object = field(default=None, repr=False)  # settle(ack: bool, requeue: bool)
    settled: bool = field(default=False, repr=False, compare=False)

    def ack(self):
        self.settled = True
        self.settle(True, False)

    def nack(self, requeue=True):
        self.settled = True
        self.settle(False, requeue)


class Broker:
    """The broker contract."""

    def __init__(self, topology, metrics=None):
        self.topology = topology
        # Where publishes record their confirm times (the context's; a broker of its own
        # in tests that open one alone).
        self.metrics = metrics or Metrics()

    @property
    def ready(self):
        """True while a publish can be confirmed."""
        raise NotImplementedError

    async def start(self):
        """Connect and declare the topology (in the background for RabbitMQ,
        which keeps reconnecting for as long as the broker is open)."""
        raise NotImplementedError

    async def publish(self, exchange, routing_key, body, *, message_id=None,
                      content_type=None, headers=None, mandatory=False):
        """Return once the broker confirmed the message; raise BrokerUnavailable
        if it did not (nack, unroutable with ``mandatory``, no connection, timeout)."""
        raise NotImplementedError

    def consume(self, queue, on_message, prefetch):
        """Deliver messages of ``queue`` to ``on_message(Message)``, at most
        ``prefetch`` unsettled at a time; survives reconnects."""
        raise NotImplementedError

    async def cancel(self, queue):
        """Stop delivering from ``queue``; messages already delivered may still settle."""
        raise NotImplementedError

    async def depths(self):
        """``{queue name: messages waiting}`` for every queue of the topology, as the
        broker itself counts them (delivered, unsettled ones not included)."""
        raise NotImplementedError

    def _confirmed(self, started):
        """Record a publish confirmed ``started`` (``time.monotonic()``) seconds ago."""
        self.metrics.broker_confirm_seconds.observe(time.monotonic() - started)

    def subscribe(self, exchange, routing_keys, on_message):
        """Hear ``routing_keys`` of ``exchange`` for as long as this process runs, through
        a private queue of its own (exclusive, server-named and auto-delete on RabbitMQ),
        declared anew after each reconnect.  Deliveries need no settling; what is
        published while the process is not connected is missed (fit for live updates
        and cache invalidation, never for work)."""
        raise NotImplementedError

    async def close(self):
        raise NotImplementedError

    def describe(self):
        raise NotImplementedError


def open_broker(config, metrics=None):
    topology = Topology(config.amqp_prefix, config.retry_delays, config.amqp_queue_type,
                        delivery_delays=config.webhook_retry_delays)
    if config.broker_type == "memory":
        from broker.memory import MemoryBroker
        return MemoryBroker(topology, config.embedded_broker_path,
                            confirm_timeout=config.confirm_timeout, metrics=metrics)
    from broker.rabbitmq import RabbitMQBroker
    return RabbitMQBroker(topology, config.amqp_urls, confirm_timeout=config.confirm_timeout,
                          metrics=metrics)
