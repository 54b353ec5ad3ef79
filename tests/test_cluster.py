"""A RabbitMQ cluster: AMQP_URL listing its nodes, quorum queues, and the app's
three roles, as separate processes, living through the loss of their node.

The cluster is three real nodes started beside the machine's default one
(tests/rabbitmq_cluster.py); the default node is never touched.
"""

import asyncio
import collections
import itertools
import logging
import re
import threading
import time

import psycopg2
import pytest

from broker import Topology
from broker.rabbitmq import RabbitMQBroker
from config import ConfigError, load_config
from tests.conftest import AMQP_URL, TEST_RETRY_DELAYS, amqp_connection, free_port, \
    unique_name
from tests.helpers import eventually, make_image
from tests.processes import RABBIT_READY, WEB_READY, no_traceback, process_env, upload, \
    wait_all_stored, wait_until
from tests.rabbitmq_cluster import rabbitmq_cluster  # noqa: F401 (the fixture)

UPLOADERS = 4          # client threads uploading at once
BEFORE_STOP = 20       # uploads answered before the gate opens
AFTER_RECOVERY = 20    # uploads accepted after the node is gone, before the stream ends


# -- settings ----------------------------------------------------------------------

def test_amqp_url_lists_the_nodes_of_a_cluster():
    config = load_config([], {"AMQP_URL": " amqp://a:1/%2F, amqps://b:2/%2F,,amqp://c ",
                              "AMQP_QUEUE_TYPE": "quorum"})
    assert config.amqp_urls == ["amqp://a:1/%2F", "amqps://b:2/%2F", "amqp://c"]
    assert config.amqp_queue_type == "quorum"
    assert load_config([], {"AMQP_URL": "amqp://a"}).amqp_queue_type == "classic"
    with pytest.raises(ConfigError, match="AMQP_QUEUE_TYPE must be classic or quorum"):
        load_config([], {"AMQP_URL": "amqp://a", "AMQP_QUEUE_TYPE": "stream"})
    with pytest.raises(ConfigError, match="AMQP_URL must be"):
        load_config([], {"AMQP_URL": "amqp://a,http://b"})


def test_every_url_is_redacted_in_the_description():
    broker = RabbitMQBroker(Topology("p.", queue_type="quorum"),
                            ["amqp://u:s3cret@a:1/%2F", "amqp://u:0ther@b:2/%2F"])
    assert broker.describe() == ("rabbitmq at amqp://u:***@a:1/%2F, amqp://u:***@b:2/%2F "
                                 "(name prefix 'p.'), quorum queues")


def test_quorum_arguments_of_each_queue():
    topology = Topology("p.", (2,), "quorum")
    retry = next(spec for spec in topology.queues
                 if spec.name == "p.image-processing-queue.retry.2s")
    for spec in topology.queues:
        if spec.ttl is None:
            assert spec.amqp_arguments == {"x-queue-type": "quorum"}, spec
        else:
            assert spec.amqp_arguments["x-dead-letter-strategy"] == "at-least-once", spec
    assert retry.amqp_arguments == {
        "x-queue-type": "quorum", "x-message-ttl": 2000,
        "x-dead-letter-exchange": "p.image-processing",
        "x-dead-letter-routing-key": "image-processing-queue",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    assert all(spec.amqp_arguments.get("x-queue-type") is None
               for spec in Topology("p.", (2,)).queues)


@pytest.mark.gen_test(timeout=30)
async def test_the_first_node_that_answers_is_used(amqp_prefix, caplog):
    caplog.set_level(logging.INFO, logger="broker.rabbitmq")
    nobody = "amqp://guest:guest@127.0.0.1:%d/%%2F" % free_port()
    broker = RabbitMQBroker(Topology(amqp_prefix), [nobody, AMQP_URL])
    await broker.start()
    try:
        await asyncio.wait_for(broker.connected.wait(), 20)
        assert broker.ready
    finally:
        await broker.close()
    assert "rabbitmq unavailable at %s" % nobody.replace(":guest@", ":***@") in caplog.text
    assert "rabbitmq connected to %s" % AMQP_URL.replace(":guest@", ":***@") in caplog.text
    assert "reconnecting in" not in caplog.text  # the next node was tried at once
    assert "guest:guest" not in caplog.text


# -- quorum queues on the cluster --------------------------------------------------

def in_thread(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


@pytest.mark.gen_test(timeout=90)
async def test_quorum_queues_are_declared_and_a_delay_queue_dead_letters_back(
        rabbitmq_cluster):  # noqa: F811
    cluster = rabbitmq_cluster
    prefix = unique_name() + "."
    topology = Topology(prefix, TEST_RETRY_DELAYS, "quorum")
    broker = RabbitMQBroker(topology, cluster.urls)
    await broker.start()
    try:
        await asyncio.wait_for(broker.connected.wait(), 30)
        # What the broker really declared, as another node of the cluster reports it.
        listed = await in_thread(cluster.queue_info, cluster.nodes[2], prefix)
        assert {name: kind for name, (kind, _args) in listed.items()} == {
            spec.name: "quorum" for spec in topology.queues}
        for spec in topology.queues:
            if spec.ttl is not None:
                assert '{"x-dead-letter-strategy","at-least-once"}' in listed[spec.name][1]
                assert '{"x-overflow","reject-publish"}' in listed[spec.name][1]

        received = asyncio.Queue()
        broker.consume(topology.upload_queue, received.put_nowait, prefetch=1)
        delay = TEST_RETRY_DELAYS[0]
        await broker.publish(topology.retry_exchange, topology.retry_key(delay), b"again",
                             message_id="m-1", headers={"nickname": "q"}, mandatory=True)
        message = await asyncio.wait_for(received.get(), 30)
        message.ack()
        assert (message.body, message.message_id, message.headers["nickname"]) == (
            b"again", "m-1", "q")
        death = message.headers["x-death"][0]
        assert (death["queue"], death["reason"]) == (
            "%s.%s" % (topology.upload_queue, topology.retry_key(delay)), "expired")
    finally:
        await broker.close()


@pytest.mark.gen_test(timeout=90)
async def test_a_classic_deployment_does_not_turn_quorum_in_place(
        rabbitmq_cluster, caplog):  # noqa: F811
    prefix = unique_name() + "."
    classic = RabbitMQBroker(Topology(prefix, TEST_RETRY_DELAYS), rabbitmq_cluster.urls)
    await classic.start()
    await asyncio.wait_for(classic.connected.wait(), 30)
    await classic.close()

    quorum = RabbitMQBroker(Topology(prefix, TEST_RETRY_DELAYS, "quorum"), rabbitmq_cluster.urls)
    await quorum.start()
    try:
        # The declare is refused, and the broker says why, on every attempt.
        await eventually(lambda: "inequivalent arg 'x-queue-type'" in caplog.text, 30)
        assert not quorum.ready
    finally:
        await quorum.close()


# -- three processes, and their node stopped under a stream of uploads ---------------

class UploadStream:
    """Client threads uploading small, distinct images one after another until
    stopped; every answer (or error) is kept with the time it arrived."""

    def __init__(self, port):
        self.port = port
        self.results = []   # (started, answered, HTTP status or None, body or the error)
        self.changed = threading.Condition()
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(UPLOADERS)]

    def start(self):
        for thread in self._threads:
            thread.start()

    def _run(self):
        while not self._stop.is_set():
            number = next(self._numbers)
            data = make_image("PNG", size=(24, 16), color=(number % 256, number // 256, 99))
            started = time.monotonic()
            try:
                status, body = upload(self.port, data, nickname="cluster",
                                      filename="%d.png" % number, timeout=60)
            except Exception as exc:  # an unanswered upload: counted, and fails the test
                status, body = None, exc
            with self.changed:
                self.results.append((started, time.monotonic(), status, body))
                self.changed.notify_all()

    def wait_for(self, check, timeout, what):
        with self.changed:
            if not self.changed.wait_for(lambda: check(self.results), timeout):
                raise AssertionError("%s: not within %ss; %d answers so far"
                                     % (what, timeout, len(self.results)))

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
            assert not thread.is_alive(), "an upload never came back"


def node_in_log(cluster, proc):
    """The cluster node a process says it connected to (its last such line)."""
    ports = re.findall(r"rabbitmq connected to amqp://guest:\*\*\*@127\.0\.0\.1:(\d+)/",
                       proc.log())
    assert ports, proc.describe()
    return next(node for node in cluster.nodes if node.port == int(ports[-1]))


def test_processes_live_through_the_loss_of_their_node(
        rabbitmq_cluster, postgres_url, spawn, tmp_path):  # noqa: F811
    cluster = rabbitmq_cluster
    prefix = unique_name() + "."
    settings = dict(DATABASE_URL=postgres_url, AMQP_URL=",".join(cluster.urls),
                    AMQP_QUEUE_TYPE="quorum", AMQP_PREFIX=prefix,
                    RETRY_DELAYS=",".join(str(d) for d in TEST_RETRY_DELAYS),
                    CONFIRM_TIMEOUT=30)
    web_gate, processor_gate = tmp_path / "hold-web", tmp_path / "hold-processor"
    port = free_port()
    web = spawn("web", ["-m", "tests.held_publishes", str(web_gate), "--role=web", "--port",
                        str(port)], process_env(**settings), ready=WEB_READY + RABBIT_READY)
    processor = spawn("processor", ["-m", "tests.held_publishes", str(processor_gate),
                                    "--role=processor"],
                      process_env(**settings), ready=RABBIT_READY)
    notifier = spawn("notifier", ["-m", "consumers.notifier"], process_env(**settings),
                     ready=RABBIT_READY)
    procs = (web, processor, notifier)
    for proc in procs:
        assert "guest:guest" not in proc.log(), proc.log()   # no password in the log
        assert "quorum queues" in proc.log(), proc.log()
    node = node_in_log(cluster, web)
    assert all(node_in_log(cluster, proc) is node for proc in procs)  # the first that answers
    kinds = cluster.queue_info(node, prefix)
    assert {kind for kind, _args in kinds.values()} == {"quorum"}, kinds

    stream = UploadStream(port)
    stream.start()
    stopped_at = None
    try:
        stream.wait_for(lambda results: len(results) >= BEFORE_STOP, 60, "uploads before the stop")
        # Hold what the processor publishes (the event of an upload it has just
        # stored, so the upload stays unacked), then what the web publishes (so
        # uploads are unconfirmed) when the node goes.
        for proc, gate in ((processor, processor_gate), (web, web_gate)):
            gate.touch()
            proc.wait_for_log("publish held")
        stop_began = time.monotonic()
        node.stop()
        stopped_at = time.monotonic()  # the node's VM has exited
        stream.wait_for(lambda results: sum(1 for started, _, status, _ in results
                                            if started > stopped_at and status == 202)
                        >= AFTER_RECOVERY, 120, "uploads accepted after the node stopped")
    finally:
        stream.stop()
        if stopped_at is not None:
            node.restart()   # the next test gets the whole cluster
    results = stream.results

    unanswered = [body for _, _, status, body in results if status not in (202, 503)]
    assert not unanswered, unanswered
    accepted = [body["request_id"] for _, _, status, body in results if status == 202]
    refused_answers = sum(1 for _, _, status, _ in results if status == 503)
    # Accepted again: the first 202 for an upload sent after the web had answered
    # its first 503 (so it cannot have gone to the stopped node).
    first_refusal = min(answered for _, answered, status, _ in results if status == 503)
    accepted_again = min(answered for started, answered, status, _ in results
                         if started > first_refusal and status == 202)
    held = web.log().count("publish held")
    assert held >= 1 and "gate closed" in web.log() and "gate closed" in processor.log()
    # Each held upload was never confirmed: answered 503, never 202.
    assert refused_answers >= held

    final = wait_all_stored(port, accepted, timeout=120)
    assert {status["status"] for status in final.values()} == {"stored"}, final
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT request_id FROM images")
            images = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT status, count(*) FROM uploads GROUP BY status")
            rows = dict(cursor.fetchall())
    finally:
        conn.close()
    assert sorted(images) == sorted(accepted)     # every 202 stored once, nothing else
    assert rows.get("stored") == len(accepted)
    assert rows.get("refused", 0) >= held          # the held ones are marked refused
    assert set(rows) <= {"stored", "refused"}, rows

    processor_log = processor.log()
    absorbed = (processor_log.count("was stored before (redelivery)")
                + processor_log.count("was refused at upload (503), dropped"))
    redelivered = collections.Counter(re.findall(r"upload (\w+) was stored before", processor_log))
    # Each upload stored but not acked when the node went came again, and was
    # absorbed: its image stored once (checked above), its event published.
    assert processor_log.count("was stored before (redelivery)") >= 1, processor_log
    # Every stored upload is announced; an event the cluster nacked while a queue
    # elected its new leader comes with the upload's next delivery (after the
    # consumer's back-off, up to 30 s).
    wait_until(lambda: not [r for r in accepted if r not in notifier.log()], 120,
               lambda: "no notification for %d stored uploads" % len(
                   [r for r in accepted if r not in notifier.log()]))
    survivors = {node_in_log(cluster, proc) for proc in procs}
    assert node not in survivors, "a process still names the stopped node"
    for proc in procs:
        assert no_traceback(proc.log()), proc.log()
    amqp_connection().close()   # the machine's default node still serves
    print("\ncluster node-stop: %d uploads answered, %d accepted (202), %d stored, "
          "%d refused (503: %d with a row marked refused, %d of them held unconfirmed), "
          "%d duplicates absorbed (at most %d of one upload), "
          "accepted again %.1f s after the stop began (the node took %.1f s to stop); "
          "cluster start %.1f s, %d MB for 3 nodes"
          % (len(results), len(accepted), len(images), refused_answers, rows.get("refused", 0),
             held, absorbed, max(redelivered.values(), default=0), accepted_again - stop_began,
             stopped_at - stop_began, cluster.start_seconds, cluster.memory_mb()))
