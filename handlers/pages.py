"""Pages for people: the upload page, the gallery, one photo, one upload's status.

Every page works without JavaScript (forms and links, pagination on the server);
static/app.js adds the progress bars, live statuses and live grids on top.
"""

import urllib.parse

import tornado.web

from handlers.base import ApiError, BaseHandler
from handlers.html import HtmlPage
from handlers.images import DEFAULT_LIMIT, list_page, not_found, parse_limit, public_upload
from handlers.seed import answer_received
from handlers.upload import UploadBody, accept_upload
from storage import DELETED, FAILED, REFUSED, STORED

RECENT = 12  # images on the upload page


def gallery_url(query):
    return "/gallery?" + urllib.parse.urlencode(query) if query else "/gallery"


class PageHandler(HtmlPage, BaseHandler):
    pass


@tornado.web.stream_request_body
class IndexHandler(UploadBody, PageHandler):
    """``GET /``: the upload page, with the most recent images.  ``POST /``: the
    seed's form upload (the page's form posts there without JavaScript), answered
    as the seed did (``handlers.seed.answer_received``); errors as a page."""

    async def post(self):
        upload = self.read_upload()
        if upload is not None:
            await accept_upload(self.context, upload)
            answer_received(self, upload)

    async def get(self):
        recent = await self.context.storage.list_images(limit=RECENT)
        self.render("index.html", images=recent, max_upload_bytes=self.config.max_upload_bytes,
                    accepted_types=self.config.accepted_types, live_limit=RECENT)


class GalleryHandler(PageHandler):
    """``GET /gallery?nickname=&cursor=&limit=``: a page of the grid, newest first."""

    async def get(self):
        nickname = self.get_query_argument("nickname", "")
        cursor = self.get_query_argument("cursor", "")
        limit = parse_limit(self.get_query_argument("limit", None))
        images, next_cursor = await list_page(self.context.storage, nickname, cursor, limit)
        query = {"nickname": nickname.strip()} if nickname.strip() else {}
        if limit != DEFAULT_LIMIT:
            query["limit"] = limit
        self.render("gallery.html", images=images, nickname=nickname.strip(), cursor=cursor,
                    first_url=gallery_url(query),
                    next_url=next_cursor and gallery_url(dict(query, cursor=next_cursor)),
                    live_limit=limit)


class PhotoHandler(PageHandler):
    """``GET /photos/{id}``: one photo, large, linking to its original, and its metadata."""

    async def get(self, image_id):
        image = await self.context.storage.get_image(int(image_id))
        if image is None:
            raise not_found(image_id)
        self.render("photo.html", image=image, operator=self.signed_in())


class UploadPageHandler(PageHandler):
    """``GET /uploads/{request_id}``: where one upload is, for a browser without
    JavaScript (the page refreshes itself until the upload is stored or failed)."""

    async def get(self, request_id):
        upload = await self.context.storage.get_upload(request_id)
        if upload is None:
            raise ApiError(404, "unknown upload", "no upload has request id %s" % request_id)
        self.render("upload.html", upload=public_upload(upload),
                    final=upload["status"] in (STORED, FAILED, REFUSED, DELETED))
