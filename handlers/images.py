"""Reading images: metadata, and the bytes (originals and thumbnails) through the cache."""

import hashlib

from cache import CachedImage, content_key, thumbnail_key
from handlers.base import ApiError, BaseHandler

IMMUTABLE = "public, max-age=31536000, immutable"


def image_json(image, thumbnail_sizes):
    """The public form of an image's metadata, with the addresses of its bytes."""
    return dict(
        image, format=image["mime_type"].split("/", 1)[1],
        url="/api/images/%s/content" % image["id"],
        thumbnails={str(size): "/api/images/%s/thumbnail?size=%d" % (image["id"], size)
                    for size in thumbnail_sizes})


def not_found(image_id):
    return ApiError(404, "unknown image", "no image has id %s" % image_id)


class UploadStatusHandler(BaseHandler):
    """``GET /api/uploads/{request_id}``: where an upload is in its life."""

    async def get(self, request_id):
        upload = await self.context.storage.get_upload(request_id)
        if upload is None:
            raise ApiError(404, "unknown upload", "no upload has request id %s" % request_id)
        if upload["image_id"] is not None:
            upload["image_url"] = "/api/images/%s" % upload["image_id"]
        self.write_json(upload)


class ImageHandler(BaseHandler):
    """``GET /api/images/{id}``: an image's metadata."""

    async def get(self, image_id):
        image = await self.context.storage.get_image(int(image_id))
        if image is None:
            raise not_found(image_id)
        self.write_json(image_json(image, self.config.thumbnail_sizes))


class ImmutableBytesHandler(BaseHandler):
    """Bytes that never change once stored: served from the cache when it has
    them, else loaded (``load``) and cached; ETag, 304 and a year of caching."""

    async def serve(self, key, load):
        cache = self.context.cache
        entry = await cache.get(key)
        if entry is None:
            entry = await load()
            await cache.set(key, entry)
        self.set_header("Content-Type", entry.mime_type)
        self.set_header("Cache-Control", IMMUTABLE)
        self.set_header("Etag", entry.etag)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
        else:
            self.finish(entry.data)


class ImageContentHandler(ImmutableBytesHandler):
    """``GET /api/images/{id}/content``: the original bytes."""

    async def get(self, image_id):
        image_id = int(image_id)

        async def load():
            found = await self.context.storage.get_image_content(image_id)
            if found is None:
                raise not_found(image_id)
            data, mime_type, sha256 = found
            return CachedImage(data, mime_type, '"%s"' % sha256)
        await self.serve(content_key(image_id), load)


class ThumbnailHandler(ImmutableBytesHandler):
    """``GET /api/images/{id}/thumbnail?size=N``: an upright, metadata-free
    thumbnail; ``size`` is one of the configured sizes (default the smallest)."""

    async def get(self, image_id):
        image_id = int(image_id)
        sizes = self.config.thumbnail_sizes
        size = self.get_argument("size", str(min(sizes)))
        if not size.isdigit() or int(size) not in sizes:
            raise ApiError(400, "bad size", "size must be one of %s"
                           % ", ".join(str(s) for s in sizes))
        size = int(size)

        async def load():
            found = await self.context.storage.get_thumbnail(image_id, size)
            if found is None:
                raise not_found(image_id)
            data, mime_type, _width, _height = found
            return CachedImage(data, mime_type, '"%s"' % hashlib.sha256(data).hexdigest())
        await self.serve(thumbnail_key(image_id, size), load)
