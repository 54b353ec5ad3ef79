"""Dead letters, for operators: what gave up, and sending it back once fixed.

Both routes need the operator (``Authorization: Bearer <API_TOKEN>``, or the
cookie of /login with the XSRF token); without a configured token they are
closed (403), since they act on everyone's uploads.
"""

from handlers.base import ApiError, BaseHandler
from handlers.openapi import (error, json_answer, operation, operator, outcome_unknown, ref,
                              unavailable)
from handlers.upload import accept_upload, queued
from uploads import Upload


class OperatorHandler(BaseHandler):
    operator_methods = ("GET", "POST")

    def prepare(self):
        self.require_operator()


class FailedListHandler(OperatorHandler):
    """``GET /api/failed``: dead-lettered uploads with their reason and attempts."""

    @operation(**operator(summary="Dead-lettered uploads", tags=["operator"], responses={
        200: json_answer("the dead letters, oldest first", {
            "type": "object", "required": ["failed"],
            "properties": {"failed": {"type": "array", "items": ref("DeadLetter")}}}),
        503: unavailable()}))
    async def get(self):
        letters = await self.context.storage.list_dead_letters()
        for letter in letters:
            letter["requeue_url"] = "/api/failed/%s/requeue" % letter["request_id"]
        self.write_json({"failed": letters})


class RequeueHandler(OperatorHandler):
    """``POST /api/failed/{request_id}/requeue``: publish the upload again
    (confirmed), with fresh attempts; answered like an upload, 202.  The dead
    letter is removed only once the broker has the message again."""

    @operation(**operator(summary="Publish a dead-lettered upload again", tags=["operator"],
                          responses={
        202: json_answer("queued again, with fresh attempts", ref("UploadAccepted")),
        404: error("no dead letter has that request id"),
        503: unavailable("the broker did not take it, or the database is unavailable"),
        504: outcome_unknown()}))
    async def post(self, request_id):
        letter = await self.context.storage.get_dead_letter(request_id)
        if letter is None:
            raise ApiError(404, "unknown dead letter", "no dead letter has request id %s"
                           % request_id)
        await accept_upload(self.context, Upload(
            request_id, letter["nickname"], letter["filename"], letter["content_type"],
            letter["data"]), requeue=True)
        self.write_json(queued(request_id), status=202)
