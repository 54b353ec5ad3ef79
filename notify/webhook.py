"""Webhooks as Standard Webhooks v1 (https://www.standardwebhooks.com/).

A POST of ``{"type": event, "timestamp": ISO 8601, "data": event body}`` with
``webhook-id`` (the event's message id, the same on every try),
``webhook-timestamp`` (Unix seconds of this try) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 keyed by the decoded secret over
``{id}.{timestamp}.{body}``), signed by the ``standardwebhooks`` package, the
reference implementation a receiver verifies with.

Sent with Tornado's own HTTP client on the IOLoop.  Its resolver lets through
only public (globally routable) addresses unless WEBHOOK_ALLOW_PRIVATE=true:
the check is made on the addresses the client then connects to, at every
connection, so a name that resolves to a public address when checked and to
127.0.0.1 a moment later (DNS rebinding) never reaches 127.0.0.1.
"""

import ipaddress
import json
import socket
import time
from datetime import datetime, timezone

import standardwebhooks
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from notify import DeliveryFailed, decode_secret

USER_AGENT = "photo-app-webhooks/1"
MAX_CLIENTS = 64  # connections at once; the senders cap each endpoint lower


class RefusedAddress(OSError):
    """The URL's host resolves to no address webhooks may go to."""


def is_public(address):
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(Resolver):
    """Resolves with ``resolver`` (the loop's getaddrinfo by default) and drops
    every loopback, private, link-local or otherwise non-global address."""

    def initialize(self, resolver=None):
        self.resolver = resolver or DefaultLoopResolver()

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        addresses = await self.resolver.resolve(host, port, family)
        public = [(af, sockaddr) for af, sockaddr in addresses if is_public(sockaddr[0])]
        if not public:
            raise RefusedAddress(
                "refused: %s resolves to %s, not a public address (set "
                "WEBHOOK_ALLOW_PRIVATE=true to allow it)"
                % (host, ", ".join(sorted({sockaddr[0] for _af, sockaddr in addresses}))))
        return public

    def close(self):
        self.resolver.close()


def webhook_body(delivery):
    return json.dumps({"type": delivery["event"], "timestamp": delivery["created_at"],
                       "data": delivery["payload"]}, separators=(",", ":")).encode()


class WebhookChannel:
    action = "webhook"

    def __init__(self, config, resolver=None):
        self.timeout = config.webhook_timeout
        decode_secret(config.webhook_secret)  # refuses a malformed secret
        self.signer = standardwebhooks.Webhook(config.webhook_secret)
        if resolver is None:
            resolver = (DefaultLoopResolver() if config.webhook_allow_private
                        else PublicOnlyResolver())
        self.resolver = resolver
        self.client = SimpleAsyncHTTPClient(force_instance=True, resolver=resolver,
                                            max_clients=MAX_CLIENTS)

    def headers(self, message_id, body, now=None):
        timestamp = int(now if now is not None else time.time())
        signature = self.signer.sign(message_id, datetime.fromtimestamp(timestamp, timezone.utc),
                                     body.decode())
        return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                "webhook-id": message_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": signature}

    async def send(self, delivery):
        body = webhook_body(delivery)
        request = HTTPRequest(delivery["target"], method="POST", body=body,
                              headers=self.headers(delivery["message_id"], body),
                              connect_timeout=self.timeout, request_timeout=self.timeout,
                              follow_redirects=False)
        try:
            response = await self.client.fetch(request, raise_error=False)
        except HTTPTimeoutError:
            raise DeliveryFailed("no answer within %gs" % self.timeout) from None
        except RefusedAddress as exc:
            raise DeliveryFailed(str(exc)) from None
        except (OSError, HTTPClientError) as exc:
            raise DeliveryFailed("%s: %s" % (type(exc).__name__, exc)) from None
        if 200 <= response.code < 300:
            return
        if response.code == 410:
            raise DeliveryFailed("410 Gone: the endpoint wants no more deliveries", final=True)
        raise DeliveryFailed("HTTP %d %s" % (response.code, response.reason or ""))

    async def close(self):
        self.client.close()
        self.resolver.close()
