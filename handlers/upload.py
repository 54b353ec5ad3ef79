"""Accepting uploads: read the request, hand the bytes to the broker, answer 202.

``accept_upload`` is the one use case behind every route that takes an upload
(``POST /api/images``, the seed's ``POST /``, the operator's requeue): publish
the upload, and answer ``202`` only once the broker confirmed it.  Nothing is
written to the database for a new upload: its request id is one the service
recognises (``uploads.RequestIds``), so the status route answers ``queued`` for
it until the processor writes its row.  When the broker does not confirm (nack,
return, timeout, a connection lost) a ``refused`` row is written, unless the
processor's row is there already (a requeued upload goes back to its dead
letter), before the ``503``: should the message reach the processor after all
(a confirm that timed out), the processor drops it.  While the broker is not
connected an upload is refused before it gets a request id, writing nothing.
An upload is either safely in the broker or refused, never both; when even the
refusal cannot be written (the database is down too) the answer is ``504``,
"outcome unknown", naming the status to follow, and the refusal is written as
soon as the database answers.

``UploadBody`` is the body-reading part, composed into the handlers of the
upload routes: the body streams into one buffer, grown a chunk at a time
(refused before a byte is read when its ``Content-Length`` is over the size
limit, or when the uploads in flight already hold ``MAX_INFLIGHT_UPLOAD_BYTES``),
each chunk is searched for the multipart delimiters as it arrives, and the
image is a view into that buffer: for a well-formed body no step of the IOLoop
scans or zeroes it whole, and the in-process broker writes the view (RabbitMQ's
client, pika, takes a bytes copy).
"""

import asyncio
import logging
import re
import uuid

from tornado.httputil import HTTPFile, HTTPInputError, parse_multipart_form_data

import imaging
from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable
from handlers.base import ApiError
from metrics import upload_outcome
from storage import StorageError
from uploads import InvalidUpload, Upload, clean_nickname

log = logging.getLogger(__name__)

# Room for the multipart framing and the nickname around the image itself.
MULTIPART_OVERHEAD = 64 * 1024
RETRY_AFTER = 5
# A Content-Length past this many digits is over any limit (and int() refuses
# strings of more than 4300 digits).
LENGTH_DIGITS = 18
# Tornado's own limits on a multipart body (tornado.httputil.ParseMultipartConfig).
MAX_PARTS, MAX_PART_HEADER = 100, 10 * 1024
# What a refused upload's status says (the broker's own words go to the log).
REFUSED_WORDS = "the service was busy and did not take the upload; send it again"
# Waits between attempts at writing a refusal the database did not take.
SETTLE_DELAY, MAX_SETTLE_DELAY = 0.5, 30.0
_settling = set()  # those attempts, running


def declared_length(value):
    """``Content-Length`` as an int; None when absent or not plain ASCII digits
    (Tornado answers those 400 itself when it reads the body).  Not
    ``str.isdigit``: it passes ``"²"`` (a Latin-1 header byte), which ``int`` refuses."""
    if value is None or not re.fullmatch(r"[0-9]+", value):
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= LENGTH_DIGITS else 10 ** LENGTH_DIGITS


def queued(request_id):
    """The ``202`` answer's fields."""
    return {"request_id": request_id, "status": "queued",
            "status_url": "/api/uploads/%s" % request_id}


def not_accepted(detail):
    return ApiError(503, "upload not accepted, try again", detail, retry_after=RETRY_AFTER)


# -- accept an upload ---------------------------------------------------------------

async def accept_upload(context, upload, requeue=False):
    """Publish ``upload``, confirmed; return once the broker holds it.  Nothing is
    written for a new upload: the processor writes its row when it begins it, and
    the status route knows it from its request id until then.  Raises the ApiError
    to answer otherwise: ``503`` (refused, recorded so), ``504`` (outcome
    unknown).  ``requeue``: ``upload`` is a dead letter sent back; its row is reset
    first, and its dead letter, the only copy of the bytes until the broker
    confirmed, is removed only then.  The bytes are handed to the
    broker: ``upload.data`` is None from the publish on, so that while the confirm
    is awaited the broker's copy (RabbitMQ: pika's frames, waiting to be sent) is
    the only one."""
    storage, broker = context.storage, context.broker
    if requeue:
        await storage.requeue_dead_letter(upload.request_id)
    size = len(upload.data)
    publishing = broker.publish(broker.topology.upload_exchange, UPLOAD_ROUTING_KEY,
                                mandatory=True, **upload.publish_args())
    upload.data = None
    try:
        await publishing
    except BrokerUnavailable as exc:
        log.warning("upload %s: the broker did not take it: %s", upload.request_id, exc)
        await withdraw(context, upload, requeue)
    if requeue:
        try:
            await storage.forget_dead_letter(upload.request_id)
        except StorageError as exc:  # a spare copy: it stays listed, requeueing it is harmless
            log.warning("upload %s requeued, but its dead letter stays: %s",
                        upload.request_id, exc)
    # The access log line says it was answered 202, under its request id.
    log.debug("upload %s accepted: %s, %d bytes, nickname %r", upload.request_id,
              upload.mime_type, size, upload.nickname)


def check_broker(context, request_id):
    """The 503 to answer, before anything of an upload is issued or written, while
    the broker cannot take it."""
    if not context.broker.ready:
        log.warning("upload %s not accepted: the broker is not connected", request_id)
        raise not_accepted("the message broker is not connected; send the upload again "
                           "in a few seconds")


def _undo(upload, requeue):
    """The storage call that takes back a publish the broker did not confirm."""
    if requeue:
        return lambda storage: storage.restore_dead_letter(upload.request_id)
    return lambda storage: storage.refuse_upload(upload.request_id, upload.nickname,
                                                 REFUSED_WORDS)


async def withdraw(context, upload, requeue):
    """Take back an upload whose publish was not confirmed (the broker may still
    hold it: the row decides).  Raises the 503 once it is marked; returns when the
    processor had already taken it (it is in the broker after all: accepted);
    raises the 504 when the database could not record it, and keeps trying."""
    request_id = upload.request_id
    undo = _undo(upload, requeue)
    try:
        undone = await undo(context.storage)
    except StorageError as exc:
        log.warning("upload %s: its refusal could not be recorded (%s); answered 504 and "
                    "trying again", request_id, exc)
        task = asyncio.ensure_future(_settle(context, request_id, undo))
        _settling.add(task)
        task.add_done_callback(_settling.discard)
        raise ApiError(504, "upload outcome unknown",
                       "the message broker did not confirm the upload, and it could not be "
                       "marked refused: it may still be stored. Follow status_url before "
                       "sending it again.", fields=queued(request_id)) from None
    if undone:
        raise not_accepted("the message broker did not take the upload; send it again in "
                           "a few seconds")
    log.warning("upload %s: the processor already has it, so it is accepted", request_id)


async def _settle(context, request_id, undo):
    """Write a refusal the database did not take, as soon as it answers."""
    delay = SETTLE_DELAY
    while True:
        await asyncio.sleep(delay)
        try:
            undone = await undo(context.storage)
        except StorageError as exc:
            delay = min(delay * 2, MAX_SETTLE_DELAY)
            log.warning("upload %s: refusal still not recorded (%s)", request_id, exc)
            continue
        log.info("upload %s: %s", request_id, "refusal recorded" if undone
                 else "the processor had it after all")
        return


# -- reading the body -----------------------------------------------------------------

class UploadBody:
    """The body of an upload POST, for a ``@stream_request_body`` handler (list it
    before BaseHandler).  ``read_upload()`` gives the Upload in it.

    The body goes into one buffer, a bytearray that grows as the chunks arrive (to
    at most ``Content-Length``, or the limit for a chunked body).  Not one sized
    up front: ``bytearray(n)`` zeroes all of it in one IOLoop step, and for fresh
    memory that is a page fault per 4 KiB, 2-3 ms for a 4.4 MB photo while every
    other request waits; grown, the memory is touched a chunk at a time.  Its
    declared size counts towards ``MAX_INFLIGHT_UPLOAD_BYTES`` from ``prepare``
    until the request ends, however it ends; an upload past that is answered 503
    before its body is read."""

    _body, _reserved, _delimiters = None, 0, None

    def check_xsrf_cookie(self):
        pass  # anonymous uploads carry no one's authority (README, "XSRF")

    def prepare(self):
        super().prepare()
        self._body, self._reserved, self._delimiters = None, 0, None
        if self.request.method != "POST":
            return
        self._limit = self.config.max_upload_bytes + MULTIPART_OVERHEAD
        length = declared_length(self.request.headers.get("Content-Length"))
        if length is not None and length > self._limit:
            raise self.too_large()  # answered before a byte of the body is read
        self._reserve(self._limit if length is None else length)
        self._body = bytearray()
        self._delimiters = Delimiters.of(self.request.headers.get("Content-Type", ""))
        # A body without Content-Length (chunked) is counted in data_received;
        # Tornado's own cut-off sits above ours so that ours answers first.
        self.request.connection.set_max_body_size(2 * self._limit)

    def _reserve(self, size):
        context = self.context
        if context.inflight_upload_bytes + size > self.config.max_inflight_upload_bytes:
            log.warning("request %s: %d bytes of uploads in flight; %d more refused",
                        self.request_id, context.inflight_upload_bytes, size)
            raise not_accepted("the service is receiving as many uploads as it can hold; "
                               "send it again in a few seconds")
        context.inflight_upload_bytes += size
        self._reserved = size

    def _release(self):
        self.context.inflight_upload_bytes -= self._reserved
        self._reserved = 0

    def on_finish(self):
        self._release()
        if self.request.method == "POST":  # every way an upload POST is answered ends here
            self.context.metrics.uploads.labels(upload_outcome(self.get_status())).inc()
        super().on_finish()

    def on_connection_close(self):
        self._release()
        super().on_connection_close()

    def data_received(self, chunk):
        if self._body is None:
            return  # already refused
        # Only a chunked body can pass the limit: Tornado stops at Content-Length.
        if len(self._body) + len(chunk) > self._limit:
            self._body = None
            error = self.too_large()
            self.send_error(413, exc_info=(type(error), error, None))
            return
        self._body += chunk
        if self._delimiters is not None:
            self._delimiters.scan(self._body)

    def too_large(self):
        return ApiError(413, "image too large", "the limit is %d bytes"
                        % self.config.max_upload_bytes)

    def read_upload(self):
        """The Upload in the request body, under a new request id, or the ApiError
        that refuses it; None when the request was answered already (refused while
        the body streamed)."""
        if self._finished:
            return None
        body, self._body = self._body, None
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "bad request", "send multipart/form-data with the fields "
                           "nickname and image_data")
        try:
            arguments, files = parse_multipart(content_type, body, self.request.headers,
                                               self._delimiters)
        except HTTPInputError as exc:
            raise ApiError(400, "bad request", "malformed multipart body: %s" % exc) from None
        try:
            nickname = clean_nickname(bytes(arguments.get("nickname", [b""])[0])
                                      .decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "bad nickname", "nickname is not valid UTF-8") from None
        except InvalidUpload as exc:
            raise ApiError(400, "bad nickname", str(exc)) from None
        uploaded = files.get("image_data")
        if not uploaded or not len(uploaded[0].body):
            raise ApiError(400, "missing file", "attach the image as the field image_data")
        if len(uploaded[0].body) > self.config.max_upload_bytes:
            raise self.too_large()
        mime_type = imaging.sniff_mime(uploaded[0].body)
        if mime_type not in self.config.accepted_types:
            raise ApiError(415, "unsupported image type",
                           "the file is not one of %s" % ", ".join(self.config.accepted_types))
        # From here on the request goes by the upload's own request id, one the
        # status route recognises from the moment the 202 leaves.  Issued only
        # while the broker is connected: an id issued and then refused with
        # nothing recorded would read ``queued`` for ever.  (The caller publishes
        # right after this returns, with nothing awaited in between.)
        check_broker(self.context, self.request_id)
        self.request_id = self.context.request_ids.issue()
        # No copy: the image is a view into the request's buffer, which goes with it.
        return Upload(self.request_id, nickname, uploaded[0].filename or "", mime_type,
                      uploaded[0].body)


def parse_multipart(content_type, body, headers, delimiters=None):
    """``(arguments, files)`` of a multipart/form-data ``body``, as Tornado's
    ``parse_body_arguments`` gives them (same rules, same errors), except that
    each value is a memoryview into ``body`` instead of a copy: Tornado's parser
    copies the body twice more (``data[:end].split(...)``, then each part's value).
    ``delimiters``: the body's ``Delimiters``, found as it arrived; without them
    the whole body is searched here."""
    if "Content-Encoding" in headers:
        raise HTTPInputError("Unsupported Content-Encoding: %s" % headers["Content-Encoding"])
    try:
        boundary = multipart_boundary(content_type)
        if delimiters is None or delimiters.boundary != boundary:
            delimiters = Delimiters(boundary)
        return _parts(delimiters, body)
    except Exception as exc:
        raise HTTPInputError("Invalid multipart/form-data: %s" % exc) from exc


def multipart_boundary(content_type):
    """The boundary (bytes) of a multipart/form-data ``content_type``."""
    fields = content_type.split(";")
    if fields[0].strip() != "multipart/form-data":
        raise HTTPInputError("Invalid content type")
    for field in fields:
        key, _, value = field.strip().partition("=")
        if key == "boundary" and value:
            boundary = value.encode("utf-8")
            if boundary.startswith(b'"') and boundary.endswith(b'"'):
                boundary = boundary[1:-1]
            return boundary
    raise HTTPInputError("multipart boundary not found")


class Delimiters:
    """Where the delimiter lines (``--boundary\\r\\n``) of a multipart body are,
    found while the body arrives: each chunk is searched once, as it comes, rather
    than the whole body in one IOLoop step at its end (1-2 ms for 4.4 MB, while
    every other request waits).  The same positions, left to right and not
    overlapping, as one ``find`` after another over the whole body; at most
    ``MAX_PARTS`` of them (a body with that many is refused)."""

    def __init__(self, boundary):
        self.boundary = boundary
        self.delimiter = b"--" + boundary + b"\r\n"
        self.found = []
        self.scanned = 0  # where the next search starts

    @classmethod
    def of(cls, content_type):
        """Those of a body of ``content_type``; None when it has no boundary (the
        body is refused when it is parsed)."""
        try:
            return cls(multipart_boundary(content_type))
        except HTTPInputError:
            return None

    def scan(self, body):
        """Search ``body``, the body so far, from where the last search left off."""
        end = len(body)
        size = len(self.delimiter)
        while len(self.found) < MAX_PARTS:
            found = body.find(self.delimiter, self.scanned, end)
            if found == -1:
                break
            self.found.append(found)
            self.scanned = found + size
        self.scanned = max(self.scanned, end - size + 1)  # one may straddle the next chunk


def _parts(delimiters, body):
    final = body.rfind(b"--" + delimiters.boundary + b"--")
    if final == -1:
        raise HTTPInputError("Invalid multipart/form-data: no final boundary found")
    delimiters.scan(body)  # what did not arrive through data_received, if any
    size = len(delimiters.delimiter)
    found = [at for at in delimiters.found if at + size <= final]
    if len(found) >= MAX_PARTS:
        raise HTTPInputError("multipart/form-data has too many parts")
    spans = zip([0] + [at + size for at in found], found + [final])
    view, arguments, files = memoryview(body), {}, {}
    for start, end in spans:
        if start == end:
            continue
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end == -1:
            raise HTTPInputError("multipart/form-data missing headers")
        if head_end - start > MAX_PART_HEADER:
            raise HTTPInputError("multipart/form-data part header too large")
        if body[end - 2:end] != b"\r\n":
            raise HTTPInputError("Invalid multipart/form-data")
        name, file = _part_head(bytes(view[start:head_end]))
        value = view[head_end + 4:end - 2]
        if file is None:
            arguments.setdefault(name, []).append(value)
        else:
            files.setdefault(name, []).append(HTTPFile(filename=file.filename, body=value,
                                                       content_type=file.content_type))
    return arguments, files


def _part_head(head):
    """``(name, HTTPFile or None)`` from one part's headers, read by Tornado's own
    parser (the headers alone, with an empty value), so that its rules hold here."""
    boundary = uuid.uuid4().hex.encode()
    while boundary in head:
        boundary = uuid.uuid4().hex.encode()
    arguments, files = {}, {}
    parse_multipart_form_data(boundary, b"--%s\r\n%s\r\n\r\n\r\n--%s--" % (
        boundary, head, boundary), arguments, files)
    for name, [file] in files.items():
        return name, file
    for name in arguments:
        return name, None
