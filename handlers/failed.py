"""Dead letters, for operators: what gave up, and sending it back once fixed.

Both routes need ``Authorization: Bearer <API_TOKEN>``; without a configured
token they are closed (403), since they act on everyone's uploads.
"""

import hmac

from handlers.base import ApiError, BaseHandler
from handlers.upload import accept_upload, queued
from uploads import Upload


class OperatorHandler(BaseHandler):
    def prepare(self):
        token = self.config.api_token
        if not token:
            raise ApiError(403, "forbidden", "set API_TOKEN to use the operator routes")
        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), ("Bearer " + token).encode()):
            self.set_header("WWW-Authenticate", "Bearer")
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <API_TOKEN>")

    def check_xsrf_cookie(self):
        pass  # authorised by a header a browser never adds on its own


class FailedListHandler(OperatorHandler):
    """``GET /api/failed``: dead-lettered uploads with their reason and attempts."""

    async def get(self):
        letters = await self.context.storage.list_dead_letters()
        for letter in letters:
            letter["requeue_url"] = "/api/failed/%s/requeue" % letter["request_id"]
        self.write_json({"failed": letters})


class RequeueHandler(OperatorHandler):
    """``POST /api/failed/{request_id}/requeue``: publish the upload again
    (confirmed), with fresh attempts; answered like an upload, 202.  The dead
    letter is removed only once the broker has the message again."""

    async def post(self, request_id):
        letter = await self.context.storage.get_dead_letter(request_id)
        if letter is None:
            raise ApiError(404, "unknown dead letter", "no dead letter has request id %s"
                           % request_id)
        await accept_upload(self.context, Upload(
            request_id, letter["nickname"], letter["filename"], letter["content_type"],
            letter["data"]), requeue=True)
        self.write_json(queued(request_id), status=202)
