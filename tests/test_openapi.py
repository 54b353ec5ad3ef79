"""The OpenAPI document (``GET /api/openapi.json``) against the application, and
Schemathesis against a real server.

1. The document is valid OpenAPI 3.1 (openapi-spec-validator), and it is what
   ``/api/openapi.json`` serves.
2. Its paths are exactly the application's routes, read from the Tornado router
   itself (its own reverse of each pattern), with exactly the methods each
   handler defines and the path parameters the pattern's groups capture; and
   every operation of the document reaches its handler on a running app (never
   the 404 of an unknown path, never a 405).
3. A method without ``@operation``, a group without a name or a pattern that is
   not a path stops the application from being built.
4. ``schemathesis run`` with its default checks (no 5xx; statuses, content
   types, headers and bodies as documented; schema-valid requests accepted,
   invalid ones refused; 405 for other methods; ...) against a server process
   on embedded defaults and on PostgreSQL + RabbitMQ + Redis: a fixed number of
   examples per operation, generated deterministically (the same cases every
   run), with schemathesis.toml's few settings (what a schema cannot foresee).
"""

import json
import os
import re
import subprocess
import sys
import urllib.parse

import pytest
import tornado.web
from openapi_spec_validator import validate

import handlers
import handlers.pages
from config import Config
from handlers import make_app, web_routes
from handlers.base import BaseHandler, NotFoundHandler, implemented_methods
from handlers.openapi import OpenApiError, openapi_document, operation
from tests.conftest import AMQP_URL, REDIS_URL, free_port
from tests.helpers import make_image, post_upload
from tests.processes import RABBIT_READY, ROOT, WEB_READY, no_traceback, process_env

TOKEN = "schemathesis-token"
# Examples per operation: enough to reach the handlers' logic (uploads accepted,
# conditional reads answered 304), few enough for the suite.
MAX_EXAMPLES = 25
# A value for each path parameter name, to call every operation once.
SAMPLES = {"image_id": "1", "request_id": "no-such-upload", "nickname": "alice",
           "delivery_id": "1"}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def stack():
    return "embedded"


def document():
    return openapi_document(web_routes(None), Config())


def app_rules(app):
    """``(rule, path template, parameter names)`` for each route the app serves
    (not the static files Tornado adds), from Tornado's own router."""
    for rule in app.wildcard_router.rules:
        if issubclass(rule.target, tornado.web.StaticFileHandler):
            continue
        regex = rule.matcher.regex
        names = sorted(regex.groupindex, key=regex.groupindex.get)
        path = urllib.parse.unquote(rule.matcher.reverse(*("{%s}" % name for name in names)))
        yield rule, path, names


def test_the_document_is_valid_openapi_3_1():
    spec = document()
    validate(spec)
    assert spec["openapi"].startswith("3.1.")
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"]


@pytest.mark.gen_test
async def test_the_document_is_served(http_client, base_url, config):
    response = await http_client.fetch(base_url + "/api/openapi.json")
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == json.loads(json.dumps(
        openapi_document(web_routes(None), config)))


def test_every_route_and_method_is_in_the_document_and_nothing_else(app):
    paths = document()["paths"]
    served = {}
    for rule, path, names in app_rules(app):
        served[path] = rule
        assert path in paths, "route %s (%s) is not in the OpenAPI document" % (
            rule.matcher.regex.pattern, rule.target.__name__)
        item = paths[path]
        assert {key for key in item if key in METHODS} == {
            method.lower() for method in implemented_methods(rule.target)}, path
        parameters = item.get("parameters", [])
        assert [p["name"] for p in parameters] == names, path
        for parameter in parameters:
            # the parameter's pattern is the group's own regex
            group = "(?P<%s>%s)" % (parameter["name"], parameter["schema"]["pattern"][1:-1])
            assert group in rule.matcher.regex.pattern, (path, parameter)
    assert sorted(paths) == sorted(served), "the document names routes the app does not serve"


@pytest.mark.gen_test
async def test_every_operation_reaches_its_handler(http_client, base_url):
    for path, item in document()["paths"].items():
        for parameter in item.get("parameters", []):
            sample = SAMPLES[parameter["name"]]
            assert re.fullmatch(parameter["schema"]["pattern"], sample), parameter
            path = path.replace("{%s}" % parameter["name"], sample)
        for method in METHODS & set(item):
            response = await http_client.fetch(
                base_url + path, method=method.upper(), raise_error=False,
                body=b"" if method in ("post", "put", "patch") else None)
            assert response.code != 405, (method, path, response.body)
            assert b"no route for" not in response.body, (method, path)
            assert str(response.code) in item[method]["responses"], (method, path, response.code)


class Undescribed(BaseHandler):
    def get(self):
        pass


class Described(BaseHandler):
    @operation(summary="described", responses={200: {"description": "ok"}})
    def get(self):
        pass

    def post(self):  # not described
        pass


@pytest.mark.parametrize("routes, message", [
    ([(r"/x", Undescribed)], "GET /x (Undescribed.get) has no OpenAPI operation"),
    ([(r"/x", Described)], "POST /x (Described.post) has no OpenAPI operation"),
    ([(r"/x/([0-9]+)", Undescribed)], "only named groups"),
    ([(r"/x/(?P<id>[0-9]+)?", Undescribed)], "only named groups"),
    ([(r"/x", NotFoundHandler), (r"/x", NotFoundHandler)], "two routes are the path /x"),
])
def test_a_route_without_its_description_stops_the_build(routes, message):
    with pytest.raises(OpenApiError, match=re.escape(message)):
        openapi_document(routes, Config())


def test_make_app_refuses_an_undescribed_route(context, monkeypatch):
    monkeypatch.setattr(handlers, "web_routes", lambda context: [(r"/x", Undescribed, {})])
    with pytest.raises(OpenApiError, match="Undescribed.get"):
        make_app(context)


# -- what Schemathesis found, pinned ------------------------------------------------

@pytest.mark.gen_test
@pytest.mark.parametrize("path", [
    "/api/images?limit=", "/gallery?limit=",                       # empty is not a number
    "/api/images?limit=abc&limit=5", "/gallery?cursor=x&cursor=",  # which one was meant?
    "/api/images?nickname=a&nickname=b", "/api/images/1/thumbnail?size=256&size=256",
])
async def test_an_empty_or_repeated_query_parameter_is_a_400(http_client, base_url, path):
    response = await http_client.fetch(base_url + path, raise_error=False,
                                       headers={"Accept": "application/json"})
    assert response.code == 400, response.body
    assert json.loads(response.body)["error"] in ("bad limit", "bad query")


@pytest.mark.gen_test
async def test_a_repeated_reply_is_refused_before_the_upload_is_accepted(
        http_client, base_url, monkeypatch):
    accepted = []

    async def accept(context, upload):
        accepted.append(upload)
    monkeypatch.setattr(handlers.pages, "accept_upload", accept)
    response = await post_upload(http_client, base_url, data=make_image(),
                                 path="/?reply=page&reply=page",
                                 headers={"Accept": "application/json"})
    assert response.code == 400 and json.loads(response.body)["error"] == "bad query"
    assert accepted == []


@pytest.mark.gen_test
async def test_the_events_route_answers_other_methods_405_with_allow(http_client, base_url):
    for method in ("PUT", "POST", "DELETE"):  # not a 403 for a missing XSRF token
        response = await http_client.fetch(base_url + "/api/events", method=method,
                                           body=None if method == "DELETE" else b"",
                                           raise_error=False)
        assert (response.code, response.headers.get("Allow")) == (405, "GET"), method


@pytest.mark.gen_test
async def test_a_401_names_the_bearer_scheme(http_client, base_url, context):
    context.config.api_token = TOKEN
    response = await http_client.fetch(base_url + "/api/images/1", method="DELETE",
                                       raise_error=False)
    assert (response.code, response.headers.get("WWW-Authenticate")) == (401, "Bearer")


# -- schemathesis against a running server ----------------------------------------

def schemathesis_run(port):
    """``schemathesis run`` (the README's command, bounded); returns (exit code, output)."""
    command = [sys.executable, "-m", "schemathesis.cli", "run",
               "http://127.0.0.1:%d/api/openapi.json" % port,
               "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
               "--workers", "1", "--no-color",
               "--header", "Authorization: Bearer " + TOKEN]
    env = dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("services", [False, True], ids=["embedded", "services"])
def test_schemathesis_finds_nothing(request, tmp_path, services):
    settings = dict(API_TOKEN=TOKEN)
    ready = WEB_READY
    if services:
        settings.update(DATABASE_URL=request.getfixturevalue("postgres_url"),
                        AMQP_URL=AMQP_URL, AMQP_PREFIX=request.getfixturevalue("amqp_prefix"),
                        REDIS_URL=REDIS_URL, CACHE_PREFIX=request.getfixturevalue("redis_prefix"))
        ready = WEB_READY + RABBIT_READY
    else:
        settings.update(SQLITE_DB_PATH=tmp_path / "photo-app.db")
    port = free_port()
    spawn = request.getfixturevalue("spawn")  # after the services: stopped before they go
    server = spawn("server", ["server.py", "--port", str(port)], process_env(**settings),
                   ready=ready)

    code, output = schemathesis_run(port)
    assert code == 0, output
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts, output
    generated, passed = map(int, counts.groups())
    print("schemathesis: %d cases generated, %d passed" % (generated, passed))
    assert generated == passed >= 300, output
    # Every operation was tested (Schemathesis leaves out the document's own route).
    operations = sum(len(METHODS & set(item)) for item in document()["paths"].values())
    assert re.search(r"Tested: %d\b" % (operations - 1), output), output
    log = server.log()
    # It reached the handlers' logic, not only their refusals.
    assert re.search(r": 202 POST /(api/images)?(\?\S*)? (ImagesHandler|IndexHandler) ", log), \
        log[-3000:]  # an upload accepted
    assert re.search(r"304 GET /api/images/\d+/(content|thumbnail)", log), log[-3000:]
    assert no_traceback(log) and " 500 " not in log, log[-6000:]
