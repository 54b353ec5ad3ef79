"""The seed-compatible routes (POST /, GET /images/{nickname}, GET /dbtype,
POST /sniff-mime) and the listing API (GET /api/images), on every stack."""

import base64
import json
import urllib.parse

import pytest
from tornado.escape import xhtml_escape

from broker import BrokerUnavailable
from cache import content_key
from handlers.images import encode_cursor
from tests.conftest import STACKS
from tests.helpers import (make_image, multipart, post_upload, store_images,
                           wait_for_upload)

SENTENCE = "Request {} received. Image '{}' is being processed."


def loads(response):
    return json.loads(response.body)


async def upload_stored(http_client, base_url, nickname, data, path="/api/images"):
    response = await post_upload(http_client, base_url, nickname, data, path=path,
                                 headers={"Accept": "application/json"})
    assert response.code == 202, response.body
    status = await wait_for_upload(http_client, base_url, loads(response)["request_id"])
    assert status["status"] == "stored", status
    return status


# -- POST / ----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_post_root_answers_the_seeds_sentence_as_an_escaped_fragment(
        http_client, base_url, context):
    nickname = "O'Brien <b>&</b>"
    response = await post_upload(http_client, base_url, nickname, make_image(), path="/")
    assert response.code == 202, response.body
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    body = response.body.decode()
    request_id = body.split()[1]
    assert body == SENTENCE.format(request_id, xhtml_escape(nickname))
    assert "<b>" not in body and "&lt;b&gt;&amp;&lt;/b&gt;" in body
    status = await wait_for_upload(http_client, base_url, request_id)
    assert status["status"] == "stored" and status["nickname"] == nickname


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("accept", ["application/json",
                                    "application/json, text/plain, */*",
                                    "text/html;q=0.5, application/json"])
async def test_post_root_answers_json_when_accept_asks(http_client, base_url, context, accept):
    response = await post_upload(http_client, base_url, "<i>jo</i>", make_image(), path="/",
                                 headers={"Accept": accept})
    assert response.code == 202
    assert response.headers["Content-Type"].startswith("application/json")
    answer = loads(response)
    request_id = answer["request_id"]
    assert answer == {"request_id": request_id, "status": "queued",
                      "status_url": "/api/uploads/%s" % request_id,
                      "message": SENTENCE.format(request_id, "<i>jo</i>")}
    assert (await wait_for_upload(http_client, base_url, request_id))["status"] == "stored"


@pytest.mark.gen_test(timeout=30)
async def test_a_browsers_accept_header_gets_the_fragment(http_client, base_url, context):
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = await post_upload(http_client, base_url, "kim", make_image(), path="/",
                                 headers={"Accept": accept})
    assert response.code == 202
    assert response.body.decode().endswith("received. Image 'kim' is being processed.")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [{"max_upload_bytes": 20_000}])
async def test_post_root_errors_have_the_upload_statuses_as_pages_or_json(
        http_client, base_url, context, monkeypatch):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 30_000
    cases = [
        (dict(nickname=None, data=make_image()), 400, "nickname is required"),
        (dict(nickname="ann", data=None), 400, "attach the image"),
        (dict(nickname="ann", data=b"plain text, not a photo", filename="x.jpg"), 415,
         "not one of"),
        (dict(nickname="ann", data=big), 413, "the limit is 20000 bytes"),
    ]
    for args, status, words in cases:
        page = await post_upload(http_client, base_url, path="/", **args)
        assert page.code == status, (args, page.body)
        assert page.headers["Content-Type"] == "text/html; charset=UTF-8"
        text = page.body.decode()
        assert text.startswith("<!doctype html>") and words in text, text
        assert '{"error"' not in text  # not the API's JSON
        api = await post_upload(http_client, base_url, path="/",
                                headers={"Accept": "application/json"}, **args)
        assert api.code == status
        assert words in loads(api)["detail"]

    async def refuse(*args, **kwargs):
        raise BrokerUnavailable("the broker did not confirm (injected)")
    monkeypatch.setattr(context.broker, "publish", refuse)
    page = await post_upload(http_client, base_url, "ann", make_image(), path="/")
    assert page.code == 503 and page.headers["Retry-After"] == "5"
    assert "try again in a few seconds" in page.body.decode()
    api = await post_upload(http_client, base_url, "ann", make_image(), path="/",
                            headers={"Accept": "application/json"})
    assert api.code == 503 and loads(api)["error"] == "upload not accepted, try again"


@pytest.mark.gen_test(timeout=30)
async def test_program_routes_take_posts_without_an_xsrf_token(app, http_client, base_url,
                                                               context):
    assert app.settings["xsrf_cookies"] is True
    for path in ("/", "/api/images"):
        response = await post_upload(http_client, base_url, "anon", make_image(), path=path)
        assert response.code == 202, (path, response.body)
    content_type, body = multipart(files={"image_data": ("x.png", make_image())})
    response = await http_client.fetch(base_url + "/sniff-mime", method="POST", body=body,
                                       headers={"Content-Type": content_type})
    assert response.code == 200


# -- GET /images/{nickname} ----------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_images_of_a_nickname_are_the_same_on_a_cache_hit_and_miss_and_stay_current(
        http_client, base_url, context):
    first, second, other = (make_image("PNG", color=(1, 2, 3)),
                            make_image("JPEG", color=(4, 5, 6)),
                            make_image("GIF", color=(7, 8, 9)))
    one = await upload_stored(http_client, base_url, "ann", first)
    two = await upload_stored(http_client, base_url, "ann", second, path="/")
    await upload_stored(http_client, base_url, "ben", other)
    url = base_url + "/images/ann"

    miss = await http_client.fetch(url)
    assert miss.headers["Content-Type"].startswith("application/json")
    expected = [{"id": two["image_id"], "image_data": base64.b64encode(second).decode(),
                 "mime_type": "image/jpeg"},
                {"id": one["image_id"], "image_data": base64.b64encode(first).decode(),
                 "mime_type": "image/png"}]
    assert loads(miss) == expected
    cached = await context.cache.get(content_key(one["image_id"]))
    if context.config.cache_type == "none":
        assert cached is None
    else:
        assert cached is not None and cached.data == first  # the miss filled the cache
    hit = await http_client.fetch(url)
    assert hit.body == miss.body

    await context.cache.delete(content_key(two["image_id"]))  # one hit, one miss
    assert (await http_client.fetch(url)).body == miss.body

    third = make_image("WEBP", color=(10, 11, 12))
    three = await upload_stored(http_client, base_url, "ann", third)
    newest = loads(await http_client.fetch(url))
    assert [entry["id"] for entry in newest] == [three["image_id"], two["image_id"],
                                                 one["image_id"]]
    assert base64.b64decode(newest[0]["image_data"]) == third
    assert newest[0]["mime_type"] == "image/webp"


@pytest.mark.gen_test(timeout=30)
async def test_images_of_an_unknown_nickname_is_an_empty_list(http_client, base_url, context):
    await store_images(context.storage, "someone")
    for nickname in ("nobody", "some", "SOMEONE", "a b/c é"):
        response = await http_client.fetch(
            base_url + "/images/" + urllib.parse.quote(nickname, safe=""))
        assert response.code == 200 and loads(response) == [], nickname


@pytest.mark.gen_test(timeout=30)
async def test_images_of_a_nickname_with_odd_characters_and_many_images(
        http_client, base_url, context):
    nickname = "a b/c é <x>"
    ids = await store_images(context.storage, nickname, 105)  # more than one page of ids
    response = await http_client.fetch(
        base_url + "/images/" + urllib.parse.quote(nickname, safe=""))
    listed = loads(response)
    assert [entry["id"] for entry in listed] == ids[::-1]
    assert all(entry["mime_type"] == "image/png" for entry in listed)
    assert base64.b64decode(listed[0]["image_data"]).startswith(b"\x89PNG")


# -- GET /dbtype, POST /sniff-mime -------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_dbtype_names_the_database_of_the_stack(http_client, base_url, context, stack):
    response = await http_client.fetch(base_url + "/dbtype")
    assert loads(response) == {"db_type": STACKS[stack][0]}
    assert loads(response)["db_type"] == context.storage.db_type


async def sniff(http_client, base_url, files):
    content_type, body = multipart(files=files)
    return await http_client.fetch(base_url + "/sniff-mime", method="POST", body=body,
                                   headers={"Content-Type": content_type}, raise_error=False)


@pytest.mark.gen_test(timeout=30)
async def test_sniff_mime_judges_the_bytes_not_the_name(http_client, base_url, context):
    cases = [(("x.jpg", make_image("PNG")), "image/png"),
             (("x.png", make_image("JPEG")), "image/jpeg"),
             (("photo.gif", make_image("WEBP")), "image/webp"),
             (("image.jpg", b"just some text\n"), "application/octet-stream"),
             (("page.png", b"<html><script>alert(1)</script></html>"),
              "application/octet-stream")]
    for (filename, data), mime in cases:
        response = await sniff(http_client, base_url, {"image_data": (filename, data)})
        assert response.code == 200
        assert loads(response) == {"mime_type": mime}, filename


@pytest.mark.gen_test(timeout=30)
async def test_sniff_mime_without_a_file_is_a_json_400(http_client, base_url, context):
    response = await sniff(http_client, base_url, {"other": ("x.png", make_image())})
    assert response.code == 400
    assert loads(response)["error"] == "missing file"
    response = await http_client.fetch(base_url + "/sniff-mime", method="POST", body=b"x",
                                       headers={"Content-Type": "text/plain"},
                                       raise_error=False)
    assert response.code == 400 and loads(response)["error"] == "missing file"


# -- GET /api/images ------------------------------------------------------------------------

async def listing(http_client, base_url, **query):
    response = await http_client.fetch(
        base_url + "/api/images?" + urllib.parse.urlencode(query), raise_error=False)
    return response.code, loads(response)


@pytest.mark.gen_test(timeout=60)
async def test_listing_is_newest_first_with_a_default_and_a_maximum_limit(
        http_client, base_url, context):
    ids = await store_images(context.storage, "lin", 26)
    code, page = await listing(http_client, base_url)
    assert code == 200
    assert [image["id"] for image in page["images"]] == ids[::-1][:24]
    assert page["next_cursor"]
    image = page["images"][0]
    assert image["nickname"] == "lin" and image["mime_type"] == "image/png"
    assert image["url"] == "/api/images/%d/content" % image["id"]
    assert image["thumbnails"]["256"] == "/api/images/%d/thumbnail?size=256" % image["id"]

    code, rest = await listing(http_client, base_url, cursor=page["next_cursor"])
    assert [image["id"] for image in rest["images"]] == ids[::-1][24:]
    assert rest["next_cursor"] is None

    code, page = await listing(http_client, base_url, limit=100)
    assert code == 200 and len(page["images"]) == 26 and page["next_cursor"] is None
    code, page = await listing(http_client, base_url, limit=1)
    assert [image["id"] for image in page["images"]] == [ids[-1]]
    code, page = await listing(http_client, base_url, limit=26)
    assert len(page["images"]) == 26 and page["next_cursor"] is None  # no empty last page


@pytest.mark.gen_test(timeout=30)
async def test_an_empty_listing(http_client, base_url, context):
    assert await listing(http_client, base_url) == (200, {"images": [], "next_cursor": None})


@pytest.mark.gen_test(timeout=60)
async def test_cursor_pages_have_no_repeats_or_gaps_while_uploads_arrive(
        http_client, base_url, context):
    before = await store_images(context.storage, "pat", 10)
    seen, cursor, arrived = [], None, []
    while True:
        query = {"limit": 3}
        if cursor:
            query["cursor"] = cursor
        code, page = await listing(http_client, base_url, **query)
        assert code == 200
        seen += [image["id"] for image in page["images"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # New uploads between pages: they are newer than every page still to come.
        arrived += await store_images(context.storage, "pat", 2)
        arrived.append((await upload_stored(http_client, base_url, "pat",
                                            make_image(color=(len(seen), 1, 2))))["image_id"])
    assert seen == before[::-1]
    code, page = await listing(http_client, base_url, limit=100)
    assert [image["id"] for image in page["images"]] == sorted(before + arrived, reverse=True)


@pytest.mark.gen_test(timeout=60)
async def test_listing_filters_by_nickname(http_client, base_url, context):
    ann, ben = [], []
    for _ in range(4):
        ann += await store_images(context.storage, "ann", 2)
        ben += await store_images(context.storage, "ben", 1)
    await store_images(context.storage, "ann2", 1)
    seen, cursor = [], ""
    while True:
        code, page = await listing(http_client, base_url, nickname="ann", limit=3,
                                   **({"cursor": cursor} if cursor else {}))
        assert code == 200
        assert {image["nickname"] for image in page["images"]} <= {"ann"}
        seen += [image["id"] for image in page["images"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ann[::-1]
    code, page = await listing(http_client, base_url, nickname="  ben ")  # trimmed, as stored
    assert [image["id"] for image in page["images"]] == ben[::-1]
    code, page = await listing(http_client, base_url, nickname="")  # empty: everyone
    assert len(page["images"]) == 13
    assert await listing(http_client, base_url, nickname="carl") == (
        200, {"images": [], "next_cursor": None})


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("query,error", [
    ({"limit": "0"}, "bad limit"), ({"limit": "101"}, "bad limit"),
    ({"limit": "-1"}, "bad limit"), ({"limit": "ten"}, "bad limit"),
    ({"limit": "2.5"}, "bad limit"), ({"limit": "99999999999999999999"}, "bad limit"),
    ({"cursor": "zzz"}, "bad cursor"), ({"cursor": "!!!"}, "bad cursor"),
    ({"cursor": "12"}, "bad cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"before:abc").decode()}, "bad cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"before:0").decode()}, "bad cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "bad cursor"),
    ({"cursor": "x" * 500}, "bad cursor"),
])
async def test_a_bad_limit_or_cursor_is_a_400(http_client, base_url, context, query, error):
    code, body = await listing(http_client, base_url, **query)
    assert code == 400
    assert body["error"] == error


@pytest.mark.gen_test(timeout=30)
async def test_a_cursor_is_opaque_and_round_trips(http_client, base_url, context):
    ids = await store_images(context.storage, "cur", 3)
    cursor = encode_cursor(ids[2])
    assert not cursor.isdigit() and cursor.isascii()
    code, page = await listing(http_client, base_url, cursor=cursor)
    assert [image["id"] for image in page["images"]] == [ids[1], ids[0]]
