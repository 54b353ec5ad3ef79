"""Image processing through the running app, on every stack (SQLite/PostgreSQL,
in-process broker/RabbitMQ, memory/Redis/no cache): more types stored, EXIF read
and applied, thumbnails served and cached, duplicates, and what is refused, at
the door (415) or by the processor (``failed`` with a reason)."""

import hashlib
import io
import json
import struct
import zipfile
import zlib

import pytest
from PIL import ExifTags, Image

from cache import CachedImage, thumbnail_key
from tests.helpers import close_to, decode, encode, make_image, post_upload, wait_for_upload

RED, BLUE = (220, 20, 20), (20, 20, 220)
IMMUTABLE = "public, max-age=86400, immutable"


def sideways_photo(make="Canon", model="Canon EOS R6"):
    """A 400 x 250 picture (red block top-left) stored turned a quarter, tagged
    orientation 6, with capture time, camera and GPS in its EXIF."""
    upright = Image.new("RGB", (400, 250), BLUE)
    upright.paste(RED, (0, 0, 200, 125))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = model
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2023:07:04 18:05:09"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "S", ExifTags.GPS.GPSLatitude: (33.0, 51.0, 54.0),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (151.0, 12.0, 36.0)})
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=90)


def assert_upright(image, size):
    """Upright, and ``size`` give or take the one pixel an odd aspect rounds away."""
    assert all(abs(got - want) <= 1 for got, want in zip(image.size, size)), image.size
    width, height = image.size
    rgb = image.convert("RGB")
    assert close_to(rgb.getpixel((width // 4, height // 4)), RED)
    assert close_to(rgb.getpixel((3 * width // 4, 3 * height // 4)), BLUE)
    assert close_to(rgb.getpixel((3 * width // 4, height // 4)), BLUE)


def assert_no_exif(data):
    image = decode(data)
    assert len(image.getexif()) == 0 and "exif" not in image.info
    assert b"Exif\x00\x00" not in data and b"Canon" not in data


def zip_bytes():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return buffer.getvalue()


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def giant_png():
    """A PNG header declaring 100,000 x 100,000 pixels, and almost no data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b""))


async def upload(http_client, base_url, data, nickname="alice", filename="photo"):
    """POST ``data``, wait for the processor; the final upload status."""
    response = await post_upload(http_client, base_url, nickname, data, filename=filename)
    assert response.code == 202, response.body
    return await wait_for_upload(http_client, base_url, json.loads(response.body)["request_id"])


async def stored(http_client, base_url, data, nickname="alice"):
    status = await upload(http_client, base_url, data, nickname)
    assert status["status"] == "stored", status
    return status["image_id"]


async def get_json(http_client, url):
    response = await http_client.fetch(url, raise_error=False)
    return response.code, json.loads(response.body)


@pytest.mark.gen_test(timeout=60)
async def test_tiff_and_bmp_are_stored(http_client, base_url, context):
    for fmt, mime in (("TIFF", "image/tiff"), ("BMP", "image/bmp")):
        data = make_image(fmt, size=(90, 60), color=(10, 120, 200))
        image_id = await stored(http_client, base_url, data, "tess")
        code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, image_id))
        assert code == 200
        assert (meta["mime_type"], meta["format"]) == (mime, mime.split("/")[1])
        assert (meta["width"], meta["height"], meta["size"]) == (90, 60, len(data))
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        content = await http_client.fetch("%s/api/images/%d/content" % (base_url, image_id))
        assert content.body == data and content.headers["Content-Type"] == mime
        thumb = await http_client.fetch("%s/api/images/%d/thumbnail" % (base_url, image_id))
        assert thumb.headers["Content-Type"] == "image/jpeg"
        assert decode(thumb.body).size == (90, 60)


@pytest.mark.gen_test(timeout=60)
async def test_sideways_jpeg_is_measured_upright_with_its_exif_fields(http_client, base_url,
                                                                       context):
    data = sideways_photo()
    assert decode(data).size == (250, 400)  # as stored
    image_id = await stored(http_client, base_url, data)
    code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, image_id))
    assert code == 200
    assert (meta["width"], meta["height"]) == (400, 250)
    assert (meta["mime_type"], meta["format"]) == ("image/jpeg", "jpeg")
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["taken_at"] == "2023-07-04T18:05:09"
    assert meta["camera"] == "Canon EOS R6"
    assert meta["thumbnails"] == {
        "256": "/api/images/%d/thumbnail?size=256" % image_id,
        "1280": "/api/images/%d/thumbnail?size=1280" % image_id}
    # The original is kept byte for byte (GPS and all) unless STRIP_METADATA is on.
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, image_id))
    assert content.body == data


@pytest.mark.gen_test(timeout=60)
async def test_thumbnails_are_upright_metadata_free_and_cacheable(http_client, base_url,
                                                                  context):
    image_id = await stored(http_client, base_url, sideways_photo())
    url = "%s/api/images/%d/thumbnail" % (base_url, image_id)
    bodies = {}
    for size, expected in ((256, (256, 160)), (1280, (400, 250))):
        response = await http_client.fetch("%s?size=%d" % (url, size))
        assert response.code == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Cache-Control"] == IMMUTABLE
        etag = response.headers["Etag"]
        assert etag == '"%s"' % hashlib.sha256(response.body).hexdigest()
        assert_upright(decode(response.body), expected)
        assert_no_exif(response.body)
        bodies[size] = response.body

        again = await http_client.fetch("%s?size=%d" % (url, size), raise_error=False,
                                        headers={"If-None-Match": etag})
        assert again.code == 304 and again.body == b""
        other = await http_client.fetch("%s?size=%d" % (url, size),
                                        headers={"If-None-Match": '"not-this-one"'})
        assert other.code == 200 and other.body == response.body

    default = await http_client.fetch(url)  # no size: the smallest
    assert default.body == bodies[256]
    assert bodies[256] != bodies[1280]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("query", ["?size=999", "?size=abc", "?size=-256", "?size=",
                                   "?size=0256x"])
async def test_thumbnail_size_must_be_a_configured_one(http_client, base_url, context, query):
    image_id = await stored(http_client, base_url, make_image("PNG"))
    response = await http_client.fetch("%s/api/images/%d/thumbnail%s" % (base_url, image_id,
                                                                         query),
                                       raise_error=False)
    assert response.code == 400, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert body["error"] == "bad size" and "256" in body["detail"] and "1280" in body["detail"]


@pytest.mark.gen_test(timeout=30)
async def test_thumbnail_of_an_unknown_image_is_a_json_404(http_client, base_url, context):
    for query in ("", "?size=256", "?size=1280"):
        response = await http_client.fetch("%s/api/images/999999/thumbnail%s"
                                           % (base_url, query), raise_error=False)
        assert response.code == 404
        assert json.loads(response.body)["error"] == "unknown image"
    assert await context.cache.get(thumbnail_key(999999, 256)) is None  # nothing cached


@pytest.mark.gen_test(timeout=60)
async def test_thumbnails_are_read_through_the_cache(http_client, base_url, context):
    image_id = await stored(http_client, base_url, make_image("JPEG", size=(600, 300)))
    url = "%s/api/images/%d/thumbnail?size=256" % (base_url, image_id)
    first = await http_client.fetch(url)
    key = thumbnail_key(image_id, 256)
    cached = await context.cache.get(key)
    if context.config.cache_type == "none":
        assert cached is None
    else:  # the first read filled the cache
        assert (cached.data, cached.mime_type, cached.etag) == (
            first.body, "image/jpeg", first.headers["Etag"])

    # A hit never reaches the database: a planted entry is what comes back.
    await context.cache.set(key, CachedImage(b"planted", "image/webp", '"planted"'))
    second = await http_client.fetch(url)
    if context.config.cache_type == "none":
        assert (second.body, second.headers["Content-Type"]) == (first.body, "image/jpeg")
        assert second.headers["Etag"] == first.headers["Etag"]
    else:
        assert (second.body, second.headers["Content-Type"]) == (b"planted", "image/webp")
        assert second.headers["Etag"] == '"planted"'
    # The other size is its own entry.
    large = await http_client.fetch("%s/api/images/%d/thumbnail?size=1280"
                                    % (base_url, image_id))
    assert decode(large.body).size == (600, 300)


@pytest.mark.gen_test(timeout=60)
async def test_same_bytes_under_the_same_nickname_are_a_duplicate(http_client, base_url,
                                                                  context):
    data = make_image("PNG", size=(40, 30), color=(9, 8, 7))
    first = await upload(http_client, base_url, data, "dora")
    assert first["status"] == "stored" and first["duplicate"] is False

    second = await upload(http_client, base_url, data, "dora")
    assert second["status"] == "stored", second
    assert second["image_id"] == first["image_id"]
    assert second["duplicate"] is True
    assert second["request_id"] != first["request_id"]
    code, status = await get_json(http_client, "%s/api/uploads/%s"
                                  % (base_url, second["request_id"]))
    assert code == 200 and status["duplicate"] is True
    assert status["image_url"] == "/api/images/%d" % first["image_id"]
    code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, first["image_id"]))
    assert meta["request_id"] == first["request_id"]  # still the first upload's image

    other = await upload(http_client, base_url, data, "otto")
    assert other["status"] == "stored" and other["duplicate"] is False
    assert other["image_id"] != first["image_id"]

    changed = await upload(http_client, base_url, data + b"\x00", "dora")  # different bytes
    assert changed["status"] == "stored" and changed["duplicate"] is False
    assert changed["image_id"] not in (first["image_id"], other["image_id"])


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("name,data", [
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    ("svg-xml", b'<?xml version="1.0" encoding="UTF-8"?>\n'
                b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
    ("html", b"<!DOCTYPE html><html><body>hello</body></html>"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"),
    ("text", b"Dear diary, today I uploaded a text file.\n"),
    ("zip", zip_bytes()),
])
async def test_not_images_are_refused_at_the_door_with_415(http_client, base_url, context,
                                                           name, data):
    response = await post_upload(http_client, base_url, "mallory", data, filename="cat.jpg")
    assert response.code == 415, (name, response.body)
    body = json.loads(response.body)
    assert body["error"] == "unsupported image type"
    assert "image/jpeg" in body["detail"]


@pytest.mark.gen_test(timeout=90)
async def test_bad_images_fail_with_a_reason_and_the_processor_carries_on(http_client,
                                                                          base_url, context):
    jpeg = make_image("JPEG", size=(200, 150))
    cases = [
        ("truncated jpeg", jpeg[:len(jpeg) * 2 // 3], "image/jpeg data is corrupt or truncated"),
        ("jpeg+zip", jpeg + zip_bytes(), "polyglot"),
        ("giant png", giant_png(), "too large"),
        ("bare bmp signature", b"BM", "image/bmp"),
        ("gif with script", encode(Image.new("RGB", (20, 20), RED), "GIF",
                                   comment=b"<script>alert(1)</script>"), "markup"),
    ]
    for name, data, reason in cases:
        status = await upload(http_client, base_url, data, "mallory", filename="x.jpg")
        assert status["status"] == "failed", (name, status)
        assert reason in status["error"], (name, status["error"])
        assert status["image_id"] is None
    # Still working: a good upload afterwards is stored.
    image_id = await stored(http_client, base_url, make_image("WEBP"), "mallory")
    code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, image_id))
    assert code == 200 and meta["mime_type"] == "image/webp"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"strip_metadata": True}])
async def test_strip_metadata_option_strips_the_stored_original(http_client, base_url,
                                                                context):
    data = sideways_photo()
    image_id = await stored(http_client, base_url, data)
    content = await http_client.fetch("%s/api/images/%d/content" % (base_url, image_id))
    kept = content.body
    assert kept != data
    exif = decode(kept).getexif()
    assert dict(exif) == {ExifTags.Base.Orientation: 6}  # only what it needs to stand up
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert b"Canon" not in kept and b"2023:07:04" not in kept
    assert decode(kept).tobytes() == decode(data).tobytes()
    code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, image_id))
    assert meta["sha256"] == hashlib.sha256(kept).hexdigest()
    assert content.headers["Etag"] == '"%s"' % meta["sha256"]
    assert meta["size"] == len(kept)
    # The fields were read before stripping.
    assert (meta["width"], meta["height"]) == (400, 250)
    assert (meta["taken_at"], meta["camera"]) == ("2023-07-04T18:05:09", "Canon EOS R6")
    # The same photo again is still a duplicate (judged on the stored bytes).
    again = await upload(http_client, base_url, data)
    assert again["duplicate"] is True and again["image_id"] == image_id


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"thumbnail_sizes": (64, 300),
                                               "thumbnail_format": "webp",
                                               "accepted_types": ("image/jpeg",)}])
async def test_thumbnail_and_type_settings_reach_the_app(http_client, base_url, context):
    png = await post_upload(http_client, base_url, "wes", make_image("PNG"))
    assert png.code == 415
    image_id = await stored(http_client, base_url, sideways_photo(), "wes")
    code, meta = await get_json(http_client, "%s/api/images/%d" % (base_url, image_id))
    assert sorted(meta["thumbnails"]) == ["300", "64"]
    url = "%s/api/images/%d/thumbnail" % (base_url, image_id)
    default = await http_client.fetch(url)
    assert default.headers["Content-Type"] == "image/webp"
    assert decode(default.body).size == (64, 40)
    large = await http_client.fetch(url + "?size=300")
    assert_upright(decode(large.body), (300, 188))
    refused = await http_client.fetch(url + "?size=256", raise_error=False)
    assert refused.code == 400
