"""The pages: the upload page, the gallery, a photo, an upload's status; escaping,
security headers, no inline script, the form that works without JavaScript, and
pagination and filtering done on the server.

Tests about data run on every stack; tests about the HTML alone on "embedded".
"""

import html.parser
import io
import json
import re
import urllib.parse

import pytest
from PIL import Image
from tornado.escape import xhtml_escape

from handlers import make_app
from handlers.base import PAGE_POLICY
from handlers.pages import PageHandler
from tests.helpers import (eventually, make_image, multipart, post_upload, store_images,
                           wait_for_upload)

EVIL = "<script>alert(1)</script>"
BYTES_POLICY = "default-src 'none'; sandbox"
html_only = pytest.mark.parametrize("stack", ["embedded"])


class Page(html.parser.HTMLParser):
    """The parts of a page the tests look at."""

    def __init__(self, text):
        super().__init__()
        self.tags = []  # (tag, {attribute: value})
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag, **match):
        return [attrs for name, attrs in self.tags if name == tag
                and all(attrs.get(k) == v for k, v in match.items())]

    def links(self, rel=None):
        return [attrs["href"] for attrs in self.all("a") if rel is None or attrs.get("rel") == rel]

    def tiles(self):
        return [int(attrs["data-id"]) for attrs in self.all("li") if "data-id" in attrs]


async def get_page(http_client, base_url, path, status=200, **kwargs):
    response = await http_client.fetch(base_url + path, raise_error=False, **kwargs)
    assert response.code == status, (path, response.code, response.body[:500])
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8", path
    return response, Page(response.body.decode())


def assert_safe_headers(response, policy=PAGE_POLICY):
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == policy


def assert_no_inline_code(page, path):
    scripts = page.all("script")
    assert scripts, path
    for attrs in scripts:
        assert attrs.get("src", "").startswith("/static/app.js?v="), (path, attrs)
    assert not page.all("style"), path
    for tag, attrs in page.tags:
        assert "style" not in attrs, (path, tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (path, tag, attrs)
        assert not str(attrs.get("href", "")).lower().startswith("javascript:"), (path, attrs)


async def stored_upload(http_client, base_url, nickname, data):
    response = await post_upload(http_client, base_url, nickname, data)
    assert response.code == 202, response.body
    status = await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])
    assert status["status"] == "stored", status
    return status


# -- escaping, headers, no inline script ---------------------------------------------

@html_only
@pytest.mark.gen_test(timeout=30)
async def test_a_nickname_is_text_on_every_page(http_client, base_url, context):
    status = await stored_upload(http_client, base_url, EVIL, make_image())
    image_id = status["image_id"]
    escaped = xhtml_escape(EVIL)
    paths = ["/", "/gallery", "/gallery?nickname=" + urllib.parse.quote(EVIL),
             "/photos/%d" % image_id, "/uploads/%s" % status["request_id"]]
    for path in paths:
        response, page = await get_page(http_client, base_url, path)
        body = response.body.decode()
        assert EVIL not in body, path
        assert escaped in body, path
        assert EVIL in "".join(page.text), path  # shown as the text it is
        assert len(page.all("script")) == 1, path
    _response, page = await get_page(http_client, base_url,
                                      "/gallery?nickname=" + urllib.parse.quote(EVIL))
    assert page.tiles() == [image_id]
    assert page.all("input", name="nickname")[0]["value"] == EVIL  # attribute, escaped


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_every_page_sends_csp_and_nosniff_and_has_no_inline_code(
        http_client, base_url, context):
    status = await stored_upload(http_client, base_url, "hdr", make_image())
    image_id = status["image_id"]
    pages = [("/", 200), ("/gallery", 200), ("/gallery?nickname=hdr", 200),
             ("/photos/%d" % image_id, 200), ("/uploads/%s" % status["request_id"], 200),
             ("/photos/999999", 404), ("/uploads/nope", 404), ("/gallery?cursor=bad", 400),
             ("/gallery?limit=1000", 400)]
    for path, code in pages:
        response, page = await get_page(http_client, base_url, path, status=code)
        assert_safe_headers(response)
        assert_no_inline_code(page, path)

    content_type, body = multipart({"nickname": "hdr"}, {"image_data": ("a.png", make_image())})
    for path, code in [("/?reply=page", 202), ("/", 202)]:
        response = await http_client.fetch(base_url + path, method="POST", body=body,
                                           headers={"Content-Type": content_type})
        assert response.code == code
        assert_safe_headers(response)
        if path == "/?reply=page":
            assert_no_inline_code(Page(response.body.decode()), path)

    for path in ("/api/images/%d/content" % image_id,
                 "/api/images/%d/thumbnail?size=256" % image_id,
                 "/api/images/%d/thumbnail?size=1280" % image_id):
        response = await http_client.fetch(base_url + path)
        assert response.headers["Content-Type"].startswith("image/"), path
        assert_safe_headers(response, BYTES_POLICY)

    for path in ("/static/app.js", "/static/app.css"):
        response = await http_client.fetch(base_url + path)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "javascript" in (await http_client.fetch(base_url + "/static/app.js")
                            ).headers["Content-Type"]


class FormProbe(PageHandler):
    """A browser route that takes a POST (none does yet): what XSRF protection guards."""

    def post(self):
        self.finish("posted")


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_browser_routes_refuse_a_post_without_the_xsrf_token(app, http_client, base_url,
                                                                   context):
    assert app.settings["xsrf_cookies"] is True and app.settings["cookie_secret"]
    app.add_handlers(r".*", [(r"/probe", FormProbe, {"context": context})])
    response, page = await get_page(http_client, base_url, "/")
    token = page.all("input", name="_xsrf")[0]["value"]
    cookie = re.search(r"(_xsrf=[^;]+)", response.headers["Set-Cookie"]).group(1)

    refused = await http_client.fetch(base_url + "/probe", method="POST", body="a=1",
                                      raise_error=False)
    assert refused.code == 403
    accepted = await http_client.fetch(
        base_url + "/probe", method="POST", body=urllib.parse.urlencode({"_xsrf": token}),
        headers={"Cookie": cookie})
    assert accepted.code == 200 and accepted.body == b"posted"
    # A method a route does not serve stays a 405 (not a 403), an unknown path a 404.
    assert (await http_client.fetch(base_url + "/gallery", method="POST", body="",
                                    raise_error=False)).code == 405
    assert (await http_client.fetch(base_url + "/no/such/page", method="POST", body="",
                                    raise_error=False)).code == 404


@html_only
def test_xsrf_secret_comes_from_the_config_or_is_random(context, caplog):
    context.config.xsrf_secret = ""
    with caplog.at_level("INFO", logger="handlers"):
        first, second = make_app(context), make_app(context)
    assert first.settings["cookie_secret"] != second.settings["cookie_secret"]
    assert "set XSRF_SECRET when several web processes" in caplog.text
    context.config.xsrf_secret = "s3cret"
    assert make_app(context).settings["cookie_secret"] == "s3cret"


# -- the form without JavaScript ------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_the_form_without_javascript_posts_to_root_and_gets_a_page(
        http_client, base_url, context):
    _response, page = await get_page(http_client, base_url, "/")
    form = page.all("form", id="upload-form")[0]
    assert (form["action"], form["method"], form["enctype"]) == (
        "/?reply=page", "post", "multipart/form-data")
    assert page.all("input", name="nickname") and page.all("input", name="image_data")
    assert "multiple" not in page.all("input", name="image_data")[0]  # one file without JS

    nickname = "Zoë & <co>"
    response = await post_upload(http_client, base_url, nickname, make_image(),
                                 path=form["action"])
    assert response.code == 202
    body = response.body.decode()
    page = Page(body)
    assert body.startswith("<!doctype html>")
    text = " ".join("".join(page.text).split())
    request_id = re.search(r"Request ([0-9a-f]{32}) received", text).group(1)
    assert ("Request %s received. Image '%s' is being processed." % (request_id, nickname)
            in text)
    assert "/uploads/%s" % request_id in page.links() and "/" in page.links()

    await wait_for_upload(http_client, base_url, request_id)
    _response, status_page = await get_page(http_client, base_url, "/uploads/" + request_id)
    assert "stored" in "".join(status_page.text)
    assert not status_page.all("meta", **{"http-equiv": "refresh"})  # final: no more refresh
    image_id = json.loads((await http_client.fetch(
        base_url + "/api/uploads/" + request_id)).body)["image_id"]
    assert "/photos/%d" % image_id in status_page.links()


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_an_upload_in_progress_page_refreshes_itself(http_client, base_url, context):
    # An upload just accepted: its request id issued, no row written yet.
    request_id = context.request_ids.issue()
    _response, page = await get_page(http_client, base_url, "/uploads/" + request_id)
    assert page.all("meta", **{"http-equiv": "refresh"})
    assert "queued" in "".join(page.text)
    await context.storage.mark_failed(request_id, "wai", "the file is not a valid image")
    _response, page = await get_page(http_client, base_url, "/uploads/" + request_id)
    assert "the file is not a valid image" in "".join(page.text)
    assert not page.all("meta", **{"http-equiv": "refresh"})


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_the_form_without_javascript_gets_errors_as_readable_pages(
        http_client, base_url, context):
    for nickname, data, code, words in [
            ("ann", b"this is text", 415, "not an image we accept"),
            ("", make_image(), 400, "nickname is required"),
            ("ann", None, 400, "attach the image")]:
        response = await post_upload(http_client, base_url, nickname, data, path="/?reply=page",
                                     headers={"Accept": "text/html,*/*;q=0.8"})
        assert response.code == code
        page = Page(response.body.decode())
        assert words in "".join(page.text), response.body
        assert "/" in page.links()


# -- the gallery --------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_gallery_paginates_and_filters_on_the_server(http_client, base_url, context):
    ann, ben = [], []
    for _ in range(3):
        ann += await store_images(context.storage, "ann", 2)
        ben += await store_images(context.storage, "ben", 1)
    everyone = sorted(ann + ben, reverse=True)

    async def walk(path):
        seen, pages = [], 0
        while path:
            _response, page = await get_page(http_client, base_url, path)
            seen += page.tiles()
            pages += 1
            older = page.links("next")
            if pages > 1:
                assert page.links("first"), path
            path = older[0] if older else None
        return seen, pages

    assert await walk("/gallery?limit=4") == (everyone, 3)
    assert await walk("/gallery?nickname=ann&limit=4") == (ann[::-1], 2)
    assert await walk("/gallery?nickname=ben") == (ben[::-1], 1)
    _response, page = await get_page(http_client, base_url, "/gallery?limit=4")
    assert page.links("next")[0].startswith("/gallery?limit=4&cursor=")
    _response, page = await get_page(http_client, base_url, "/gallery?nickname=ann&limit=4")
    assert page.links("next")[0].startswith("/gallery?nickname=ann&limit=4&cursor=")
    _response, page = await get_page(http_client, base_url, "/gallery?nickname=nobody")
    assert page.tiles() == [] and "No photos yet." in "".join(page.text)
    _response, page = await get_page(http_client, base_url, "/gallery")
    assert page.tiles() == everyone
    for image_id in everyone:
        assert "/photos/%d" % image_id in page.links()
        assert page.all("img", src="/api/images/%d/thumbnail?size=256" % image_id)


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_gallery_first_page_is_live_and_later_pages_are_not(
        http_client, base_url, context):
    await store_images(context.storage, "liv", 3)
    _response, page = await get_page(http_client, base_url, "/gallery?nickname=liv&limit=2")
    grid = page.all("ul", **{"class": "grid"})[0]
    assert "data-live-grid" in grid
    assert (grid["data-nickname"], grid["data-limit"], grid["data-trim"]) == ("liv", "2", "no")
    _response, page = await get_page(http_client, base_url, page.links("next")[0])
    assert "data-live-grid" not in page.all("ul", **{"class": "grid"})[0]


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_gallery_bad_cursor_or_limit_is_a_400_page_or_json(http_client, base_url,
                                                                  context):
    for query in ("cursor=nonsense", "limit=0", "limit=abc"):
        _response, page = await get_page(http_client, base_url, "/gallery?" + query, status=400)
        assert "HTTP 400" in "".join(page.text)
        response = await http_client.fetch(base_url + "/gallery?" + query, raise_error=False,
                                           headers={"Accept": "application/json"})
        assert response.code == 400 and json.loads(response.body)["error"].startswith("bad ")


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_upload_page_shows_the_most_recent_images(http_client, base_url, context):
    ids = await store_images(context.storage, "rec", 14)
    _response, page = await get_page(http_client, base_url, "/")
    assert page.tiles() == ids[::-1][:12]
    grid = page.all("ul", **{"class": "grid"})[0]
    assert "data-live-grid" in grid and grid["data-trim"] == "yes"
    assert "/gallery" in page.links()


# -- one photo ---------------------------------------------------------------------

def jpeg_with_exif():
    image = Image.new("RGB", (120, 80), (30, 140, 90))
    exif = Image.Exif()
    exif[0x010F] = "Fujifilm"       # Make
    exif[0x0110] = "X-T30 <b>"      # Model
    exif.get_ifd(0x8769)[0x9003] = "2024:05:17 09:30:12"  # DateTimeOriginal
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.gen_test(timeout=30)
async def test_photo_page_shows_the_image_and_its_metadata(http_client, base_url, context):
    data = jpeg_with_exif()
    status = await stored_upload(http_client, base_url, "pho <to>", data)
    image_id = status["image_id"]
    meta = json.loads((await http_client.fetch(base_url + "/api/images/%d" % image_id)).body)
    response, page = await get_page(http_client, base_url, "/photos/%d" % image_id)
    text = " ".join("".join(page.text).split())
    for words in ("pho <to>", "image/jpeg", "%d bytes" % len(data), "120 × 80 pixels",
                  "Uploaded", meta["created_at"][:10], "UTC",
                  "Taken", "2024-05-17 09:30:12", "Camera", "Fujifilm X-T30 <b>"):
        assert words in text, (words, text)
    full = page.all("a", **{"class": "full"})[0]
    assert full["href"] == "/api/images/%d/content" % image_id
    assert page.all("img", src="/api/images/%d/thumbnail?size=1280" % image_id)
    assert "/gallery?nickname=pho+%3Cto%3E" in page.links()
    thumbnail = await http_client.fetch(base_url + "/api/images/%d/thumbnail?size=1280"
                                        % image_id)
    assert thumbnail.headers["Content-Type"] == "image/jpeg"


@pytest.mark.gen_test(timeout=30)
async def test_photo_page_without_capture_data_and_unknown_photo(http_client, base_url,
                                                                 context):
    status = await stored_upload(http_client, base_url, "plain", make_image("PNG"))
    _response, page = await get_page(http_client, base_url, "/photos/%d" % status["image_id"])
    text = "".join(page.text)
    assert "Taken" not in text and "Camera" not in text
    _response, page = await get_page(http_client, base_url, "/photos/987654321", status=404)
    assert "no image has id 987654321" in "".join(page.text)


@html_only
@pytest.mark.gen_test(timeout=30)
async def test_new_images_show_in_the_json_the_live_grid_polls(http_client, base_url, context):
    """The grid's script asks /api/images for what is newer than its first tile."""
    first = await store_images(context.storage, "pol", 1)
    response = await http_client.fetch(base_url + "/api/images?limit=12")
    assert [image["id"] for image in json.loads(response.body)["images"]] == first
    later = await store_images(context.storage, "pol", 1)

    async def newest():
        response = await http_client.fetch(base_url + "/api/images?limit=12")
        return [image["id"] for image in json.loads(response.body)["images"]] == later + first
    await eventually(newest)
