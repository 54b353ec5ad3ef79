"""The processor: upload messages in, validated images in the database, events out.

For each upload: mark it ``processing``; validate it, orient it, read its EXIF
and make its thumbnails in the image executor (Pillow, off the IOLoop); store
it with its thumbnails and mark it ``stored`` in one transaction; publish
``image.uploaded`` and wait for the broker's confirm; only then is the message
acked.  A redelivered upload finds its request id already stored and only
publishes the event again; the same bytes under the same nickname end
``stored`` pointing at the image stored before, marked duplicate.  A body that
is not a valid image ends ``failed`` with the reason, publishes
``image.failed`` and is acked.
"""

import asyncio
import sys
import logging

from broker import IMAGE_FAILED, IMAGE_UPLOADED
from broker.messages import InvalidUpload, Upload, event_message_id, image_event
from consumers.base import Consumer
from imaging import InvalidImage
from imaging.process import ImagingSettings, process
from storage import STORED, NewImage

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
            if not message.message_id:
                log.warning("dropping an upload message without a request id: %s", exc)
                return
            nickname = str((message.headers or {}).get("nickname") or "")[:100]
            await storage.mark_failed(message.message_id, nickname, str(exc))
            await self._publish(IMAGE_FAILED, message.message_id, error=str(exc))
            return

        current = await storage.mark_processing(upload.request_id, upload.nickname)
        if current["status"] == STORED:
            image = await storage.get_image(current["image_id"])
            log.info("upload %s was stored before (redelivery); image %s",
                     upload.request_id, image["id"])
            await self._publish(IMAGE_UPLOADED, upload.request_id, image=image)
            return

        try:
            processed = await asyncio.get_running_loop().run_in_executor(
                self.context.image_executor, process, upload.data, self.settings)
        except InvalidImage as exc:
            log.info("upload %s failed: %s", upload.request_id, exc)
            await storage.mark_failed(upload.request_id, upload.nickname, str(exc))
            await self._publish(IMAGE_FAILED, upload.request_id, upload=upload, error=str(exc))
            return

        image = await storage.store_image(upload.request_id, NewImage(
            upload.nickname, processed.mime_type, processed.data, processed.width,
            processed.height, processed.sha256, processed.taken_at, processed.camera,
            processed.thumbnails))
        log.info("upload %s stored as image %s (%s, %dx%d, %d bytes%s)", upload.request_id,
                 image["id"], image["mime_type"], image["width"], image["height"], image["size"],
                 ", a duplicate" if image["duplicate"] else "")
        await self._publish(IMAGE_UPLOADED, upload.request_id, image=image)

    async def _publish(self, event, request_id, **details):
        broker = self.context.broker
        await broker.publish(broker.topology.events_exchange, event,
                             image_event(event, request_id, **details),
                             message_id=event_message_id(event, request_id),
                             content_type="application/json")


if __name__ == "__main__":
    import server
    server.main(["--role=processor", *sys.argv[1:]])
