"""Webhooks (Standard Webhooks v1) against a real Tornado receiver on 127.0.0.1:
signed and verified, retried, dead-lettered and re-queued, refused for private
addresses; on both databases and both brokers."""

import json
import socket

import pytest

from broker import IMAGE_DELETED, Topology
from config import Config
from broker.messages import event_message_id
from notify import DeliveryFailed
from notify.webhook import PublicOnlyResolver, WebhookChannel
from tests.conftest import free_port
from tests.helpers import eventually, make_image, post_upload, wait_for_upload
from tests.receivers import SECRET, WebhookReceiver

TOKEN = "operator-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


@pytest.fixture
def receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook_paths():
    return ["/hook"]


@pytest.fixture
def webhook_urls(receiver, webhook_paths):
    return tuple(receiver.url(path) for path in webhook_paths)


@pytest.fixture
def allow_private():
    return True


@pytest.fixture
def config_overrides(webhook_urls, allow_private):
    return {"webhook_urls": webhook_urls, "webhook_secret": SECRET,
            "webhook_allow_private": allow_private, "api_token": TOKEN}


async def upload(http_client, base_url, data, nickname="hooked"):
    response = await post_upload(http_client, base_url, nickname, data)
    assert response.code == 202, response.body
    request_id = json.loads(response.body)["request_id"]
    return request_id, await wait_for_upload(http_client, base_url, request_id)


async def failed_listing(http_client, base_url):
    response = await http_client.fetch(base_url + "/api/failed", headers=AUTH)
    return json.loads(response.body)["deliveries"]


async def delivery_of(context, message_id, target):
    """The delivery record of ``message_id`` to ``target`` once it is no longer
    pending: the receiver has the request before the notifier records its answer."""
    storage = context.storage

    async def settled():
        record = await storage._run(lambda cursor: storage._get_delivery(
            cursor, storage._execute(cursor, "SELECT id FROM deliveries WHERE message_id = %s "
                                     "AND target = %s", (message_id, target)).fetchone()[0]))
        return record if record["status"] != "pending" else None
    return await eventually(settled)


@pytest.mark.gen_test(timeout=60)
async def test_every_event_is_delivered_signed_and_verified(http_client, base_url, context,
                                                            receiver):
    stored_id, stored = await upload(http_client, base_url, make_image())
    failed_id, failed = await upload(http_client, base_url, make_image("JPEG")[:300])
    assert (stored["status"], failed["status"]) == ("stored", "failed")
    await context.broker.publish(
        context.broker.topology.events_exchange, IMAGE_DELETED,
        json.dumps({"event": IMAGE_DELETED, "image_id": stored["image_id"],
                    "nickname": "hooked"}).encode(),
        message_id="%s:%s" % (IMAGE_DELETED, stored["image_id"]))

    deliveries = await eventually(lambda: len(receiver.received()) >= 3 and receiver.received())
    assert [d.errors for d in deliveries] == [[], [], []]
    by_type = {d.payload["type"]: d for d in deliveries}
    assert set(by_type) == {"image.uploaded", "image.failed", "image.deleted"}
    uploaded = by_type["image.uploaded"]
    assert uploaded.id == event_message_id("image.uploaded", stored_id)
    assert uploaded.headers["content-type"] == "application/json"
    assert uploaded.payload["data"]["image_id"] == stored["image_id"]
    assert uploaded.payload["data"]["nickname"] == "hooked"
    assert uploaded.payload["timestamp"].endswith("+00:00")
    assert int(uploaded.headers["webhook-timestamp"]) > 0
    assert uploaded.headers["webhook-signature"].startswith("v1,")
    assert by_type["image.failed"].id == event_message_id("image.failed", failed_id)
    assert "truncated" in by_type["image.failed"].payload["data"]["error"]
    assert by_type["image.deleted"].id == "image.deleted:%s" % stored["image_id"]
    delivery = await delivery_of(context, uploaded.id, receiver.url())
    assert (delivery["status"], delivery["tries"]) == ("delivered", 1)


@pytest.mark.parametrize("webhook_paths", [["/flaky", "/steady"]])
@pytest.mark.gen_test(timeout=60)
async def test_an_endpoint_failing_three_times_gets_the_event_on_the_fourth_try(
        http_client, base_url, context, receiver):
    receiver.answer("/flaky", 500, 500, 503)
    request_id, _ = await upload(http_client, base_url, make_image())
    tries = await eventually(lambda: len(receiver.received("/flaky")) >= 4
                             and receiver.received("/flaky"))
    assert [d.answered for d in tries] == [500, 500, 503, 200]
    assert all(d.verified for d in tries)
    message_id = event_message_id("image.uploaded", request_id)
    assert {d.id for d in tries} == {message_id}            # one id on every try
    assert len({d.payload["timestamp"] for d in tries}) == 1  # and one body
    [steady] = receiver.received("/steady")                  # the other endpoint: once
    assert steady.verified and steady.id == message_id
    flaky = await delivery_of(context, message_id, receiver.url("/flaky"))
    assert (flaky["status"], flaky["tries"], flaky["last_error"]) == ("delivered", 4, None)


class TestDeadEndpoint:
    @pytest.fixture
    def dead_port(self):
        return free_port()

    @pytest.fixture
    def webhook_urls(self, dead_port):
        return ("http://127.0.0.1:%d/hook" % dead_port,)  # nothing listens there

    @pytest.mark.gen_test(timeout=60)
    async def test_it_is_dead_lettered_listed_then_requeued_and_delivered(
            self, http_client, base_url, context, dead_port, webhook_urls, request):
        request_id, _ = await upload(http_client, base_url, make_image())

        async def listed():
            return await failed_listing(http_client, base_url)
        [failed] = await eventually(listed, timeout=30)
        assert failed["status"] == "dead" and failed["target"] == webhook_urls[0]
        assert failed["tries"] == 1 + len(context.config.webhook_retry_delays)
        assert "refused" in failed["last_error"].lower(), failed["last_error"]
        assert failed["message_id"] == event_message_id("image.uploaded", request_id)
        assert failed["payload"]["request_id"] == request_id

        revived = WebhookReceiver(port=dead_port).start()  # the endpoint is back
        request.addfinalizer(revived.stop)
        response = await http_client.fetch(base_url + failed["requeue_url"], method="POST",
                                           body=b"", headers=AUTH)
        assert response.code == 202
        [delivery] = await eventually(lambda: revived.received())
        assert delivery.verified and delivery.id == failed["message_id"]
        assert await failed_listing(http_client, base_url) == []
        again = await http_client.fetch(base_url + failed["requeue_url"], method="POST",
                                        body=b"", headers=AUTH, raise_error=False)
        assert again.code == 409  # delivered: nothing to send again
        missing = await http_client.fetch(base_url + "/api/failed/deliveries/999999/requeue",
                                          method="POST", body=b"", headers=AUTH,
                                          raise_error=False)
        assert missing.code == 404


@pytest.mark.gen_test(timeout=60)
async def test_410_gone_stops_retrying(http_client, base_url, context, receiver):
    receiver.answer("/hook", 410)
    request_id, _ = await upload(http_client, base_url, make_image())

    async def listed():
        return await failed_listing(http_client, base_url)
    [gone] = await eventually(listed)
    assert (gone["status"], gone["tries"]) == ("gone", 1) and "410" in gone["last_error"]
    # Settled with no retry in flight: every delivery queue, delay queues too, is empty.
    from tests.test_consumers import settled
    topology = context.broker.topology
    await settled(context, *[spec.name for spec in topology.delivery_queues()])
    assert [d.answered for d in receiver.received()] == [410]
    assert gone["message_id"] == event_message_id("image.uploaded", request_id)


def test_delivery_queues_lead_back_to_their_action():
    topology = Topology("p.", delivery_delays=(5, 300))
    delays = [spec for spec in topology.delivery_queues() if spec.ttl is not None]
    assert [(spec.name, spec.routing_keys, spec.dead_letter[1]) for spec in delays] == [
        ("p.photo-app.webhook.retry.5s", ("webhook.retry.5s",), "webhook"),
        ("p.photo-app.webhook.retry.300s", ("webhook.retry.300s",), "webhook"),
        ("p.photo-app.email.retry.5s", ("email.retry.5s",), "email"),
        ("p.photo-app.email.retry.300s", ("email.retry.300s",), "email")]
    assert all(spec.exchange == "p.photo-app.deliveries.retry" for spec in delays)
    assert all(spec.dead_letter[0] == "p.photo-app.deliveries" for spec in delays)
    assert {spec.name for spec in topology.delivery_queues() if spec.ttl is None} == {
        topology.webhook_queue, topology.email_queue} == {"p.photo-app.webhook",
                                                          "p.photo-app.email"}


# -- addresses: private ones refused unless WEBHOOK_ALLOW_PRIVATE=true ---------------

def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class TestPrivateAddresses:
    @pytest.fixture
    def refused_receiver(self):
        receiver = WebhookReceiver(addresses=("127.0.0.1", "::1") if has_ipv6_loopback()
                                   else ("127.0.0.1",)).start()
        yield receiver
        receiver.stop()

    @pytest.fixture
    def webhook_urls(self, refused_receiver):
        port = refused_receiver.port
        return ("http://localhost:%d/name" % port,      # a name that resolves to 127.0.0.1
                "http://127.0.0.1:%d/literal" % port,
                "http://10.0.0.1:%d/private" % port,    # would wait for the timeout if tried
                "http://169.254.169.254:%d/link-local" % port,
                "http://[::1]:%d/ipv6" % port)

    @pytest.fixture
    def allow_private(self):
        return False

    @pytest.mark.gen_test(timeout=60)
    async def test_they_are_refused_without_allow_private(
            self, http_client, base_url, context, refused_receiver, webhook_urls):
        await upload(http_client, base_url, make_image())

        async def all_listed():
            listed = await failed_listing(http_client, base_url)
            return len(listed) == len(webhook_urls) and listed
        listed = await eventually(all_listed, timeout=30)
        assert {failed["target"] for failed in listed} == set(webhook_urls)
        for failed in listed:
            assert failed["status"] == "dead", failed
            assert failed["last_error"].startswith("refused: "), failed["last_error"]
            assert "not a public address" in failed["last_error"]
        assert refused_receiver.received() == []  # nothing ever reached the receiver


@pytest.mark.gen_test(timeout=30)
async def test_allow_private_reaches_a_name_on_loopback(receiver):
    channel = WebhookChannel(Config(webhook_secret=SECRET, webhook_allow_private=True))
    try:
        await channel.send({"id": 1, "event": "image.uploaded", "message_id": "m:1",
                            "target": receiver.url("/by-name", host="localhost"),
                            "payload": {"event": "image.uploaded"},
                            "created_at": "2026-01-01T00:00:00+00:00"})
    finally:
        await channel.close()
    [delivery] = receiver.received("/by-name")
    assert delivery.verified and delivery.id == "m:1"


class StubResolver:
    """Answers every name with ``addresses``, as a DNS server under an attacker's control."""

    def __init__(self, *addresses):
        self.addresses = addresses

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET,
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in self.addresses]

    def close(self):
        pass


@pytest.mark.gen_test(timeout=30)
async def test_the_check_is_made_on_the_addresses_connected_to(receiver):
    """A public name that resolves to loopback when the client connects (DNS
    rebinding) is refused: the filter sits in the client's own resolver."""
    channel = WebhookChannel(Config(webhook_secret=SECRET), resolver=PublicOnlyResolver(
        resolver=StubResolver("127.0.0.1")))
    target = "http://rebind.example:%d/hook" % receiver.port
    try:
        with pytest.raises(DeliveryFailed, match="refused: rebind.example resolves to "
                                                 "127.0.0.1"):
            await channel.send({"id": 1, "event": "image.uploaded", "message_id": "m:2",
                                "target": target, "payload": {}, "created_at": "now"})
    finally:
        await channel.close()
    assert receiver.received() == []
    mixed = PublicOnlyResolver(resolver=StubResolver("93.184.216.34", "127.0.0.1", "10.1.2.3",
                                                     "fe80::1", "::ffff:127.0.0.1", "fc00::1"))
    kept = await mixed.resolve("mixed.example", 443)
    assert [sockaddr[0] for _af, sockaddr in kept] == ["93.184.216.34"]
