"""The dead-letter recorder: uploads that ran out of attempts, into the database.

The dead-letter queue is where the processor parks an upload it gave up on
(with ``x-attempts`` and ``x-error`` headers).  The recorder keeps each one,
bytes included, in the ``dead_letters`` table, ends its upload ``failed``
(marked dead-lettered, with the reason) and publishes ``image.failed``; it acks
only after both.  If the database is still down it simply waits and tries
again, so nothing is lost while the cause is being fixed.  ``GET /api/failed``
lists what it recorded; ``POST /api/failed/{request_id}/requeue`` sends one back.
"""

import logging

from broker import IMAGE_FAILED
from broker.messages import ATTEMPTS_HEADER, ERROR_HEADER
from consumers.base import Consumer
from uploads import printable, recorded_nickname, usable_request_id

log = logging.getLogger(__name__)


class DeadLetterRecorder(Consumer):
    QUEUE = "dead_queue"

    async def handle(self, message):
        if not usable_request_id(message.message_id):
            log.warning("dropping a dead letter without a usable request id: %r",
                        message.message_id)
            return
        headers = message.headers or {}
        attempts = int(headers.get(ATTEMPTS_HEADER, 0))
        reason = "gave up after %d attempts: %s" % (attempts, printable(headers.get(ERROR_HEADER)))
        upload = await self.context.storage.record_dead_letter(
            message.message_id, recorded_nickname(headers.get("nickname")),
            printable(headers.get("filename")), printable(message.content_type), message.body,
            attempts, reason)
        log.warning("upload %s recorded as a dead letter: %s", message.message_id, reason)
        if upload["status"] != "stored":
            await self.publish_event(IMAGE_FAILED, message.message_id, error=reason)
