"""Prometheus metrics (DESIGN "Operations"): ``GET /metrics`` read back with
prometheus_client's own parser, on the in-process stack and on RabbitMQ +
PostgreSQL + Redis: the counters move as uploads are accepted, refused,
rejected, stored, failed, retried and dead-lettered, as images are read through
the cache and as events are notified; HTTP metrics go by route, never by path;
queue gauges are the broker's own counts; a processor serves METRICS_PORT."""

import json

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from broker import BrokerUnavailable, Topology
from storage import StorageError
from tests import conftest
from tests.conftest import AMQP_URL, REDIS_URL, free_port
from tests.helpers import eventually, make_image, post_upload, wait_for_upload
from tests.receivers import SECRET, WebhookReceiver
from tests.processes import RABBIT_READY, WEB_READY, fetch, process_env, upload, wait_stored
from tests.test_broker import waiting_in
from tests.test_consumers import make_upload, publish_upload

FAMILIES = {"http_requests", "http_request_duration_seconds", "photo_app_uploads",
            "photo_app_processed", "photo_app_processing_seconds",
            "photo_app_cache_requests", "photo_app_notifications",
            "photo_app_broker_confirm_seconds", "photo_app_queue_messages"}


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


def parse(text):
    """``{family name: family}`` and ``{(sample name, labels): value}`` of an exposition."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in families.values() for sample in family.samples}
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


async def scrape(http_client, base_url):
    response = await http_client.fetch(base_url + "/metrics")
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return parse(response.body.decode())


async def until(http_client, base_url, check):
    """Scrape until ``check(samples)`` holds; return the samples."""
    async def scraped():
        samples = (await scrape(http_client, base_url))[1]
        return samples if check(samples) else None
    return await eventually(scraped, timeout=15)


async def upload_and_wait(http_client, base_url, data, nickname="metered"):
    response = await post_upload(http_client, base_url, nickname, data)
    assert response.code == 202, response.body
    return await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])


@pytest.mark.gen_test(timeout=60)
async def test_every_family_is_served_and_counters_follow_uploads(http_client, base_url,
                                                                 context):
    families, samples = await scrape(http_client, base_url)
    assert FAMILIES <= set(families)
    for outcome in ("accepted", "refused", "rejected"):  # present at 0 from the start
        assert ("photo_app_uploads_total", (("outcome", outcome),)) in samples

    data = make_image("PNG", color=(9, 8, 7))
    stored = await upload_and_wait(http_client, base_url, data)
    again = await upload_and_wait(http_client, base_url, data)  # same bytes, same nickname
    failed = await upload_and_wait(http_client, base_url, make_image("JPEG")[:300])
    assert (stored["status"], again["status"], failed["status"]) == ("stored", "stored", "failed")
    assert again["duplicate"] is True
    rejected = await post_upload(http_client, base_url, "metered", b"not an image at all")
    assert rejected.code == 415

    url = "%s/api/images/%d/content" % (base_url, stored["image_id"])
    assert (await http_client.fetch(url)).body == data   # read from the database: a miss
    assert (await http_client.fetch(url)).body == data   # from the cache: a hit

    def counted(samples):
        return value(samples, "photo_app_notifications_total", action="log",
                     outcome="delivered") >= 3
    samples = await until(http_client, base_url, counted)
    assert value(samples, "photo_app_uploads_total", outcome="accepted") == 3
    assert value(samples, "photo_app_uploads_total", outcome="rejected") == 1
    assert value(samples, "photo_app_uploads_total", outcome="refused") == 0
    assert value(samples, "photo_app_processed_total", outcome="stored") == 1
    assert value(samples, "photo_app_processed_total", outcome="duplicate") == 1
    assert value(samples, "photo_app_processed_total", outcome="failed") == 1
    assert value(samples, "photo_app_processing_seconds_count") == 3
    assert value(samples, "photo_app_cache_requests_total", result="miss") == 1
    assert value(samples, "photo_app_cache_requests_total", result="hit") == 1
    assert value(samples, "photo_app_cache_requests_total", result="error") == 0
    # Each upload and its final event (uploaded or failed) were confirmed.
    assert value(samples, "photo_app_broker_confirm_seconds_count") >= 3 * 2
    assert value(samples, "http_requests_total", handler="ImagesHandler", method="POST",
                 code="202") == 3
    assert value(samples, "http_requests_total", handler="ImageContentHandler", method="GET",
                 code="200") == 2
    assert value(samples, "http_request_duration_seconds_count",
                 handler="ImageContentHandler", method="GET") == 2


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_the_broker_does_not_take_counts_refused(http_client, base_url, context,
                                                                 monkeypatch):
    async def unavailable(*args, **kwargs):
        raise BrokerUnavailable("no confirm (injected)")
    monkeypatch.setattr(context.broker, "publish", unavailable)
    response = await post_upload(http_client, base_url, "refused", make_image())
    assert response.code == 503
    samples = (await scrape(http_client, base_url))[1]
    assert value(samples, "photo_app_uploads_total", outcome="refused") == 1
    assert value(samples, "photo_app_uploads_total", outcome="accepted") == 0


@pytest.mark.gen_test(timeout=60)
async def test_retries_then_the_dead_letter_are_counted(http_client, base_url, context,
                                                        monkeypatch):
    async def database_away(*args, **kwargs):
        raise StorageError("the database went away (injected)")
    monkeypatch.setattr(context.storage, "store_image", database_away)
    upload = make_upload()
    await publish_upload(context, upload)

    samples = await until(http_client, base_url, lambda samples: value(
        samples, "photo_app_processed_total", outcome="dead_lettered") == 1)
    attempts = context.config.max_attempts
    assert value(samples, "photo_app_processed_total", outcome="retried") == attempts - 1
    assert value(samples, "photo_app_processed_total", outcome="stored") == 0


@pytest.mark.gen_test(timeout=60)
async def test_http_metrics_go_by_route_never_by_path(http_client, base_url, context):
    for image_id in range(1000, 1050):
        response = await http_client.fetch("%s/api/images/%d" % (base_url, image_id),
                                           raise_error=False)
        assert response.code == 404
    await http_client.fetch(base_url + "/no/such/page/%d" % 7, raise_error=False)

    families, samples = await scrape(http_client, base_url)
    requests = [sample for sample in families["http_requests"].samples
                if sample.name == "http_requests_total"]
    assert all(set(sample.labels) == {"handler", "method", "code"} for sample in requests)
    assert not any("/" in label for sample in requests for label in sample.labels.values())
    image_gets = [sample for sample in requests if sample.labels["handler"] == "ImageHandler"]
    assert [(s.labels, s.value) for s in image_gets] == [
        ({"handler": "ImageHandler", "method": "GET", "code": "404"}, 50)]
    assert value(samples, "http_requests_total", handler="NotFoundHandler", method="GET",
                 code="404") == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"roles": ("web",)}])  # no consumer takes them
async def test_queue_gauges_are_the_brokers_counts(http_client, base_url, context):
    topology = context.broker.topology
    for _ in range(3):
        await publish_upload(context, make_upload())
    assert await waiting_in(context.broker, topology.upload_queue) == 3

    families, samples = await scrape(http_client, base_url)
    gauges = {sample.labels["queue"]: sample.value
              for sample in families["photo_app_queue_messages"].samples}
    assert set(gauges) == {spec.name for spec in topology.queues}
    assert gauges[topology.upload_queue] == 3
    for queue, count in gauges.items():
        assert count == await waiting_in(context.broker, queue), queue


@pytest.mark.gen_test(timeout=30)
async def test_a_broker_that_cannot_count_leaves_the_gauges_out(http_client, base_url, context,
                                                                monkeypatch):
    async def away():
        raise BrokerUnavailable("not connected (injected)")
    monkeypatch.setattr(context.broker, "depths", away)
    families, samples = await scrape(http_client, base_url)
    assert FAMILIES <= set(families)
    assert families["photo_app_queue_messages"].samples == []


def scrape_port(port):
    status, headers, body = fetch(port, "GET", "/metrics")
    assert status == 200, body
    return parse(body.decode())


def test_a_processor_serves_its_metrics_on_metrics_port(spawn, postgres_url, amqp_prefix,
                                                        redis_prefix):
    shared = dict(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                  REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix)
    web_port, metrics_port = free_port(), free_port()
    spawn("web", ["server.py", "--role=web", "--port", str(web_port)],
          process_env(**shared), ready=WEB_READY + RABBIT_READY)
    spawn("processor", ["-m", "consumers.processor"],
          process_env(METRICS_PORT=metrics_port, **shared),
          ready=RABBIT_READY + ("metrics: listening on",))

    status, accepted = upload(web_port, make_image("PNG", color=(1, 1, 1)))
    assert status == 202, accepted
    wait_stored(web_port, accepted["request_id"])

    families, samples = scrape_port(metrics_port)
    assert FAMILIES <= set(families)
    assert value(samples, "photo_app_processed_total", outcome="stored") == 1
    assert value(samples, "photo_app_uploads_total", outcome="accepted") == 0  # the web's
    queues = {sample.labels["queue"] for sample in families["photo_app_queue_messages"].samples}
    assert queues == {spec.name for spec in Topology(amqp_prefix).queues}
    web_samples = scrape_port(web_port)[1]
    assert value(web_samples, "photo_app_uploads_total", outcome="accepted") == 1
    assert value(web_samples, "photo_app_processed_total", outcome="stored") == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [
    {"cache_url": "redis://127.0.0.1:%d/0" % free_port()}])  # nothing listens there
async def test_a_cache_that_fails_counts_errors(http_client, base_url, context):
    stored = await upload_and_wait(http_client, base_url, make_image())
    url = "%s/api/images/%d/content" % (base_url, stored["image_id"])
    assert (await http_client.fetch(url)).code == 200  # from the database
    samples = (await scrape(http_client, base_url))[1]
    assert value(samples, "photo_app_cache_requests_total", result="error") == 1
    assert value(samples, "photo_app_cache_requests_total", result="miss") == 0


HOOK_PORT = free_port()
HOOKS = {"webhook_urls": tuple("http://127.0.0.1:%d%s" % (HOOK_PORT, path)
                               for path in ("/flaky", "/gone", "/dead")),
         "webhook_secret": SECRET, "webhook_allow_private": True}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [HOOKS])
async def test_webhook_deliveries_count_how_they_end(http_client, base_url, context):
    receiver = WebhookReceiver(port=HOOK_PORT).start()
    try:
        tries = len(conftest.TEST_DELIVERY_DELAYS) + 1
        receiver.answer("/flaky", 500)
        receiver.answer("/gone", 410)
        receiver.answer("/dead", *[500] * tries)
        await upload_and_wait(http_client, base_url, make_image())

        def ended(samples):  # each delivery settled: a retry is counted before its end
            return all(value(samples, "photo_app_notifications_total", action="webhook",
                             outcome=outcome) == 1 for outcome in ("delivered", "gone", "dead"))
        samples = await until(http_client, base_url, ended)
        assert value(samples, "photo_app_notifications_total", action="webhook",
                     outcome="retried") == 1 + (tries - 1)
        # The notifier queued the one event for the sender, and logged it.
        assert value(samples, "photo_app_notifications_total", action="webhook",
                     outcome="queued") == 1
        assert value(samples, "photo_app_notifications_total", action="log",
                     outcome="delivered") == 1
        assert len(receiver.received("/dead")) == tries
    finally:
        receiver.stop()
