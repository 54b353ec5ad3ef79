"""The notifier: ``image.*`` events in, actions out.

Each event runs every configured action once: an action that succeeded is
recorded under the event's message id, so a redelivered event skips it (and
runs only the ones that had not finished).  ``log`` writes a line here; the
webhook and e-mail actions only record their deliveries and hand them to
their senders (``notify``, ``consumers/deliveries.py``), so no endpoint ever
holds back this queue.  NOTIFY_ACTIONS picks which run.
"""

import asyncio
import functools
import json
import logging

from broker.messages import event_message_id
from consumers import run_role
from consumers.base import Consumer
from logs import set_request_id
from notify import enabled_actions
from notify.outbox import Outbox

log = logging.getLogger(__name__)
events_log = logging.getLogger("photo_app.notifications")


async def log_action(event, key=None):
    """One structured line per event."""
    events_log.info("notification %s", json.dumps(event, sort_keys=True))


def configured_actions(context):
    """The actions NOTIFY_ACTIONS enables, by name: each ``async action(event, key)``."""
    outbox = Outbox(context)
    return {name: log_action if name == "log" else functools.partial(outbox.enqueue, name)
            for name in enabled_actions(context.config)}


class Notifier(Consumer):
    QUEUE = "notifications_queue"

    def __init__(self, context, actions=None):
        super().__init__(context)
        self.actions = dict(actions or configured_actions(context))
        self._running = {}  # event key -> future done when its delivery has finished

    async def handle(self, message):
        try:
            event = json.loads(message.body)
            key = message.message_id or event_message_id(event["event"], event["request_id"])
            set_request_id(event.get("request_id") if isinstance(event, dict) else None)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dropping a notification that breaks the contract (%s): %r",
                        exc, message.body[:200])
            return
        # The same event delivered twice at once (prefetch > 1) would pass event_done()
        # twice before either records: one delivery of an event at a time.
        while key in self._running:
            await asyncio.wait([self._running[key]])
        finished = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            storage = self.context.storage
            for name, action in self.actions.items():
                done_key = "%s:%s" % (name, key)
                if await storage.event_done(done_key):
                    continue
                await action(event, key)
                await storage.record_event(done_key)
                # The log action is done here; webhook and e-mail are queued for their
                # senders, which count how each delivery ends (consumers/deliveries.py).
                self.context.metrics.notifications.labels(
                    name, "delivered" if name == "log" else "queued").inc()
        finally:
            del self._running[key]
            finished.set_result(None)


if __name__ == "__main__":
    run_role("notifier")
