"""Notifier processes on one queue (RabbitMQ, PostgreSQL): every event, even one
published twice, reaches each endpoint once; a notifier killed mid-send is taken
over once its claim runs out, with the same webhook-id."""

import collections
import json
import subprocess

import pika
import psycopg2
import signal

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


def notifier_env(postgres_url, amqp_prefix, urls, **settings):
    return process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                       CACHE="none", WEBHOOK_URLS=",".join(urls), WEBHOOK_SECRET=SECRET,
                       WEBHOOK_ALLOW_PRIVATE="true",
                       RETRY_DELAYS=",".join(map(str, TEST_RETRY_DELAYS)),
                       WEBHOOK_RETRY_DELAYS=",".join(map(str, TEST_DELIVERY_DELAYS)), **settings)


def start_notifiers(spawn, env, topology, names, module=("-m", "consumers.notifier")):
    started = [spawn(name, list(module), env, ready=RABBIT_READY + ("WebhookSender consuming",))
               for name in names]
    wait_until(lambda: all(queue_listing().get(queue, (0, 0, 0))[2] >= len(names) for queue in
                           (topology.notifications_queue, topology.webhook_queue)),
               20, "every notifier consumes both queues")
    return started


def publish_events(topology, numbers, copies=1):
    conn = amqp_connection()
    channel = conn.channel()
    channel.confirm_delivery()
    for number in numbers:
        for _copy in range(copies):
            channel.basic_publish(
                topology.events_exchange, "image.uploaded", json.dumps(event(number)).encode(),
                pika.BasicProperties(message_id="image.uploaded:req-%d" % number,
                                     content_type="application/json", delivery_mode=2),
                mandatory=True)
    conn.close()


def delivery_rows(postgres_url):
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT status, tries, COUNT(*) FROM deliveries GROUP BY status, tries")
            return cursor.fetchall()
    finally:
        conn.close()


def test_two_notifiers_send_each_event_once_per_endpoint(postgres_url, amqp_prefix, receiver,
                                                         spawn):
    topology = Topology(amqp_prefix, TEST_RETRY_DELAYS, delivery_delays=TEST_DELIVERY_DELAYS)
    env = notifier_env(postgres_url, amqp_prefix, [receiver.url("/a"), receiver.url("/b")])
    notifiers = start_notifiers(spawn, env, topology, ["notifier-1", "notifier-2"])
    # Each event published twice, as a processor that redelivers an upload does:
    # one copy to each notifier, at the same moment.
    publish_events(topology, range(EVENTS), copies=2)

    wait_until(lambda: len({(d.id, d.path) for d in receiver.received()}) == 2 * EVENTS, 60,
               lambda: "%d of %d deliveries arrived" % (len(receiver.received()), 2 * EVENTS))
    names = [spec.name for spec in topology.queues]
    wait_until(lambda: all(queue_listing()[name][:2] == (0, 0) for name in names), 60,
               "every message settled")

    received = receiver.received()
    assert all(d.verified for d in received), [d.errors for d in received if d.errors]
    copies = collections.Counter((d.id, d.path) for d in received)
    assert set(copies.values()) == {1}, [key for key, n in copies.items() if n > 1]
    assert delivery_rows(postgres_url) == [("delivered", 1, 2 * EVENTS)]
    for notifier in notifiers:  # both took a share of the work
        assert "delivered (try 1)" in notifier.log(), notifier.describe()


def test_a_notifier_killed_mid_send_is_taken_over_after_its_lease(postgres_url, amqp_prefix,
                                                                 receiver, spawn):
    topology = Topology(amqp_prefix, TEST_RETRY_DELAYS, delivery_delays=TEST_DELIVERY_DELAYS)
    env = notifier_env(postgres_url, amqp_prefix, [receiver.url("/hook")])
    answer = receiver.hold("/hook")  # the first try gets no answer until the test says so
    [first] = start_notifiers(spawn, env, topology, ["notifier-1"],
                              module=("-m", "tests.short_lease"))
    publish_events(topology, [1])
    wait_until(receiver.received, 30, "the first try reached the endpoint")
    [second] = start_notifiers(spawn, env, topology, ["notifier-2"],
                               module=("-m", "tests.short_lease"))
    first.stop(signal.SIGKILL)  # mid-send: its claim stays behind it
    answer.set()

    wait_until(lambda: len(receiver.received()) == 2, 60, "the second notifier took over")
    wait_until(lambda: delivery_rows(postgres_url) == [("delivered", 1, 1)], 30,
               lambda: "not delivered: %s" % delivery_rows(postgres_url))
    killed_try, taken_over = receiver.received()
    assert killed_try.verified and taken_over.verified
    assert killed_try.id == taken_over.id == "image.uploaded:req-1"
    assert "delivered (try 1)" in second.log(), second.describe()
