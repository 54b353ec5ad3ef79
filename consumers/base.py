"""What every queue consumer shares: delivery, settling, retry delay, parking and draining.

A subclass names its queue (``QUEUE``, an attribute of ``broker.Topology``) and
implements ``handle(message)``.  Returning settles the message with an ack;
raising means a fault, which ``on_failure`` settles (the processor overrides it
with retry queues and a dead-letter queue).  Here:

* an outage (``StorageError``, ``BrokerUnavailable``: the database or broker is
  down) requeues the message after a delay that grows with consecutive
  failures, for as long as the outage lasts, so a fault never turns into a
  tight redelivery loop and nothing is given up while the cause is being fixed;
* any other fault (a message this code cannot handle: a bug, a body a foreign
  client got wrong) counts against the message; once it has failed
  ``MAX_DELIVERIES`` times in this process it is parked: published (confirmed)
  to the parking queue with the reason, acked, and logged as an error.  Nothing
  consumes the parking queue; an operator reads it.

Faults that retrying cannot fix and that the subclass recognises (a body that is
not an image) are the subclass's to record, after which it returns.  Whatever
happens (a cancel at shutdown, a fault in ``on_failure`` itself), a message left
unsettled is put back in its queue.
"""

import asyncio
import hashlib
import logging

from broker import PARKED_ROUTING_KEY, BrokerUnavailable
from broker.messages import ERROR_HEADER, PARKED_FROM_HEADER, event_message_id, image_event
from logs import set_request_id
from storage import StorageError

log = logging.getLogger(__name__)

RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 30.0
OUTAGES = (StorageError, BrokerUnavailable)
MAX_COUNTED = 10_000  # messages whose failures are remembered at once


class Consumer:
    QUEUE = None

    def __init__(self, context):
        self.context = context
        self.queue = getattr(context.broker.topology, self.QUEUE)
        self._tasks = set()
        self._failures = 0  # consecutive failures, for the requeue delay
        self._failed = {}   # message key -> its failed deliveries here (outages aside)

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
        except Exception as exc:
            self._failures += 1
            await self.on_failure(message, exc)
        else:
            self._failures = 0
            self._failed.pop(_key(message), None)
            message.ack()
        finally:
            if not message.settled:  # cancelled, or on_failure itself failed
                message.nack(requeue=True)

    async def handle(self, message):
        raise NotImplementedError

    async def on_failure(self, message, exc):
        """Settle a message whose handling raised: park it if it failed too often
        for a reason other than an outage, else requeue it after a delay."""
        if not isinstance(exc, OUTAGES):
            key = _key(message)
            failed = self._failed[key] = self._failed.pop(key, 0) + 1
            if len(self._failed) > MAX_COUNTED:
                del self._failed[next(iter(self._failed))]
            if failed >= self.context.config.max_deliveries and await self.park(message, exc):
                del self._failed[key]
                return
        delay = min(RETRY_DELAY * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        log.warning("%s: message %s failed (%s: %s); requeued in %.1f s",
                    type(self).__name__, message.message_id, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay)
        message.nack(requeue=True)

    async def park(self, message, exc):
        """Move ``message`` to the parking queue (confirmed), then ack it; False if
        the broker did not take it (it is then requeued and parked later)."""
        broker = self.context.broker
        reason = "%s: %s" % (type(exc).__name__, exc)
        headers = dict(message.headers or {}, **{
            ERROR_HEADER: reason, PARKED_FROM_HEADER: self.queue,
            "x-routing-key": message.routing_key})
        try:
            await broker.publish(broker.topology.parked_exchange, PARKED_ROUTING_KEY,
                                 message.body, message_id=message.message_id,
                                 content_type=message.content_type, headers=headers,
                                 mandatory=True)
        except BrokerUnavailable as unavailable:
            log.warning("%s: cannot park message %s (%s); requeued", type(self).__name__,
                        message.message_id, unavailable)
            return False
        message.ack()
        log.error("%s: PARKED message %s after %d failed deliveries (last: %s); it waits "
                  "in queue %s for an operator", type(self).__name__, message.message_id,
                  self.context.config.max_deliveries, reason, broker.topology.parked_queue)
        return True

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


def _key(message):
    """What tells one message from another: its id, else its body."""
    return message.message_id or hashlib.sha256(message.body).hexdigest()
