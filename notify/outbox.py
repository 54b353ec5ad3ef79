"""From events to delivery messages: the one place that records deliveries and
publishes their messages (first try, retries, re-queued ones).

A delivery message is JSON ``{"delivery_id", "tries", "target"}``, message id
``{action}:{delivery id}``, on exchange
``photo-app.deliveries`` with the action's name as routing key (queues
``photo-app.webhook``, ``photo-app.email``); a retry goes through exchange
``photo-app.deliveries.retry``, key ``{action}.retry.{delay}s``, whose delay
queue hands it back after the delay.  The database row is the truth; the
message only says "look at delivery N, expecting N tries made".
"""

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

from broker import IMAGE_FAILED, IMAGE_UPLOADED
from notify import targets

log = logging.getLogger(__name__)

# The events an e-mail is written for.
MAIL_EVENTS = (IMAGE_UPLOADED, IMAGE_FAILED)


class Outbox:
    def __init__(self, context):
        self.context = context

    async def enqueue(self, action, event, message_id):
        """Record ``event`` for every target of ``action`` and publish its deliveries
        (or gather it for the next digest).  Safe to repeat for one event."""
        config, storage = self.context.config, self.context.storage
        if action == "email" and event.get("event") not in MAIL_EVENTS:
            return
        for target in targets(action, config):
            if action == "email" and config.mail_digest_seconds > 0:
                await storage.gather_digest_event(action, target, message_id, event)
                continue
            payload = [event] if action == "email" else event
            delivery = await storage.create_delivery(action, target, message_id,
                                                     event["event"], payload)
            # Published even when the delivery existed: after a crash between the two
            # steps this is its only message; a spare one finds it settled and is dropped.
            await self.publish(delivery, delivery["tries"])

    async def publish(self, delivery, tries, delay=None):
        """The delivery's message, now or after ``delay`` seconds (a delay queue)."""
        broker = self.context.broker
        topology = broker.topology
        body = json.dumps({"delivery_id": delivery["id"], "tries": tries,
                           "target": delivery["target"]}).encode()
        if delay is None:
            exchange, key = topology.deliveries_exchange, delivery["action"]
        else:
            exchange = topology.deliveries_retry_exchange
            key = topology.delivery_retry_key(delivery["action"], delay)
        # Its own id: the event's message id is shared by the deliveries to every target.
        await broker.publish(exchange, key, body,
                             message_id="%s:%d" % (delivery["action"], delivery["id"]),
                             content_type="application/json", mandatory=True)

    async def close_digest(self, action, period):
        """Put the events gathered for ``period`` seconds or longer into one delivery
        per target, and publish it.  Returns the deliveries made."""
        storage = self.context.storage
        gathered_before = (datetime.now(timezone.utc) - timedelta(seconds=period)).isoformat(
            timespec="microseconds")
        made = []
        for target in targets(action, self.context.config):
            delivery = await storage.close_digest(action, target, "digest:" + uuid.uuid4().hex,
                                                  gathered_before)
            if delivery is not None:
                log.info("%s digest %s: %d event(s)", action, delivery["id"],
                         len(delivery["payload"]))
                await self.publish(delivery, 0)
                made.append(delivery)
        return made

    async def resend_unsent_digests(self, action):
        """Publish digests closed in the database whose message may have been lost
        (the process stopped between the two); a spare message is dropped by the claim."""
        for delivery in await self.context.storage.unsent_digests(action):
            await self.publish(delivery, 0)
