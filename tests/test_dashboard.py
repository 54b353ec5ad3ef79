"""The operations dashboard: ``GET /dashboard`` and its figures, ``GET /api/dashboard``.

Only the operator sees them (the /login cookie, or the bearer token for the JSON);
the figures are what happened (uploads per minute and times to stored from the
database, queue depths from the broker, the events this process heard); the
requeue forms of the page need their XSRF token.  The page itself, in Chromium,
is in tests/test_browser.py.
"""

import json
import re
import urllib.parse
import uuid

import pytest

from storage import DEAD
from tests.conftest import AMQP_URL, REDIS_URL
from tests.helpers import eventually, make_image, post_upload, wait_for_upload
from tests.processes import (fetch, process_env, split_deployment, upload, wait_stored,
                             wait_until)
from tests.test_pages import Page, assert_no_inline_code, assert_safe_headers

TOKEN = "dashboard-operator-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
embedded_only = pytest.mark.parametrize("stack", ["embedded"])
# The JSON's figures on the embedded defaults and on PostgreSQL + RabbitMQ + Redis.
both_stacks = pytest.mark.parametrize("stack", ["embedded", "services"])


@pytest.fixture
def config_overrides():
    return {"api_token": TOKEN}


async def sign_in(http_client, base_url):
    """Sign in at /login as a browser does; ``(cookie header, xsrf token)``."""
    form = await http_client.fetch(base_url + "/login")
    xsrf = re.search(r"_xsrf=([^;]+)", form.headers["Set-Cookie"]).group(1)
    signed = await http_client.fetch(
        base_url + "/login", method="POST", follow_redirects=False, raise_error=False,
        body=urllib.parse.urlencode({"token": TOKEN, "_xsrf": xsrf, "next": "/dashboard"}),
        headers={"Cookie": "_xsrf=" + xsrf})
    assert signed.code == 302 and signed.headers["Location"] == "/dashboard"
    operator = [value.split(";", 1)[0] for value in signed.headers.get_list("Set-Cookie")
                if value.startswith("operator=")]
    return "_xsrf=%s; %s" % (xsrf, operator[0]), xsrf


async def dashboard(http_client, base_url, headers=AUTH):
    response = await http_client.fetch(base_url + "/api/dashboard", headers=headers)
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def dead_letter(storage, nickname="unlucky"):
    request_id = uuid.uuid4().hex
    await storage.record_dead_letter(request_id, nickname, "photo.png", "image/png",
                                     make_image(color=(3, 4, 5)), 3,
                                     "gave up after 3 attempts: StorageError: gone")
    return request_id


async def failed_delivery(storage):
    delivery = await storage.create_delivery(
        "webhook", "http://127.0.0.1:9/hook", "image.uploaded:" + uuid.uuid4().hex,
        "image.uploaded", {"event": "image.uploaded"})
    await storage.settle_delivery(delivery["id"], DEAD, 5, "ConnectionRefusedError")
    return delivery["id"]


# -- who may see it -----------------------------------------------------------------

@embedded_only
@pytest.mark.gen_test(timeout=30)
async def test_not_signed_in_the_page_sends_to_login_and_the_json_is_a_401(http_client,
                                                                          base_url, context):
    page = await http_client.fetch(base_url + "/dashboard", follow_redirects=False,
                                   raise_error=False)
    assert page.code == 302 and page.headers["Location"] == "/login?next=/dashboard"
    data = await http_client.fetch(base_url + "/api/dashboard", raise_error=False)
    assert data.code == 401 and data.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(data.body)["error"] == "unauthorized"
    wrong = {"Authorization": "Bearer not-the-token"}
    for path in ("/dashboard", "/api/dashboard"):
        refused = await http_client.fetch(base_url + path, headers=wrong, raise_error=False)
        assert refused.code == 403, path
        assert TOKEN.encode() not in refused.body

    cookies, _ = await sign_in(http_client, base_url)
    page = await http_client.fetch(base_url + "/dashboard", headers={"Cookie": cookies})
    assert page.code == 200 and b'id="throughput"' in page.body
    assert_safe_headers(page)
    parsed = Page(page.body.decode())
    assert_no_inline_code(parsed, "/dashboard")
    [root] = parsed.all("section", id="dashboard")
    assert root["data-snapshot-url"] == "/api/dashboard" and root["data-xsrf"]
    assert (await http_client.fetch(base_url + "/dashboard", headers=AUTH)).code == 200
    assert "minutes" in await dashboard(http_client, base_url, {"Cookie": cookies})


@embedded_only
@pytest.mark.parametrize("config_overrides", [{}])
@pytest.mark.gen_test(timeout=30)
async def test_without_an_api_token_the_dashboard_is_closed(http_client, base_url, context):
    for path in ("/dashboard", "/api/dashboard"):
        response = await http_client.fetch(base_url + path, raise_error=False,
                                           follow_redirects=False)
        assert response.code == 403, path


@embedded_only
@pytest.mark.gen_test(timeout=40)
async def test_the_requeue_forms_need_the_xsrf_token(http_client, base_url, context):
    request_id = await dead_letter(context.storage)
    delivery_id = await failed_delivery(context.storage)
    cookies, xsrf = await sign_in(http_client, base_url)
    shown = await dashboard(http_client, base_url, {"Cookie": cookies})
    [letter] = shown["failed"]
    [delivery] = shown["deliveries"]
    assert (letter["request_id"], delivery["id"]) == (request_id, delivery_id)
    form = {"Cookie": cookies, "Content-Type": "application/x-www-form-urlencoded"}

    for url in (letter["requeue_url"], delivery["requeue_url"]):
        for body in ("", "_xsrf=" + "0" * len(xsrf)):  # no token, a wrong one
            refused = await http_client.fetch(base_url + url, method="POST", body=body,
                                              headers=form, raise_error=False)
            assert refused.code == 403, (url, body)
    assert await context.storage.get_dead_letter(request_id) is not None
    assert (await context.storage.get_delivery(delivery_id))["status"] == DEAD

    for url in (letter["requeue_url"], delivery["requeue_url"]):
        sent = await http_client.fetch(base_url + url, method="POST", headers=form,
                                       body=urllib.parse.urlencode({"_xsrf": xsrf}))
        assert sent.code == 202, url
    status = await wait_for_upload(http_client, base_url, request_id)
    assert status["status"] == "stored"
    assert (await dashboard(http_client, base_url))["failed"] == []


# -- the figures are what happened --------------------------------------------------

@both_stacks
@pytest.mark.gen_test(timeout=60)
async def test_the_snapshot_counts_what_happened(http_client, base_url, context):
    stored = []
    for color in ((10, 20, 30), (40, 50, 60)):
        response = await post_upload(http_client, base_url, "counted", make_image(color=color))
        stored.append(json.loads(response.body)["request_id"])
    response = await post_upload(http_client, base_url, "counted", make_image("JPEG")[:300])
    broken = json.loads(response.body)["request_id"]
    for request_id in stored + [broken]:
        await wait_for_upload(http_client, base_url, request_id)
    letter = await dead_letter(context.storage)
    image_id = (await context.storage.get_upload(stored[0]))["image_id"]
    for _ in range(3):
        await http_client.fetch("%s/api/images/%d/content" % (base_url, image_id))

    def heard(snapshot):
        return {(event["event"], event.get("request_id")) for event in snapshot["events"]}

    expected = {("image.uploaded", stored[0]), ("image.uploaded", stored[1]),
                ("image.failed", broken), ("image.processing", broken)}

    async def settled():
        snapshot = await dashboard(http_client, base_url)
        idle = {q["messages"] for q in snapshot["queues"]} == {0}  # the notifier is done too
        return snapshot if idle and expected <= heard(snapshot) else None
    snapshot = await eventually(settled, timeout=15, interval=0.1)

    assert snapshot["totals"] == {"accepted": 4, "stored": 2, "failed": 2}
    minutes = snapshot["minutes"]
    assert len(minutes) == 60
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)
    for what in ("accepted", "stored", "failed"):
        assert sum(m[what] for m in minutes) == snapshot["totals"][what]
    processing = snapshot["processing_seconds"]
    assert processing["count"] == 2 and 0 <= processing["p50"] <= processing["p95"] < 60
    assert [l["request_id"] for l in snapshot["failed"]] == [letter]
    assert snapshot["deliveries"] == []
    assert snapshot["health"] == {"database": "ok", "broker": "ok", "cache": "ok"}
    cache = snapshot["cache"]
    assert cache["scope"] == "this web process"
    assert cache["hits"] + cache["misses"] == 3 and cache["hits"] >= 2
    assert cache["hit_ratio"] == pytest.approx(cache["hits"] / 3)
    topology = context.broker.topology
    assert [q["queue"] for q in snapshot["queues"]] == [spec.name for spec in topology.queues]
    assert snapshot["events"][0]["heard_at"] >= snapshot["events"][-1]["heard_at"]


@both_stacks
@pytest.mark.parametrize("config_overrides", [{"api_token": TOKEN, "roles": ("web",)}])
@pytest.mark.gen_test(timeout=40)
async def test_the_snapshot_gives_the_brokers_queue_depths(http_client, base_url, context):
    """No processor runs: what is accepted waits in the uploads queue, and says so."""
    for color in ((1, 1, 1), (2, 2, 2), (3, 3, 3)):
        response = await post_upload(http_client, base_url, "waiting", make_image(color=color))
        assert response.code == 202
    topology = context.broker.topology

    async def depths():
        snapshot = await dashboard(http_client, base_url)
        counts = {q["queue"]: q["messages"] for q in snapshot["queues"]}
        return counts if counts[topology.upload_queue] == 3 else None
    counts = await eventually(depths, timeout=10, interval=0.1)
    assert {name: count for name, count in counts.items() if count} == {
        topology.upload_queue: 3}
    holds = {q["queue"]: q["holds"] for q in (await dashboard(http_client, base_url))["queues"]}
    assert holds[topology.upload_queue] == "uploads"
    assert holds[topology.dead_queue] == "dead letters to record"
    assert holds[topology.delivery_retry_queue("email", topology.delivery_delays[0])] == (
        "email retries after %gs" % topology.delivery_delays[0])


# -- a split deployment: every web process shows the same, true figures --------------

def test_every_web_process_shows_what_the_processor_did(postgres_url, amqp_prefix,
                                                         redis_prefix, spawn):
    """Two web processes, a processor and a notifier, each its own process, on
    PostgreSQL, RabbitMQ and Redis: an upload taken by one web process is counted,
    timed and heard by the other, which neither accepted nor processed it."""
    env = process_env(DATABASE_URL=postgres_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=amqp_prefix,
                      REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix, API_TOKEN=TOKEN)
    ports = split_deployment(spawn, env)
    code, accepted = upload(ports[0], make_image(color=(70, 80, 90)), nickname="split")
    assert code == 202, accepted
    wait_stored(ports[0], accepted["request_id"])

    def figures():
        code, _headers, body = fetch(ports[1], "GET", "/api/dashboard", headers=AUTH)
        assert code == 200, body
        snapshot = json.loads(body)
        heard = {(e["event"], e["request_id"]) for e in snapshot["events"]}
        idle = {q["messages"] for q in snapshot["queues"]} == {0}  # the notifier is done too
        return snapshot if idle and ("image.uploaded", accepted["request_id"]) in heard else None
    snapshot = wait_until(figures, 10, "web-1 did not hear the upload, or queues stay busy")
    assert snapshot["totals"] == {"accepted": 1, "stored": 1, "failed": 0}
    assert snapshot["processing_seconds"]["count"] == 1
    assert snapshot["health"] == {"database": "ok", "broker": "ok", "cache": "ok"}
    assert snapshot["cache"]["scope"] == "this web process"
