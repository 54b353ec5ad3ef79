"""Dead letters, for operators: what gave up, and sending it back once fixed.

The routes need the operator (``Authorization: Bearer <API_TOKEN>``, or the
cookie of /login with the XSRF token); without a configured token they are
closed (403), since they act on everyone's uploads.
"""

from broker import BrokerUnavailable
from config import redact_url
from handlers.base import ApiError, BaseHandler
from handlers.openapi import (error, json_answer, operation, operator, outcome_unknown, ref,
                              unavailable)
from handlers.upload import RETRY_AFTER, accept_upload, queued
from notify.outbox import Outbox
from uploads import Upload


class OperatorHandler(BaseHandler):
    operator_methods = ("GET", "POST")

    def prepare(self):
        self.require_operator()


class FailedListHandler(OperatorHandler):
    """``GET /api/failed``: dead-lettered uploads with their reason and attempts,
    and failed webhook and e-mail deliveries (``failed_deliveries``)."""

    @operation(**operator(summary="Dead-lettered uploads and failed deliveries",
                          tags=["operator"], responses={
        200: json_answer("the dead letters, oldest first, and the failed deliveries", {
            "type": "object", "required": ["failed", "deliveries"], "properties": {
                "failed": {"type": "array", "items": ref("DeadLetter")},
                "deliveries": {"type": "array", "items": ref("FailedDelivery")}}}),
        503: unavailable()}))
    async def get(self):
        self.write_json(await failed_lists(self.context.storage))


async def failed_lists(storage):
    """``{"failed": dead-lettered uploads, "deliveries": failed deliveries}``, each
    with the ``requeue_url`` that sends it again."""
    letters = await storage.list_dead_letters()
    for letter in letters:
        letter["requeue_url"] = "/api/failed/%s/requeue" % letter["request_id"]
    return {"failed": letters, "deliveries": await failed_deliveries(storage)}


async def failed_deliveries(storage):
    """Dead-lettered (``dead``) and refused (``gone``, 410) webhook and e-mail deliveries."""
    deliveries = await storage.list_failed_deliveries()
    for delivery in deliveries:
        delivery["target"] = redact_url(delivery["target"])  # a URL may hold a password
        delivery["requeue_url"] = "/api/failed/deliveries/%d/requeue" % delivery["id"]
    return deliveries


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


class RequeueDeliveryHandler(OperatorHandler):
    """``POST /api/failed/deliveries/{id}/requeue``: try a failed delivery again from
    its first try, with the same id (so a receiver can still drop a copy); 202."""

    @operation(**operator(summary="Try a failed webhook or e-mail delivery again",
                          tags=["operator"], responses={
        202: json_answer("pending again", {
            "type": "object", "required": ["id", "status"],
            "properties": {"id": {"type": "integer"}, "status": {"const": "pending"}}}),
        404: error("no delivery has that id"),
        409: error("the delivery has not failed"),
        503: unavailable("the broker did not take it, or the database is unavailable")}))
    async def post(self, delivery_id):
        storage = self.context.storage
        delivery, requeued = await storage.requeue_delivery(int(delivery_id))
        if delivery is None:
            raise ApiError(404, "unknown delivery", "no delivery has id %s" % delivery_id)
        if not requeued:
            raise ApiError(409, "not failed", "delivery %s is %s" % (delivery_id,
                                                                   delivery["status"]))
        # Pending first: the sender may take the message the moment it is published.
        try:
            await Outbox(self.context).publish(delivery, 0)
        except BrokerUnavailable as exc:
            await storage.settle_delivery(delivery["id"], delivery["status"], delivery["tries"],
                                          delivery["last_error"])  # as it was
            raise ApiError(503, "not re-queued, try again", str(exc),
                           retry_after=RETRY_AFTER) from None
        self.write_json({"id": delivery["id"], "status": "pending"}, status=202)
