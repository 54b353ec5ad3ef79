"""The senders: delivery messages in, webhooks and e-mail out (see ``notify``).

For each message: claim the delivery in the database for a lease (so while
every sender lives, one of them sends it, once); send it; record the outcome.
A try that failed goes to the delay queue of the next WEBHOOK_RETRY_DELAYS
entry, to come back then; after the last one the delivery is dead-lettered
(``dead``, with its last error); ``410 Gone`` ends it ``gone`` at once.  A
sender killed mid-send leaves its lease to run out, after which another sends
the delivery again, with the same id.

One endpoint never holds back another: every delivery is its own message, the
senders take many at once (``PREFETCH``), and no endpoint gets more than
``PER_TARGET`` tries at a time; a message for an endpoint at its limit (or for
a delivery another sender holds) waits in the shortest delay queue instead of
holding a slot.
"""

import asyncio
import collections
import json
import logging
import os
import socket
import time
import uuid

from config import redact_url
from consumers.base import Consumer
from logs import set_request_id
from notify import DeliveryFailed, enabled_actions, open_channel
from notify.outbox import Outbox
from storage import DEAD, DELIVERED, GONE, PENDING

log = logging.getLogger(__name__)

PREFETCH = 64
PER_TARGET = 4
DIGEST_TICK = 5.0  # seconds between looks at the digest, at most


def lease_seconds(timeout):
    """How long a claim holds: longer than any try (``timeout``) and its bookkeeping."""
    return 2 * timeout + 10


class DeliverySender(Consumer):
    ACTION = None

    def __init__(self, context):
        super().__init__(context)
        self.enabled = self.ACTION in enabled_actions(context.config)
        self.channel = open_channel(self.ACTION, context) if self.enabled else None
        self.outbox = Outbox(context)
        self.owner = "%s:%d:%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:6])
        self.lease = lease_seconds(context.config.webhook_timeout)
        self._in_flight = collections.Counter()  # target -> tries under way here

    @property
    def delays(self):
        return self.context.broker.topology.delivery_delays

    def start(self):
        if self.enabled:
            self.context.broker.consume(self.queue, self._on_message, PREFETCH)
            log.info("%s consuming %s", type(self).__name__, self.queue)

    async def handle(self, message):
        try:
            request = json.loads(message.body)
            delivery_id, tries = int(request["delivery_id"]), int(request["tries"])
            target = request.get("target")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dropping a delivery message that breaks the contract (%s): %r",
                        exc, message.body[:200])
            return
        if self._in_flight[target] >= PER_TARGET:
            await self._later(delivery_id, tries)
            return
        self._in_flight[target] += 1
        try:
            await self._deliver(delivery_id, tries)
        finally:
            self._in_flight[target] -= 1
            if not self._in_flight[target]:
                del self._in_flight[target]

    async def _later(self, delivery_id, tries):
        """Look at the delivery again after the shortest delay, expecting the same tries."""
        delivery = await self.context.storage.get_delivery(delivery_id)
        if delivery is not None and delivery["status"] == PENDING:
            await self.outbox.publish(delivery, tries, delay=min(self.delays))

    async def _deliver(self, delivery_id, tries):
        storage = self.context.storage
        outcome, delivery = await storage.claim_delivery(delivery_id, tries, self.owner,
                                                         time.time(), self.lease)
        if outcome in ("missing", "done"):
            return
        if outcome == "busy":
            await self._later(delivery_id, tries)
            return
        events = delivery["payload"] if isinstance(delivery["payload"], list) else [
            delivery["payload"]]
        if len(events) == 1:  # log lines carry the upload's request id, as the notifier's do
            set_request_id(events[0].get("request_id"))
        what = "%s %s (%s) to %s" % (self.ACTION, delivery["id"], delivery["message_id"],
                                     redact_url(delivery["target"]))
        try:
            await self.channel.send(delivery)
        except DeliveryFailed as exc:
            await self._after_failure(delivery, tries + 1, exc, what)
            return
        except Exception as exc:  # not a try (the database is away, say): let it go at once
            await storage.settle_delivery(delivery["id"], PENDING, tries,
                                          "%s: %s" % (type(exc).__name__, exc))
            raise
        await storage.settle_delivery(delivery["id"], DELIVERED, tries + 1)
        log.info("%s delivered (try %d)", what, tries + 1)
        self.count(DELIVERED)

    async def _after_failure(self, delivery, tries, exc, what):
        storage = self.context.storage
        if exc.final or tries > len(self.delays):
            status = GONE if exc.final else DEAD
            await storage.settle_delivery(delivery["id"], status, tries, str(exc))
            log.error("%s %s after %d tries: %s", what,
                      "stopped" if exc.final else "dead-lettered", tries, exc)
            self.count(status)
            return
        delay = self.delays[tries - 1]
        # The retry is in the broker before the try is recorded: should this process
        # stop in between, the claim sees the retry's try count ahead and waits.
        await self.outbox.publish(delivery, tries, delay=delay)
        await storage.settle_delivery(delivery["id"], PENDING, tries, str(exc))
        log.warning("%s: try %d failed (%s); next in %gs", what, tries, exc, delay)
        self.count("retried")

    def count(self, outcome):
        self.context.metrics.notifications.labels(self.ACTION, outcome).inc()

    async def stop(self, timeout):
        if self.enabled:
            await super().stop(timeout)
            await self.channel.close()


class WebhookSender(DeliverySender):
    QUEUE = "webhook_queue"
    ACTION = "webhook"


class MailSender(DeliverySender):
    """Also closes the digest every MAIL_DIGEST_SECONDS (when set): events the
    notifier gathered in the database become one e-mail.  Gathered events and
    closed digests live in the database, so a restart loses neither."""
    QUEUE = "email_queue"
    ACTION = "email"

    def __init__(self, context):
        super().__init__(context)
        self.period = context.config.mail_digest_seconds
        self._digests = None

    def start(self):
        super().start()
        if self.enabled and self.period > 0:
            self._digests = asyncio.ensure_future(self._close_digests())

    async def _close_digests(self):
        try:
            await self.outbox.resend_unsent_digests(self.ACTION)
        except Exception as exc:
            log.warning("could not look for unsent digests: %s", exc)
        while True:
            await asyncio.sleep(min(self.period, DIGEST_TICK))
            try:
                await self.outbox.close_digest(self.ACTION, self.period)
            except Exception as exc:  # the database or broker is away: next tick
                log.warning("mail digest not closed: %s: %s", type(exc).__name__, exc)

    async def stop(self, timeout):
        if self._digests is not None:
            self._digests.cancel()
            await asyncio.gather(self._digests, return_exceptions=True)
        await super().stop(timeout)


SENDERS = [WebhookSender, MailSender]

