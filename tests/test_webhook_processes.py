"""Two notifier processes on one queue (RabbitMQ, PostgreSQL): every event, even
one published twice, reaches each endpoint once."""

import collections
import json
import subprocess

import pika
import psycopg2
import pytest

from broker import Topology
from tests.conftest import AMQP_URL, TEST_DELIVERY_DELAYS, TEST_RETRY_DELAYS, amqp_connection
from tests.processes import RABBIT_READY, process_env, wait_until
from tests.receivers import SECRET, WebhookReceiver

EVENTS = 12


def queue_listing():
    """{queue: (ready, unacknowledged, consumers)} of the RabbitMQ node."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages_ready",
         "messages_unacknowledged", "consumers"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    return {name: tuple(int(n) for n in counts) for name, *counts in
            (line.split("\t") for line in listing.splitlines())}


@pytest.fixture
def receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def event(number):
    return {"event": "image.uploaded", "request_id": "req-%d" % number, "image_id": number,
            "nickname": "twice", "mime_type": "image/png", "width": 8, "height": 6,
            "size": 100, "url": "/api/images/%d/content" % number}


def test_two_notifiers_send_each_event_once_per_endpoint(postgres_url, amqp_prefix, receiver,
                                                         spawn):
    urls = [receiver.url("/a"), receiver.url("/b")]
    env = process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                      CACHE="none", WEBHOOK_URLS=",".join(urls), WEBHOOK_SECRET=SECRET,
                      WEBHOOK_ALLOW_PRIVATE="true",
                      RETRY_DELAYS=",".join(map(str, TEST_RETRY_DELAYS)),
                      WEBHOOK_RETRY_DELAYS=",".join(map(str, TEST_DELIVERY_DELAYS)))
    notifiers = [spawn("notifier-%d" % n, ["-m", "consumers.notifier"], env,
                       ready=RABBIT_READY + ("WebhookSender consuming",)) for n in (1, 2)]
    topology = Topology(amqp_prefix, TEST_RETRY_DELAYS, TEST_DELIVERY_DELAYS)
    wait_until(lambda: all(queue_listing().get(queue, (0, 0, 0))[2] == 2 for queue in
                           (topology.notifications_queue, topology.webhook_queue)),
               20, "both notifiers consume both queues")

    # Each event published twice, as a processor that redelivers an upload does:
    # one copy to each notifier, at the same moment.
    conn = amqp_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    for number in range(EVENTS):
        for _copy in (1, 2):
            channel.basic_publish(
                topology.events_exchange, "image.uploaded", json.dumps(event(number)).encode(),
                pika.BasicProperties(message_id="image.uploaded:req-%d" % number,
                                     content_type="application/json", delivery_mode=2),
                mandatory=True)
    conn.close()

    wait_until(lambda: len({(d.id, d.path) for d in receiver.received()}) == 2 * EVENTS, 60,
               lambda: "%d of %d deliveries arrived" % (len(receiver.received()), 2 * EVENTS))
    names = [spec.name for spec in topology.queues]
    wait_until(lambda: all(queue_listing()[name][:2] == (0, 0) for name in names), 60,
               "every message settled")

    received = receiver.received()
    assert all(d.verified for d in received), [d.errors for d in received if d.errors]
    copies = collections.Counter((d.id, d.path) for d in received)
    assert set(copies.values()) == {1}, [key for key, n in copies.items() if n > 1]
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status, tries, COUNT(*) FROM deliveries GROUP BY status, tries")
        assert cursor.fetchall() == [("delivered", 1, 2 * EVENTS)]
    conn.close()
    for notifier in notifiers:  # both took a share of the work
        assert "delivered (try 1)" in notifier.log(), notifier.describe()
