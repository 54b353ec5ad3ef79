"""The processor: upload messages in, validated images in the database, events out.

For each upload: mark it ``processing`` and announce it (``image.processing``, for
live pages); validate it, orient it, read its EXIF and make its thumbnails in
an image worker (Pillow, off the IOLoop and out of its interpreter lock:
``imaging.workers``); store it with its thumbnails and mark it ``stored`` in one transaction; publish
``image.uploaded`` and wait for the broker's confirm; only then is the message
acked.  A redelivered upload finds its request id already stored and only
publishes the event again; the same bytes under the same nickname end
``stored`` pointing at the image stored before, marked duplicate.  A body that
is not a valid image ends ``failed`` with the reason, publishes
``image.failed`` and is acked.  Every final status is final: a redelivered
upload that ended ``stored`` or ``failed`` (dead-lettered included) only
publishes its own final event again; one that was ``refused`` is dropped.

A passing fault (the database down, the event not confirmed) sends the upload
to a retry queue, to come back after a delay that grows with each attempt;
after ``MAX_ATTEMPTS`` it goes to the dead-letter queue instead (see
``consumers.dead_letters``).  An upload redelivered more often than that
without ever finishing (it crashes the processor, say) is dead-lettered
without another try.
"""

import logging

from broker import (DEAD_ROUTING_KEY, IMAGE_FAILED, IMAGE_PROCESSING, IMAGE_UPLOADED,
                    BrokerUnavailable)
from broker.messages import ATTEMPTS_HEADER, ERROR_HEADER
from consumers import run_role
from consumers.base import Consumer
from imaging import InvalidImage
from imaging.process import ImagingSettings, process
from storage import DELETED, FAILED, REFUSED, STORED, NewImage
from uploads import (InvalidUpload, Upload, forward_args, recorded_nickname,
                     usable_request_id)

log = logging.getLogger(__name__)


class Processor(Consumer):
    QUEUE = "upload_queue"

    def __init__(self, context):
        super().__init__(context)
        self.settings = ImagingSettings.from_config(context.config)

    async def handle(self, message):
        storage = self.context.storage
        try:
            upload = Upload.from_message(message)
        except InvalidUpload as exc:
            if not usable_request_id(message.message_id):
                log.warning("dropping an upload message without a usable request id: %s", exc)
                return
            nickname = recorded_nickname((message.headers or {}).get("nickname"))
            failed = await storage.mark_failed(message.message_id, nickname, str(exc))
            if failed["status"] == FAILED:
                await self.publish_event(IMAGE_FAILED, message.message_id, error=str(exc))
            self.count("failed")
            return

        # An upload of the web tier has no row until now: it is written here, dated
        # when the upload was accepted (an id of another client's: now).
        current = await storage.mark_processing(
            upload.request_id, upload.nickname,
            self.context.request_ids.accepted_at(upload.request_id))
        if current["status"] in (REFUSED, STORED, FAILED, DELETED):
            await self.finished_before(upload, current)
            return
        if current["attempts"] > self.context.config.max_attempts:
            await self.dead_letter(message, current["attempts"] - 1, "delivered %d times without "
                                   "finishing (did the processor crash on it?)"
                                   % (current["attempts"] - 1))
            return

        await self.publish_event(IMAGE_PROCESSING, upload.request_id, upload=upload)
        try:
            with self.context.metrics.processing_seconds.time():
                processed = await self.context.image_workers.run(process, upload.data,
                                                                 self.settings)
        except InvalidImage as exc:
            log.info("upload %s failed: %s", upload.request_id, exc)
            await storage.mark_failed(upload.request_id, upload.nickname, str(exc))
            await self.publish_event(IMAGE_FAILED, upload.request_id, upload=upload, error=str(exc))
            self.count("failed")
            return

        image = await storage.store_image(upload.request_id, NewImage(
            upload.nickname, processed.mime_type, processed.data, processed.width,
            processed.height, processed.sha256, processed.taken_at, processed.camera,
            processed.thumbnails))
        if image is None:
            log.info("upload %s: its image was deleted meanwhile; not stored again",
                     upload.request_id)
            return
        log.info("upload %s stored as image %s (%s, %dx%d, %d bytes%s)", upload.request_id,
                 image["id"], image["mime_type"], image["width"], image["height"], image["size"],
                 ", a duplicate" if image["duplicate"] else "")
        await self.publish_event(IMAGE_UPLOADED, upload.request_id, image=image)
        self.count("duplicate" if image["duplicate"] else "stored")

    def count(self, outcome):
        self.context.metrics.processed.labels(outcome).inc()

    async def finished_before(self, upload, current):
        """A redelivered upload that already ended: publish its final event again
        (its message id is the same, so listeners drop the repeat), nothing more."""
        status, image = current["status"], None
        if status == STORED:  # None if the image was deleted since
            image = await self.context.storage.get_image(current["image_id"])
        if status == REFUSED:
            log.info("upload %s was refused at upload (503), dropped", upload.request_id)
        elif status == DELETED or (status == STORED and image is None):
            log.info("upload %s: its image was deleted; not stored again", upload.request_id)
        elif status == STORED:
            log.info("upload %s was stored before (redelivery); image %s",
                     upload.request_id, image["id"])
            await self.publish_event(IMAGE_UPLOADED, upload.request_id,
                                     image=dict(image, duplicate=current["duplicate"]))
        else:
            log.info("upload %s ended failed before (redelivery): %s", upload.request_id,
                     current["error"])
            await self.publish_event(IMAGE_FAILED, upload.request_id, upload=upload,
                                     error=current["error"])

    async def on_failure(self, message, exc):
        config, broker = self.context.config, self.context.broker
        headers = dict(message.headers or {})
        attempt = int(headers.get(ATTEMPTS_HEADER, 0)) + 1
        reason = "%s: %s" % (type(exc).__name__, exc)
        try:
            if attempt >= config.max_attempts:
                await self.dead_letter(message, attempt, reason)
            else:
                delay = config.retry_delays[min(attempt, len(config.retry_delays)) - 1]
                await broker.publish(broker.topology.retry_exchange,
                                     broker.topology.retry_key(delay), mandatory=True,
                                     **forward_args(message, **{ATTEMPTS_HEADER: attempt,
                                                              ERROR_HEADER: reason}))
                log.warning("upload %s: attempt %d of %d failed (%s); next try in %gs",
                            message.message_id, attempt, config.max_attempts, reason, delay)
                self.count("retried")
        except BrokerUnavailable:
            await super().on_failure(message, exc)  # cannot move it: put it back instead
            return
        message.ack()

    async def dead_letter(self, message, attempts, reason):
        """Park the upload in the dead-letter queue (confirmed) for the recorder."""
        broker = self.context.broker
        await broker.publish(broker.topology.dead_exchange, DEAD_ROUTING_KEY, mandatory=True,
                             **forward_args(message, **{ATTEMPTS_HEADER: attempts,
                                                          ERROR_HEADER: reason}))
        log.error("upload %s dead-lettered after %d attempts: %s",
                  message.message_id, attempts, reason)
        self.count("dead_lettered")


if __name__ == "__main__":
    run_role("processor")
