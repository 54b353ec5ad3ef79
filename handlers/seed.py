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
from handlers.openapi import (CONTROLS, HTML, UPLOAD_BODY, error, json_answer, operation,
                              record, ref, unavailable, upload_refusals)
from handlers.upload import queued
from uploads import has_control_characters

RECEIVED = "Request {request_id} received. Image '{nickname}' is being processed."
# GET /images/{nickname} reads the ids in pages of this many.
ID_PAGE = 100


# The seed's upload (``POST /``, handlers.pages.IndexHandler): its operation.
SEED_UPLOAD = dict(
    summary="Upload an image (the seed's form post)", tags=["seed"], requestBody=UPLOAD_BODY,
    parameters=[{"name": "reply", "in": "query", "schema": {"type": "string"},
                 "description": "page: answer a whole page (the upload page's form)"}],
    responses={202: {"description": "queued: the seed's sentence (HTML), or JSON when "
                                    "Accept prefers it", "content": {
        **HTML, "application/json": {"schema": {"allOf": [
            ref("UploadAccepted"), record(message={"type": "string"})]}}}},
        **upload_refusals(page=True)})


def answer_received(handler, upload, whole_page):
    """The 202 to the seed's ``POST /``: the seed's sentence as an HTML fragment;
    JSON when ``Accept`` asks for it; a whole page when the upload page's form
    (without JavaScript) posted it (``?reply=page``: ``whole_page``)."""
    message = RECEIVED.format(request_id=upload.request_id, nickname=upload.nickname)
    if wants_json(handler.request):
        handler.write_json(dict(queued(upload.request_id), message=message), status=202)
        return
    handler.set_status(202)
    if whole_page:
        handler.render("received.html", message=message, upload=upload)
    else:
        handler.finish(RECEIVED.format(request_id=upload.request_id,
                                       nickname=xhtml_escape(upload.nickname)))


class NicknameImagesHandler(BaseHandler):
    """``GET /images/{nickname}``: every image of ``nickname``, newest first, as
    ``[{"id", "image_data" (base64 of the original bytes), "mime_type"}]``; the
    ids come from the database, the bytes through the cache.  ``[]`` if none;
    400 for a nickname with control characters, which no upload can have."""

    @operation(summary="Every image of a nickname, with its bytes", tags=["seed"], parameters=[{
        "name": "nickname", "in": "path", "required": True, "description": "a nickname "
        "(no control characters: no upload can have one)",
        "schema": {"type": "string", "pattern": "^[^%s]+$" % CONTROLS}}], responses={
        200: json_answer("newest first; [] for none", {"type": "array", "items": record(
            id={"type": "integer"}, mime_type={"type": "string"},
            image_data={"type": "string", "contentEncoding": "base64"})}),
        400: error("the nickname is not UTF-8 or has control characters"),
        503: unavailable()})
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

    @operation(summary="Which database is in use", tags=["seed"], responses={
        200: json_answer("its type", record(db_type={"enum": ["postgres", "sqlite"]}))})
    def get(self):
        self.write_json({"db_type": self.context.storage.db_type})


class SniffMimeHandler(BaseHandler):
    """``POST /sniff-mime`` with a multipart ``image_data``: ``{"mime_type"}`` judged
    from the bytes alone (``application/octet-stream`` when not an image)."""

    def check_xsrf_cookie(self):
        pass  # a program's question about its own bytes; nothing is changed

    @operation(summary="The media type of a file, judged from its bytes", tags=["seed"],
               requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
                   "type": "object", "required": ["image_data"],
                   "properties": {"image_data": {"type": "string", "format": "binary"}}}}}},
               responses={
                   200: json_answer("application/octet-stream when not an image",
                                    record(mime_type={"type": "string"})),
                   400: error("no file in the field image_data")})
    def post(self):
        files = self.request.files.get("image_data")
        if not files:
            raise ApiError(400, "missing file", "attach the file as the field image_data")
        self.write_json({"mime_type": imaging.sniff_mime(files[0].body)})
