"""Accepting uploads: check the request, hand the bytes to the broker, answer 202.

The body is streamed in (``stream_request_body``) so the size limit is judged
from ``Content-Length`` before anything is buffered, and a body that grows past
it is cut off.  The upload is answered ``202`` only after the broker confirmed
the message; when it cannot (no connection, nack, return, timeout) the answer is
``503`` with ``Retry-After`` and the upload's row is marked ``refused``, which
tells the processor to drop the message should it arrive after all (a confirm
that timed out); an upload is either safely in the broker or refused, never both.
"""

import logging
import re
import uuid

import tornado.web
from tornado.httputil import HTTPInputError, parse_body_arguments

import imaging
from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable
from broker.messages import InvalidUpload, Upload, clean_nickname
from handlers.base import ApiError, BaseHandler
from handlers.openapi import UPLOAD_BODY, json_answer, operation, ref, upload_refusals
from logs import set_request_id

log = logging.getLogger(__name__)

# Room for the multipart framing and the nickname around the image itself.
MULTIPART_OVERHEAD = 64 * 1024
RETRY_AFTER = 5
# A Content-Length past this many digits is over any limit (and int() refuses
# strings of more than 4300 digits).
LENGTH_DIGITS = 18


def declared_length(value):
    """``Content-Length`` as an int; None when absent or not plain ASCII digits
    (Tornado answers those 400 itself when it reads the body).  Not
    ``str.isdigit``: it passes ``"²"`` (a Latin-1 header byte), which ``int`` refuses."""
    if value is None or not re.fullmatch(r"[0-9]+", value):
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= LENGTH_DIGITS else 10 ** LENGTH_DIGITS


@tornado.web.stream_request_body
class UploadHandler(BaseHandler):
    """``POST /api/images`` with multipart fields ``nickname`` and ``image_data``."""

    def check_xsrf_cookie(self):
        pass  # anonymous uploads from programs carry no one's authority

    def prepare(self):
        self._chunks, self._received = [], 0
        self._limit = self.config.max_upload_bytes + MULTIPART_OVERHEAD
        length = declared_length(self.request.headers.get("Content-Length"))
        if length is not None and length > self._limit:
            raise self.too_large()  # answered before a byte of the body is read
        # A body without Content-Length (chunked) is counted in data_received;
        # Tornado's own cut-off sits above ours so that ours answers first.
        self.request.connection.set_max_body_size(2 * self._limit)

    def data_received(self, chunk):
        if self._chunks is None:
            return  # already refused
        self._received += len(chunk)
        if self._received > self._limit:
            self._chunks = None
            error = self.too_large()
            self.send_error(413, exc_info=(type(error), error, None))
            return
        self._chunks.append(chunk)

    def too_large(self):
        return ApiError(413, "image too large", "the limit is %d bytes"
                        % self.config.max_upload_bytes)

    @operation(summary="Upload an image", tags=["images"], requestBody=UPLOAD_BODY,
               responses={202: json_answer("queued: the broker has it", ref("UploadAccepted")),
                          **upload_refusals()})
    async def post(self):
        if self._finished:
            return  # refused while the body streamed in
        upload = self.read_upload()
        set_request_id(upload.request_id)
        await self.accept(upload)
        self.write_json({"request_id": upload.request_id, "status": "queued",
                         "status_url": "/api/uploads/%s" % upload.request_id}, status=202)

    def read_upload(self):
        """The Upload in the request body, or the ApiError that refuses it."""
        body, self._chunks = b"".join(self._chunks), None
        arguments, files = {}, {}
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "bad request", "send multipart/form-data with the fields "
                           "nickname and image_data")
        try:
            parse_body_arguments(content_type, body, arguments, files, self.request.headers)
        except HTTPInputError as exc:
            raise ApiError(400, "bad request", "malformed multipart body: %s" % exc) from None
        try:
            nickname = clean_nickname(b"".join(arguments.get("nickname", [b""])[:1])
                                      .decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "bad nickname", "nickname is not valid UTF-8") from None
        except InvalidUpload as exc:
            raise ApiError(400, "bad nickname", str(exc)) from None
        uploaded = files.get("image_data")
        if not uploaded or not uploaded[0].body:
            raise ApiError(400, "missing file", "attach the image as the field image_data")
        data = uploaded[0].body
        if len(data) > self.config.max_upload_bytes:
            raise self.too_large()
        mime_type = imaging.sniff_mime(data)
        if mime_type not in self.config.accepted_types:
            raise ApiError(415, "unsupported image type",
                           "the file is not one of %s" % ", ".join(self.config.accepted_types))
        return Upload(uuid.uuid4().hex, nickname, uploaded[0].filename or "", mime_type, data)

    async def accept(self, upload):
        """Record the upload as queued and publish it; 503 unless the broker confirms."""
        broker = self.context.broker
        if not broker.ready:
            raise self.unavailable("the message broker is not connected")
        await self.context.storage.create_upload(upload.request_id, upload.nickname)
        try:
            await broker.publish(broker.topology.upload_exchange, UPLOAD_ROUTING_KEY,
                                 mandatory=True, **upload.publish_args())
        except BrokerUnavailable as exc:
            # The broker may still hold it (a confirm that timed out): the row
            # decides.  Marked refused, the processor will drop it; already taken
            # by the processor, it is in the broker after all, and accepted.
            if await self.context.storage.refuse_upload(upload.request_id, str(exc)):
                log.warning("upload %s refused: %s", upload.request_id, exc)
                raise self.unavailable(str(exc)) from None
            log.warning("upload %s: %s, but the processor already has it", upload.request_id, exc)
        log.info("upload %s accepted: %s, %d bytes, nickname %r", upload.request_id,
                 upload.mime_type, len(upload.data), upload.nickname)

    @staticmethod
    def unavailable(detail):
        return ApiError(503, "upload not accepted, try again", detail, retry_after=RETRY_AFTER)
