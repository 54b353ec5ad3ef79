"""Dead letters, for operators: what gave up, and sending it back once fixed.

Both routes need ``Authorization: Bearer <API_TOKEN>``; without a configured
token they are closed (403), since they act on everyone's uploads.
"""

from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable
from handlers.base import ApiError, BaseHandler
from handlers.openapi import error, json_answer, operation, operator, ref, unavailable
from handlers.upload import RETRY_AFTER


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
    (confirmed), with fresh attempts; answered like an upload, 202."""

    @operation(**operator(summary="Publish a dead-lettered upload again", tags=["operator"],
                          responses={
        202: json_answer("queued again, with fresh attempts", ref("UploadAccepted")),
        404: error("no dead letter has that request id"),
        503: unavailable("the broker did not take it, or the database is unavailable")}))
    async def post(self, request_id):
        storage, broker = self.context.storage, self.context.broker
        letter = await storage.get_dead_letter(request_id)
        if letter is None:
            raise ApiError(404, "unknown dead letter", "no dead letter has request id %s"
                           % request_id)
        # Reset first: the processor may take the message the moment it is published.
        await storage.requeue_dead_letter(request_id)
        try:
            await broker.publish(
                broker.topology.upload_exchange, UPLOAD_ROUTING_KEY, letter["data"],
                message_id=request_id, content_type=letter["content_type"],
                headers={"nickname": letter["nickname"], "filename": letter["filename"],
                         "size": len(letter["data"])}, mandatory=True)
        except BrokerUnavailable as exc:
            await storage.record_dead_letter(
                request_id, letter["nickname"], letter["filename"], letter["content_type"],
                letter["data"], letter["attempts"], letter["error"])  # as it was
            raise ApiError(503, "not re-queued, try again", str(exc),
                           retry_after=RETRY_AFTER) from None
        self.write_json({"request_id": request_id, "status": "queued",
                         "status_url": "/api/uploads/%s" % request_id}, status=202)
