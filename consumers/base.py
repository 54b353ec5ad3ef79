"""What every queue consumer shares: delivery, settling, retry delay and draining.

A subclass names its queue (``QUEUE``, an attribute of ``broker.Topology``) and
implements ``handle(message)``.  Returning settles the message with an ack;
raising means a transient fault (the database is down, say), which
``on_failure`` settles: here by requeueing after a delay that grows with
consecutive failures, so a fault never turns into a tight redelivery loop (the
processor overrides it with retry queues and a dead-letter queue).  Faults that
retrying cannot fix (a body that is not an image) are the subclass's to record,
after which it returns.
"""

import asyncio
import logging

from broker.messages import event_message_id, image_event
from logs import set_request_id

log = logging.getLogger(__name__)

RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 30.0


class Consumer:
    QUEUE = None

    def __init__(self, context):
        self.context = context
        self.queue = getattr(context.broker.topology, self.QUEUE)
        self._tasks = set()
        self._failures = 0

    def start(self):
        self.context.broker.consume(self.queue, self._on_message, self.context.config.prefetch)
        log.info("%s consuming %s", type(self).__name__, self.queue)

    def _on_message(self, message):
        task = asyncio.ensure_future(self._settle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, message):
        # Uploads carry the request id as message id; the notifier narrows an event's
        # id ("image.uploaded:<request id>") to its request id once it has read the body.
        set_request_id(message.message_id)
        try:
            await self.handle(message)
        except asyncio.CancelledError:
            message.nack(requeue=True)
            raise
        except Exception as exc:
            self._failures += 1
            await self.on_failure(message, exc)
        else:
            self._failures = 0
            message.ack()

    async def handle(self, message):
        raise NotImplementedError

    async def on_failure(self, message, exc):
        """Settle a message whose handling raised: requeue it after a delay."""
        delay = min(RETRY_DELAY * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        log.warning("%s: message %s failed (%s: %s); requeued in %.1f s",
                    type(self).__name__, message.message_id, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay)
        message.nack(requeue=True)

    async def publish_event(self, event, request_id, **details):
        """Publish a notification (``broker.messages.image_event``) and wait for its confirm."""
        broker = self.context.broker
        await broker.publish(broker.topology.events_exchange, event,
                             image_event(event, request_id, **details),
                             message_id=event_message_id(event, request_id),
                             content_type="application/json")

    async def stop(self, timeout):
        """Stop taking messages, give those in flight ``timeout`` seconds to
        finish, then requeue the rest."""
        await self.context.broker.cancel(self.queue)
        if self._tasks:
            log.info("%s: waiting for %d message(s) in flight", type(self).__name__,
                     len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
