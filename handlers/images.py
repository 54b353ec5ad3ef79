"""Reading images: metadata, the newest-first listing, and the bytes (originals
and thumbnails) through the cache."""

import base64
import hashlib
import re

import tornado.web

from broker import IMAGE_DELETED, BrokerUnavailable
from broker.messages import deletion_event
from cache import CachedImage, content_key, forget_image, thumbnail_key
from handlers.base import ApiError, BaseHandler
from handlers.openapi import (UPLOAD_BODY, error, json_answer, operation, operator, ref,
                              unavailable, unknown, upload_refusals)
from handlers.upload import REFUSED_WORDS, UploadBody, accept_upload, queued
from imaging import SUPPORTED_TYPES
from storage import QUEUED, REFUSED

# The bytes under one id never change, but a deleted image should leave the caches
# of browsers and proxies that kept it: a day, not a year.
IMMUTABLE = "public, max-age=86400, immutable"
RETRY_AFTER = 5
# Image bytes are never a document: no script, no plugin, no same-origin rights.
BYTES_POLICY = "default-src 'none'; sandbox"
DEFAULT_LIMIT, MAX_LIMIT = 24, 100
LIST_PARAMETERS = [
    {"name": "nickname", "in": "query", "schema": {"type": "string"},
     "description": "only this nickname's images (trimmed; empty: everyone's)"},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "next_cursor from the previous page"},
]
LIST_ERRORS = ("a limit outside 1-%d, a cursor that is not a next_cursor, a parameter "
               "given twice" % MAX_LIMIT)
CURSOR = re.compile(r"[A-Za-z0-9_-]{1,40}")
CURSOR_TEXT = re.compile(r"before:([1-9][0-9]{0,17})")


def image_json(image, thumbnail_sizes):
    """The public form of an image's metadata, with the addresses of its bytes."""
    return dict(
        image, format=image["mime_type"].split("/", 1)[1],
        url="/api/images/%s/content" % image["id"],
        thumbnails={str(size): "/api/images/%s/thumbnail?size=%d" % (image["id"], size)
                    for size in thumbnail_sizes})


def not_found(image_id):
    return ApiError(404, "unknown image", "no image has id %s" % image_id)


async def through_cache(context, key, load):
    """The CachedImage under ``key``: from the cache, or else from ``load()``
    (then cached); None when ``load`` finds nothing."""
    cache = context.cache
    entry, result = await cache.lookup(key)
    context.metrics.cache_results[result].inc()
    if entry is None:
        entry = await load()
        if entry is not None:
            await cache.set(key, entry)
    return entry


async def cached_content(context, image_id):
    """An image's original bytes (ETag: their sha256), or None."""
    async def load():
        found = await context.storage.get_image_content(image_id)
        if found is not None:
            data, mime_type, sha256 = found
            return CachedImage(data, mime_type, '"%s"' % sha256)
    return await through_cache(context, content_key(image_id), load)


async def cached_thumbnail(context, image_id, size):
    """An image's thumbnail of ``size`` (ETag: its sha256), or None."""
    async def load():
        found = await context.storage.get_thumbnail(image_id, size)
        if found is not None:
            data, mime_type, _width, _height = found
            return CachedImage(data, mime_type, '"%s"' % hashlib.sha256(data).hexdigest())
    return await through_cache(context, thumbnail_key(image_id, size), load)


def encode_cursor(image_id):
    """The opaque cursor for "images older than ``image_id``"."""
    return base64.urlsafe_b64encode(b"before:%d" % image_id).decode("ascii").rstrip("=")


def decode_cursor(cursor):
    """The id a cursor from ``encode_cursor`` stands for, or a 400."""
    match = None
    if CURSOR.fullmatch(cursor):
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            match = CURSOR_TEXT.fullmatch(text)
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            pass
    if match is None:
        raise ApiError(400, "bad cursor", "cursor must be a next_cursor from an earlier answer")
    return int(match.group(1))


def parse_limit(value):
    """``limit`` from a query: DEFAULT_LIMIT when absent, 1..MAX_LIMIT, else a 400."""
    if value is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError(400, "bad limit", "limit must be a whole number from 1 to %d"
                       % MAX_LIMIT)
    return int(value)


async def list_page(storage, nickname="", cursor="", limit=DEFAULT_LIMIT):
    """``(images, next_cursor)``: one page, newest first, of ``nickname``'s images
    (everyone's if empty) older than ``cursor``; ``next_cursor`` is None on the
    last page.  Keyset pagination by id: no repeats or gaps while uploads arrive."""
    before_id = decode_cursor(cursor) if cursor else None
    images = await storage.list_images(nickname=nickname.strip() or None,
                                       before_id=before_id, limit=limit + 1)
    next_cursor = encode_cursor(images[limit - 1]["id"]) if len(images) > limit else None
    return images[:limit], next_cursor


async def find_upload(context, request_id):
    """An upload's status: its row; else, for a request id this service issued,
    ``queued`` since it was issued (the processor writes the row when it begins
    the upload, and a refusal writes one ``refused``); else None."""
    upload = await context.storage.get_upload(request_id)
    if upload is not None:
        return upload
    accepted_at = context.request_ids.accepted_at(request_id)
    if accepted_at is None:
        return None
    return {"request_id": request_id, "nickname": None, "status": QUEUED, "image_id": None,
            "duplicate": False, "error": None, "attempts": 0, "dead_lettered": False,
            "created_at": accepted_at, "updated_at": accepted_at}


def public_upload(upload):
    """An upload's status as its uploader sees it.  A dead letter's reason may
    quote a driver: the uploader gets plain words, the operator the reason in
    full (``GET /api/failed``)."""
    if upload["status"] == REFUSED:
        return dict(upload, error=REFUSED_WORDS)
    if upload["dead_lettered"]:
        return dict(upload, error="it could not be processed after %d attempts; it is kept "
                    "for an operator to send again" % upload["attempts"])
    return upload


@tornado.web.stream_request_body
class ImagesHandler(UploadBody, BaseHandler):
    """``/api/images``: ``POST`` is the upload (multipart ``nickname`` and
    ``image_data``), answered 202 once the broker has it; ``GET`` lists
    ``{"images": [...], "next_cursor"}`` newest first, with ``nickname``,
    ``limit`` (default 24, at most 100) and ``cursor`` from the query."""

    @operation(summary="Upload an image", tags=["images"], requestBody=UPLOAD_BODY,
               responses={202: json_answer("queued: the broker has it", ref("UploadAccepted")),
                          **upload_refusals()})
    async def post(self):
        upload = self.read_upload()
        if upload is not None:
            await accept_upload(self.context, upload)
            self.write_json(queued(upload.request_id), status=202)

    @operation(summary="Image metadata, newest first, a page at a time", tags=["images"],
               parameters=LIST_PARAMETERS, responses={
                   200: json_answer("one page", ref("ImageList")),
                   400: error(LIST_ERRORS), 503: unavailable()})
    async def get(self):
        limit = parse_limit(self.query_argument("limit"))
        images, next_cursor = await list_page(
            self.context.storage, self.query_argument("nickname", ""),
            self.query_argument("cursor", ""), limit)
        sizes = self.config.thumbnail_sizes
        self.write_json({"images": [image_json(image, sizes) for image in images],
                         "next_cursor": next_cursor})


class UploadStatusHandler(BaseHandler):
    """``GET /api/uploads/{request_id}``: where an upload is in its life."""

    @operation(summary="Where an upload is", tags=["images"], responses={
        200: json_answer("its status", ref("Upload")), 404: unknown(), 503: unavailable()})
    async def get(self, request_id):
        self.request_id = request_id
        upload = await find_upload(self.context, request_id)
        if upload is None:
            raise ApiError(404, "unknown upload", "no upload has request id %s" % request_id)
        if upload["image_id"] is not None:
            upload["image_url"] = "/api/images/%s" % upload["image_id"]
        self.write_json(public_upload(upload))


class ImageHandler(BaseHandler):
    """``GET /api/images/{id}``: an image's metadata; ``DELETE``: remove it (operator)."""

    operator_methods = ("DELETE",)

    @operation(summary="An image's metadata", tags=["images"], responses={
        200: json_answer("its metadata", ref("Image")), 404: unknown(), 503: unavailable()})
    async def get(self, image_id):
        image = await self.context.storage.get_image(int(image_id))
        if image is None:
            raise not_found(image_id)
        self.write_json(image_json(image, self.config.thumbnail_sizes))

    @operation(**operator(summary="Delete an image, everywhere", tags=["operator"], responses={
        204: {"description": "deleted, and every web node told"},
        404: error("no image has that id (or it is already deleted)"),
        503: unavailable("deleted but not yet announced (send the same DELETE again), or "
                         "the database is unavailable")}))
    async def delete(self, image_id):
        self.require_operator()
        if not await delete_image(self.context, int(image_id)):
            raise not_found(image_id)
        self.set_status(204)
        self.finish()


async def delete_image(context, image_id):
    """Remove an image everywhere: the database (image, thumbnails, a tombstone, its
    uploads ``deleted``), the cache, and, through the confirmed ``image.deleted``
    event, every web process's memory.  False if there is no such image.

    Should the event not be confirmed, the caller answers 503 and the tombstone
    remembers it: the same DELETE sent again announces it, and only then is a
    further DELETE a 404."""
    storage = context.storage
    image = await storage.delete_image(image_id)
    if image is None:
        image = await storage.deleted_image(image_id)
        if image is None or image["announced"]:
            return False
    await forget_image(context.cache, image_id, context.config.thumbnail_sizes)
    broker = context.broker
    message_id, body = deletion_event(image_id, image["nickname"], image["request_id"])
    try:
        await broker.publish(broker.topology.events_exchange, IMAGE_DELETED, body,
                             message_id=message_id, content_type="application/json")
    except BrokerUnavailable:
        raise ApiError(503, "deleted, but not yet announced",
                       "the image is deleted; send the same DELETE again so that every "
                       "web node hears of it", retry_after=RETRY_AFTER) from None
    await storage.mark_deletion_announced(image_id)
    return True


class ImmutableBytesHandler(BaseHandler):
    """Bytes that never change once stored: ETag, 304 and a day of caching."""

    content_security_policy = BYTES_POLICY

    def serve(self, image_id, entry):
        if entry is None:
            raise not_found(image_id)
        self.set_header("Content-Type", entry.mime_type)
        self.set_header("Cache-Control", IMMUTABLE)
        self.set_header("Etag", entry.etag)
        if "If-None-Match" in self.request.headers and self.check_etag_header():
            self.set_status(304)
            self.finish()
        else:
            self.finish(entry.data)


def bytes_answers(what, responses=None):
    """The answers of a route of immutable bytes, with ``responses`` of its own."""
    return {
        200: {"description": what, "headers": {
            "ETag": {"required": True, "schema": {"type": "string"}},
            "Cache-Control": {"required": True, "schema": {"const": IMMUTABLE}}},
            "content": {mime_type: {"schema": {"type": "string", "format": "binary"}}
                        for mime_type in SUPPORTED_TYPES}},
        304: {"description": "If-None-Match names its ETag: not modified", "headers": {
            "ETag": {"required": True, "schema": {"type": "string"}}}},
        404: unknown(), 503: unavailable(), **(responses or {})}


IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "schema": {"type": "string"},
                 "description": "an ETag from an earlier answer: 304 if it still matches"}


class ImageContentHandler(ImmutableBytesHandler):
    """``GET /api/images/{id}/content``: the original bytes."""

    @operation(summary="An image's original bytes", tags=["images"],
               parameters=[IF_NONE_MATCH], responses=bytes_answers("the bytes as uploaded"))
    async def get(self, image_id):
        self.serve(image_id, await cached_content(self.context, int(image_id)))


class ThumbnailHandler(ImmutableBytesHandler):
    """``GET /api/images/{id}/thumbnail?size=N``: an upright, metadata-free
    thumbnail; ``size`` is one of the configured sizes (default the smallest)."""

    @operation(lambda config: dict(
        summary="An image's thumbnail", tags=["images"], parameters=[IF_NONE_MATCH, {
            "name": "size", "in": "query", "description": "default the smallest",
            "schema": {"type": "integer", "enum": sorted(config.thumbnail_sizes)}}],
        responses=bytes_answers("the thumbnail", {400: error("size is not one of them, or twice")})))
    async def get(self, image_id):
        sizes = self.config.thumbnail_sizes
        size = self.query_argument("size", str(min(sizes)))
        if not re.fullmatch(r"[0-9]{1,5}", size) or int(size) not in sizes:
            raise ApiError(400, "bad size", "size must be one of %s"
                           % ", ".join(str(s) for s in sizes))
        self.serve(image_id, await cached_thumbnail(self.context, int(image_id), int(size)))
