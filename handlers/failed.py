"""Dead letters, for operators: what gave up, and sending it back once fixed.

Both routes need ``Authorization: Bearer <API_TOKEN>``; without a configured
token they are closed (403), since they act on everyone's uploads.
"""

import hmac

from broker import UPLOAD_ROUTING_KEY, BrokerUnavailable
from config import redact_url
from handlers.base import ApiError, BaseHandler
from handlers.upload import RETRY_AFTER
from notify.outbox import Outbox


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
    """``GET /api/failed``: dead-lettered uploads with their reason and attempts,
    and failed webhook and e-mail deliveries (``failed_deliveries``)."""

    async def get(self):
        letters = await self.context.storage.list_dead_letters()
        for letter in letters:
            letter["requeue_url"] = "/api/failed/%s/requeue" % letter["request_id"]
        self.write_json({"failed": letters,
                         "deliveries": await failed_deliveries(self.context.storage)})


async def failed_deliveries(storage):
    """Dead-lettered (``dead``) and refused (``gone``, 410) webhook and e-mail deliveries."""
    deliveries = await storage.list_failed_deliveries()
    for delivery in deliveries:
        delivery["target"] = redact_url(delivery["target"])  # a URL may hold a password
        delivery["requeue_url"] = "/api/failed/deliveries/%d/requeue" % delivery["id"]
    return deliveries


class RequeueHandler(OperatorHandler):
    """``POST /api/failed/{request_id}/requeue``: publish the upload again
    (confirmed), with fresh attempts; answered like an upload, 202."""

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


class RequeueDeliveryHandler(OperatorHandler):
    """``POST /api/failed/deliveries/{id}/requeue``: try a failed delivery again from
    its first try, with the same id (so a receiver can still drop a copy); 202."""

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
