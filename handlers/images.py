"""Reading images: metadata, and the bytes through the cache."""

from cache import CachedImage
from handlers.base import ApiError, BaseHandler

IMMUTABLE = "public, max-age=31536000, immutable"


def image_json(image):
    return dict(image, url="/api/images/%s/content" % image["id"])


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
            raise ApiError(404, "unknown image", "no image has id %s" % image_id)
        self.write_json(image_json(image))


class ImageContentHandler(BaseHandler):
    """``GET /api/images/{id}/content``: the original bytes, cached, immutable."""

    async def get(self, image_id):
        entry = await self.load(int(image_id))
        self.set_header("Content-Type", entry.mime_type)
        self.set_header("Cache-Control", IMMUTABLE)
        self.set_header("Etag", entry.etag)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.finish(entry.data)

    async def load(self, image_id):
        cache = self.context.cache
        entry = await cache.get(image_id)
        if entry is None:
            found = await self.context.storage.get_image_content(image_id)
            if found is None:
                raise ApiError(404, "unknown image", "no image has id %s" % image_id)
            data, mime_type, sha256 = found
            entry = CachedImage(data, mime_type, '"%s"' % sha256)
            await cache.set(image_id, entry)
        return entry
