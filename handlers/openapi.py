"""The OpenAPI 3.1 description of the HTTP API, built from the routes themselves.

Each handler method carries its own operation (``@operation(...)``, beside the
code it describes).  ``openapi_document`` walks the application's route list:
a pattern's named groups become the path's parameters (their regex the
parameter's pattern), each method a handler defines becomes an operation, and a
method without ``@operation`` -- or a pattern it cannot express as a path -- is
an error when the application is built.  So a route cannot be added without its
description, and the description cannot name a route or method that is not served.

What several operations share (schemas, the error answers) is here; what one
handler answers is declared on it.
"""

import re

from imaging import SUPPORTED_TYPES

from handlers.base import BaseHandler, implemented_methods

OPENAPI_VERSION = "3.1.0"
# A named group (no nested groups inside) and what a path may hold around them.
GROUP = re.compile(r"\(\?P<(\w+)>([^()]+)\)")
PLAIN_PATH = re.compile(r"(?:[A-Za-z0-9_/{}-]|\\\.)*")

# The path parameters' descriptions, by group name.
PARAMETERS = {
    "image_id": "an image's id",
    "request_id": "an upload's request id (from its 202 answer)",
    "delivery_id": "a webhook or e-mail delivery's id",
    "nickname": "the nickname the images were uploaded under",
}


class OpenApiError(Exception):
    """A route the document cannot describe (a method without ``@operation``, a
    pattern that is not a path): raised while the application is built."""


def operation(spec=None, **fields):
    """Mark a handler method with its OpenAPI operation: keyword fields of an
    Operation Object (``summary``, ``responses`` keyed by status, ...), or a
    function of the Config that returns them (for what settings decide)."""
    def mark(method):
        method.openapi = spec or fields
        return method
    return mark


# -- what operations share ------------------------------------------------------

def ref(name):
    return {"$ref": "#/components/schemas/%s" % name}


def json_answer(description, schema, headers=None):
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


HTML = {"text/html": {"schema": {"type": "string"}}}


def html_answer(description):
    return {"description": description, "content": dict(HTML)}


def redirect(description):
    return {"description": description, "headers": {
        "Location": {"required": True, "schema": {"type": "string"}}}}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "required": True, "schema": {"type": "integer", "minimum": 1}}}


def error(description, headers=None, page=False):
    """An error answer: ``{"error", "detail"}``; a page's errors are HTML unless
    ``Accept`` prefers JSON."""
    answer = json_answer(description, ref("Error"), headers)
    if page:
        answer["content"].update(HTML)
    return answer


def unavailable(what="the database is unavailable", page=False):
    return error(what + "; try again after Retry-After seconds", RETRY_AFTER, page)


def unknown(page=False):
    return error("nothing has that id (or the path matches no route)", page=page)


# Nickname rules (broker.messages.clean_nickname): trimmed, 1-100 characters,
# no control characters (C0, DEL, C1, bidirectional overrides: a regex class).
CONTROLS = "\\x00-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069"
NICKNAME = {"type": "string", "minLength": 1, "maxLength": 100,
            "pattern": "^[^%s]*[^\\s%s][^%s]*$" % (CONTROLS, CONTROLS, CONTROLS),
            "description": "1-100 characters after trimming, no control characters"}

UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["nickname", "image_data"], "properties": {
            "nickname": NICKNAME,
            "image_data": {"type": "string", "format": "binary", "description":
                           "the image: one of ACCEPTED_TYPES, judged from its bytes"}}},
        "encoding": {"image_data": {"contentType": ", ".join(SUPPORTED_TYPES)}}}},
}


def outcome_unknown(page=False):
    """The 504 of accepting an upload: the broker did not confirm it, and the
    database could not record it refused; the answer names the status to follow."""
    answer = json_answer("outcome unknown: follow status_url before sending it again",
                         {"allOf": [ref("Error"), ref("UploadAccepted")]})
    if page:
        answer["content"].update(HTML)
    return answer


def upload_refusals(page=False):
    """The statuses every route that takes an upload can answer besides its 202."""
    return {
        400: error("not multipart, a bad or missing nickname, a missing or empty file",
                   page=page),
        413: error("the file is over MAX_UPLOAD_BYTES", page=page),
        415: error("the bytes are not one of ACCEPTED_TYPES", page=page),
        503: unavailable("not accepted: the broker did not confirm it, the uploads in "
                         "flight hold MAX_INFLIGHT_UPLOAD_BYTES, or the database is "
                         "unavailable", page=page),
        504: outcome_unknown(page),
    }


def operator(**fields):
    """An operator route's operation: the bearer token, and its 401 and 403 answers."""
    fields["responses"] = {
        **fields["responses"],
        401: error("no credentials: no Authorization: Bearer header, no operator cookie", {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}),
        403: error("a wrong token, a cookie without the XSRF token, or API_TOKEN is not set "
                   "(the operator routes are closed)")}
    return dict(fields, security=[{"bearerToken": []}])


def nullable(schema):
    return {"anyOf": [schema, {"type": "null"}]}


STRING, INTEGER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}


def record(required=(), **properties):
    """An object schema with ``properties``, all required unless ``required`` names some."""
    return {"type": "object", "properties": properties,
            "required": list(required or properties)}


SCHEMAS = {
    "Error": record(error={"type": "string", "description": "what went wrong, in a few words"},
                    detail=dict(nullable(STRING), description="more about it, or null")),
    "UploadAccepted": record(request_id=STRING, status={"const": "queued"},
                             status_url=STRING),
    "Upload": record(
        ["request_id", "nickname", "status", "image_id", "duplicate", "error", "attempts",
         "dead_lettered", "created_at", "updated_at"],
        request_id=STRING,
        nickname=dict(nullable(STRING), description="null while queued: the processor "
                      "records it when it begins the upload"),
        status={"enum": ["queued", "processing", "stored", "failed", "refused", "deleted"]},
        image_id=nullable(INTEGER), image_url=STRING, duplicate=BOOLEAN,
        error=nullable(STRING), attempts=INTEGER, dead_lettered=BOOLEAN,
        created_at=STRING, updated_at=STRING),
    "Image": record(
        id=INTEGER, request_id=nullable(STRING), nickname=STRING, mime_type=STRING,
        format=STRING, size=INTEGER, width=INTEGER, height=INTEGER, sha256=STRING,
        created_at=STRING, taken_at=nullable(STRING), camera=nullable(STRING), url=STRING,
        thumbnails={"type": "object", "additionalProperties": STRING,
                    "description": "thumbnail size -> its address"}),
    "ImageList": record(images={"type": "array", "items": ref("Image")},
                        next_cursor=dict(nullable(STRING),
                                         description="the next page's cursor; null on the last")),
    "FailedDelivery": dict(record(
        id=INTEGER, target=dict(STRING, description="the URL (password redacted) or address"),
        status={"enum": ["dead", "gone"]}, tries=INTEGER, requeue_url=STRING),
        description="a webhook or e-mail delivery that gave up (dead) or was refused (gone)"),
    "DeadLetter": record(request_id=STRING, nickname=STRING, filename=STRING,
                         content_type=STRING, size=INTEGER, attempts=INTEGER,
                         error=nullable(STRING), created_at=STRING, requeue_url=STRING),
}


# -- the document ---------------------------------------------------------------

def path_template(pattern):
    """``(template, {name: regex})`` for a Tornado route pattern whose groups are named."""
    groups = {}

    def name(match):
        groups[match.group(1)] = match.group(2)
        return "{%s}" % match.group(1)

    template = GROUP.sub(name, pattern)
    if not PLAIN_PATH.fullmatch(template):
        raise OpenApiError("route %r: only named groups (?P<name>regex) and plain path "
                           "characters can be described as an OpenAPI path" % pattern)
    return template.replace("\\.", "."), groups


def path_item(pattern, handler_class, config):
    template, groups = path_template(pattern)
    item = {}
    if groups:
        item["parameters"] = [
            dict({"name": name, "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^%s$" % regex}},
                 **({"description": PARAMETERS[name]} if name in PARAMETERS else {}))
            for name, regex in groups.items()]
    for method in implemented_methods(handler_class):
        function = getattr(handler_class, method.lower())
        spec = getattr(function, "openapi", None)
        if spec is None:
            raise OpenApiError("%s %s (%s.%s) has no OpenAPI operation: decorate it with "
                               "handlers.openapi.operation" % (
                                   method, template, handler_class.__name__, method.lower()))
        fields = dict(spec(config) if callable(spec) else spec)
        fields["responses"] = {str(status): answer
                               for status, answer in fields["responses"].items()}
        fields.setdefault("operationId", "%s_%s" % (method.lower(), handler_class.__name__))
        item[method.lower()] = fields
    return template, item


def openapi_document(routes, config):
    """The OpenAPI document of ``routes`` (``handlers.web_routes``' tuples)."""
    paths = {}
    for pattern, handler_class, *_ in routes:
        template, item = path_item(pattern, handler_class, config)
        if template in paths:
            raise OpenApiError("two routes are the path %s" % template)
        paths[template] = item
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Photo App", "version": "1",
                 "description": "Upload photos, follow their processing, read them back. "
                                "Errors are {\"error\", \"detail\"} JSON; the pages answer "
                                "theirs as HTML unless Accept prefers JSON."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerToken": {
                "type": "http", "scheme": "bearer",
                "description": "Authorization: Bearer $API_TOKEN (the operator routes)"}},
        },
    }


class OpenApiHandler(BaseHandler):
    """``GET /api/openapi.json``: this document (built with the application)."""

    @operation(summary="This API's OpenAPI 3.1 document", tags=["meta"], responses={
        200: json_answer("the document", {"type": "object"})})
    def get(self):
        self.write_json(self.settings["openapi"])
