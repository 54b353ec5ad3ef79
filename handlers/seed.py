"""The seed's routes: the same requests and answers as the original Flask app,
so its clients keep working.  Its upload, ``POST /``, is the upload page's
handler (``handlers.pages.IndexHandler``) with the same checks and publishing
as every upload; only the answer, ``answer_received``, is the seed's.
"""

import base64

from tornado.escape import xhtml_escape

import imaging
from handlers.base import ApiError, BaseHandler
from handlers.html import wants_json
from handlers.images import cached_content
from handlers.upload import queued
from uploads import has_control_characters

RECEIVED = "Request {request_id} received. Image '{nickname}' is being processed."
# GET /images/{nickname} reads the ids in pages of this many.
ID_PAGE = 100


def answer_received(handler, upload):
    """The 202 to the seed's ``POST /``: the seed's sentence as an HTML fragment;
    JSON when ``Accept`` asks for it; a whole page when the upload page's form
    (without JavaScript) posted it (``?reply=page``)."""
    message = RECEIVED.format(request_id=upload.request_id, nickname=upload.nickname)
    if wants_json(handler.request):
        handler.write_json(dict(queued(upload.request_id), message=message), status=202)
        return
    handler.set_status(202)
    if handler.get_query_argument("reply", "") == "page":
        handler.render("received.html", message=message, upload=upload)
    else:
        handler.finish(RECEIVED.format(request_id=upload.request_id,
                                       nickname=xhtml_escape(upload.nickname)))


class NicknameImagesHandler(BaseHandler):
    """``GET /images/{nickname}``: every image of ``nickname``, newest first, as
    ``[{"id", "image_data" (base64 of the original bytes), "mime_type"}]``; the
    ids come from the database, the bytes through the cache.  ``[]`` if none;
    400 for a nickname with control characters, which no upload can have."""

    async def get(self, nickname):
        if has_control_characters(nickname):
            # No stored nickname has one (clean_nickname), and PostgreSQL refuses
            # a NUL in a query parameter: answer before asking the database.
            raise ApiError(400, "bad nickname", "nickname contains control characters")
        found, before_id = [], None
        while True:
            page = await self.context.storage.list_images(nickname=nickname,
                                                          before_id=before_id, limit=ID_PAGE)
            for image in page:
                entry = await cached_content(self.context, image["id"])
                if entry is not None:  # None: deleted since it was listed
                    found.append({"id": image["id"], "mime_type": entry.mime_type,
                                  "image_data": base64.b64encode(entry.data).decode("ascii")})
            if len(page) < ID_PAGE:
                break
            before_id = page[-1]["id"]
        self.write_json(found)


class DbTypeHandler(BaseHandler):
    """``GET /dbtype``: ``{"db_type": "postgres" | "sqlite"}``."""

    def get(self):
        self.write_json({"db_type": self.context.storage.db_type})


class SniffMimeHandler(BaseHandler):
    """``POST /sniff-mime`` with a multipart ``image_data``: ``{"mime_type"}`` judged
    from the bytes alone (``application/octet-stream`` when not an image)."""

    def check_xsrf_cookie(self):
        pass  # a program's question about its own bytes; nothing is changed

    def post(self):
        files = self.request.files.get("image_data")
        if not files:
            raise ApiError(400, "missing file", "attach the file as the field image_data")
        self.write_json({"mime_type": imaging.sniff_mime(files[0].body)})
