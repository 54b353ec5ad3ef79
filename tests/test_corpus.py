"""Real files from real cameras and phones (tests/corpus, sources in SOURCES.md):
every one through the processor, a representative few through the running app
on every stack, and the property that benign bytes after a JPEG never refuse it.

- cameras/: JPEGs from 15 cameras, an Apple property list in XMP, GPS
  EXIF, a multi-picture (3D) JPEG: each stored, its camera and capture time read.
- orientation/: EXIF orientations 1-8 of one photo; heif/ and avif/: HEIC from
  an iPhone 13 Pro Max, HEIF with EXIF/XMP/IPTC, a three-image HEIF, AVIF with
  each of the eight irot/imir transforms, an AVIF sequence: each upright
  (judged on pixels), each thumbnailed as JPEG.
- bad/: damaged files: each fails with the reason in words.
"""

import hashlib
import io
import json
import os
import re
import zipfile

import pillow_heif
import pytest
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat

from config import Config
from imaging import InvalidImage, sniff_mime
from imaging.process import ImagingSettings, flatten, process
from tests.helpers import decode, encode, multipart, post_upload, wait_for_upload

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
DEFAULT = ImagingSettings.from_config(Config())
STRIP = ImagingSettings.from_config(Config(strip_metadata=True))
TRANSFORMS = [None] + list(Image.Transpose)

# Camera (EXIF Make and Model, as the API gives it) and capture time of each file.
CAMERAS = {
    "Canon_40D.jpg": ("Canon EOS 40D", "2008-05-30T15:56:01"),
    "Canon_DIGITAL_IXUS_400.jpg": ("Canon DIGITAL IXUS 400", "2004-08-27T13:52:55"),
    "Fujifilm_FinePix6900ZOOM.jpg": ("FUJIFILM FinePix6900ZOOM", "2001-02-19T06:40:05"),
    "Fujifilm_FinePix_E500.jpg": ("FUJIFILM FinePix E500", "2006-08-17T09:24:48"),
    "Kodak_CX7530.jpg": ("EASTMAN KODAK COMPANY KODAK CX7530 ZOOM DIGITAL CAMERA",
                         "2005-08-13T09:47:23"),
    "Konica_Minolta_DiMAGE_Z3.jpg": ("KONICA MINOLTA DiMAGE Z3", "2005-03-10T15:10:48"),
    "Nikon_COOLPIX_P1.jpg": ("NIKON COOLPIX P1", "2008-03-07T09:55:46"),
    "Nikon_D70.jpg": ("NIKON CORPORATION NIKON D70", "2008-03-15T09:52:01"),
    "Olympus_C8080WZ.jpg": ("OLYMPUS CORPORATION C8080WZ", "2006-10-22T15:44:29"),
    "Panasonic_DMC-FZ30.jpg": ("Panasonic DMC-FZ30", "2008-07-16T11:33:20"),
    "Pentax_K10D.jpg": ("PENTAX Corporation PENTAX K10D", "2008-05-04T16:47:24"),
    "Ricoh_Caplio_RR330.jpg": ("Caplio RR330", "2004-08-31T19:52:58"),
    "Samsung_Digimax_i50_MP3.jpg": ("Samsung Techwin <Digimax i50 MP3, Samsung #1 MP3>",
                                    "2006-08-15T17:50:57"),
    "Sony_HDR-HC3.jpg": ("SONY HDR-HC3", "2007-06-15T04:42:32"),
    "WWL_Polaroid_ION230.jpg": ("WWL ION230", "2026-11-24T14:41:16"),  # model "ION230\0F"
    "BlueSquare_xmp_plist.jpg": (None, "2005-09-07T15:09:51"),
    "exif_gps.jpg": ("Make XXX-XXX", "2099-09-29T10:10:10"),
    "Nintendo_3DS_sugarshack.mpo": ("Nintendo 3DS", "2014-03-02T14:17:39"),
    "iphone_13_pro_max.heic": ("Apple iPhone 13 Pro Max", "2022-02-16T12:55:41"),
    "L_exif_xmp_iptc.heic": ("SONY ILCE-7SM3", "2020-09-14T11:09:34"),
}
# Why each damaged file fails.
BAD = {
    "corrupted.heic": "image/heic data is corrupt or truncated: its header cannot be read",
    "broken.png": "image/png data is corrupt or truncated: its header cannot be read",
    "truncated_jpeg.jpg": "image/jpeg data is corrupt or truncated: image file is truncated",
}


def corpus(folder):
    return sorted(os.listdir(os.path.join(CORPUS, folder)))


def read(folder, name):
    with open(os.path.join(CORPUS, folder, name), "rb") as f:
        return f.read()


def grey(data, size=(64, 48)):
    return decode(data).convert("L").resize(size)


def best_transform(thumbnail, reference):
    """Which of the eight ways to turn or mirror ``thumbnail`` matches
    ``reference`` best (None: as it is), and how far each one is off."""
    distances = {}
    for transform in TRANSFORMS:
        turned = thumbnail if transform is None else thumbnail.transpose(transform)
        if turned.size == reference.size:
            distances[transform] = ImageStat.Stat(ImageChops.difference(turned, reference)).mean[0]
    return min(distances, key=distances.get), distances


def assert_upright(data, reference):
    """``data`` shows ``reference`` the right way up: no turn or mirror of it is
    closer, by a wide margin (the files differ in a printed label only)."""
    image = grey(data, reference.size)
    best, distances = best_transform(image, reference)
    assert best is None, distances
    others = [d for transform, d in distances.items() if transform is not None]
    assert distances[None] * 2 < min(others), distances


def all_files():
    return [(folder, name) for folder in ("cameras", "orientation", "heif", "avif", "bad")
            for name in corpus(folder)]


# -- the corpus itself ---------------------------------------------------------------

def test_every_file_has_its_source_noted_and_the_corpus_is_small():
    with open(os.path.join(CORPUS, "SOURCES.md")) as f:
        sources = f.read()
    total = 0
    for folder, name in all_files():
        assert "`%s/%s`" % (folder, name) in sources, name
        total += os.path.getsize(os.path.join(CORPUS, folder, name))
    assert len(all_files()) == 45
    assert total < 5 * 1024 * 1024


# -- every file through the processor ------------------------------------------------

@pytest.mark.parametrize("folder,name", [f for f in all_files() if f[0] != "bad"])
def test_every_good_file_is_processed(folder, name):
    data = read(folder, name)
    result = process(data, DEFAULT)
    assert result.data == data  # byte-identical
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    expected = {"heif": ("image/heic",), "avif": ("image/avif",)}.get(folder,
                                                                      ("image/jpeg",))
    assert result.mime_type in expected
    assert [t.size for t in result.thumbnails] == [1280, 256]
    for thumb in result.thumbnails:  # browser-ready, whatever came in
        image = decode(thumb.data)
        assert (image.format, thumb.mime_type) == ("JPEG", "image/jpeg")
        assert image.size == (thumb.width, thumb.height)
        assert max(image.size) == min(thumb.size, max(result.width, result.height))
    if name in CAMERAS:
        assert (result.camera, result.taken_at) == CAMERAS[name]


@pytest.mark.parametrize("name", corpus("bad"))
def test_damaged_files_fail_with_the_reason_in_words(name):
    with pytest.raises(InvalidImage) as caught:
        process(read("bad", name), DEFAULT)
    assert BAD[name] in str(caught.value)


@pytest.mark.parametrize("name", corpus("orientation"))
def test_each_exif_orientation_ends_upright(name):
    """landscape_1 is stored upright; 2-8 are the same photo stored turned or
    mirrored, with the EXIF orientation that stands it up."""
    reference = grey(process(read("orientation", "landscape_1.jpg"), DEFAULT).thumbnails[-1].data)
    result = process(read("orientation", name), DEFAULT)
    assert (result.width, result.height) == (600, 450)
    for thumb in result.thumbnails:
        assert_upright(thumb.data, reference)


@pytest.mark.parametrize("name", [n for n in corpus("avif") if n.startswith("rot")])
def test_each_avif_rotation_and_mirror_ends_upright(name):
    """rotNmirM.avif: one photo coded turned N quarters and mirrored on axis M,
    with irot/imir boxes that stand it up ("top" at the top, as rot0mir0 shows)."""
    reference = grey(process(read("avif", "rot0mir0.avif"), DEFAULT).thumbnails[-1].data)
    result = process(read("avif", name), DEFAULT)
    assert (result.width, result.height) == (640, 427)
    assert_upright(result.thumbnails[-1].data, reference)


def test_iphone_heic_is_portrait_once_turned():
    """The iPhone codes the picture landscape and turns it with irot (and says
    orientation 6 in EXIF too): turned once, it is portrait; twice, landscape."""
    data = read("heif", "iphone_13_pro_max.heic")
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["original_orientation"] == 6
    result = process(data, DEFAULT)
    assert (result.width, result.height) == (3024, 4032)
    assert [(t.width, t.height) for t in result.thumbnails] == [(960, 1280), (192, 256)]


def test_a_sequence_gives_its_first_or_primary_image():
    """An AVIF sequence: its first frame.  A HEIF holding several images: the
    primary one, the image the file says to show."""
    star = read("avif", "star.avifs")
    with Image.open(io.BytesIO(star)) as image:
        assert image.n_frames == 5
        image.load()
        first = flatten(image, keep_alpha=False)  # on white, as the thumbnails are
    thumb = decode(process(star, DEFAULT).thumbnails[0].data)
    assert ImageStat.Stat(ImageChops.difference(thumb, first)).mean[0] < 8

    pugs = read("heif", "zPug_3.heic")
    heif = pillow_heif.open_heif(pugs)
    assert len(heif) == 3 and heif.primary_index == 1
    primary = heif[1].to_pillow().convert("RGB")
    result = process(pugs, DEFAULT)
    assert (result.width, result.height) == primary.size
    thumb = decode(result.thumbnails[0].data)
    assert ImageStat.Stat(ImageChops.difference(thumb, primary)).mean[0] < 8


@pytest.mark.parametrize("folder,name,secrets", [
    ("heif", "iphone_13_pro_max.heic", [b"iPhone 13 Pro Max", b"2022:02:16", b"<x:xmpmeta"]),
    ("heif", "L_exif_xmp_iptc.heic", [b"ILCE-7SM3", b"2020:09:14", b"xmpmeta"]),
    ("avif", "exif.avif", [b"Exif\x00\x00MM\x00*"]),
])
def test_strip_metadata_blanks_heif_and_avif_exif_and_xmp_in_place(folder, name, secrets):
    data = read(folder, name)
    for secret in secrets:
        assert secret in data
    result = process(data, STRIP)
    stored = result.data
    assert len(stored) == len(data) and stored != data  # in place: every offset holds
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    for secret in secrets:
        assert secret not in stored
    with Image.open(io.BytesIO(stored)) as kept, Image.open(io.BytesIO(data)) as original:
        assert len(kept.getexif()) == 0 and not kept.getexif().get_ifd(0x8825)
        assert kept.tobytes() == original.tobytes()  # the same pixels, the same way up
    assert (result.camera, result.taken_at) == CAMERAS.get(name, (None, None))  # read first
    again = process(stored, DEFAULT)
    assert (again.width, again.height) == (result.width, result.height)
    assert (again.camera, again.taken_at) == (None, None)


def test_apple_property_list_in_xmp_is_not_markup():
    data = read("cameras", "BlueSquare_xmp_plist.jpg")
    assert b"<!DOCTYPE plist" in data
    assert process(data, DEFAULT).data == data


# -- benign trailers: a property -------------------------------------------------------

JPEGS = [read("cameras", name) for name in ("Canon_40D.jpg", "Nikon_D70.jpg",
                                             "Fujifilm_FinePix_E500.jpg")]
JPEGS.append(encode(Image.effect_noise((120, 80), 60).convert("RGB"), "JPEG"))
# The first bytes of formats, which alone prove nothing.
PREFIXES = [b"", b"<", b"MZ", b"PK", b"PK\x03\x04", b"\x1f\x8b", b"\x1f\x8b\x08", b"%PDF-1.4",
            b"\x7fELF", b"<?xml ", b"<!DOCTYPE plist", b"%%EOF", b"PK\x05\x06", b"\x00\x00"]


def forms_a_foreign_format(trailer):
    """Judged with the standard library, not the code under test."""
    try:
        if zipfile.ZipFile(io.BytesIO(trailer)).namelist():
            return True
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError):
        pass
    markup = re.search(rb"<(script|html|iframe|object|embed|svg|\?php|\?=|!doctype html)",
                       trailer, re.I)
    return bool(markup) or b"\x7fELF" in trailer or b"%%EOF" in trailer or b"PE\x00\x00" in trailer


@hypothesis_settings(max_examples=400, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(jpeg=st.sampled_from(JPEGS), prefix=st.sampled_from(PREFIXES),
       tail=st.binary(max_size=64))
def test_any_jpeg_with_benign_bytes_appended_is_stored(jpeg, prefix, tail):
    trailer = prefix + tail
    assume(not forms_a_foreign_format(trailer))
    data = jpeg + trailer
    assert sniff_mime(data) == "image/jpeg"
    assert process(data, DEFAULT).data == data


# -- through the running app ------------------------------------------------------------

PIPELINE = [("heif", "iphone_13_pro_max.heic", "image/heic"),
            ("avif", "rot3mir1.avif", "image/avif"),
            ("orientation", "landscape_6.jpg", "image/jpeg"),
            ("cameras", "Nikon_D70.jpg", "image/jpeg"),
            ("cameras", "BlueSquare_xmp_plist.jpg", "image/jpeg"),
            ("cameras", "Nintendo_3DS_sugarshack.mpo", "image/jpeg")]
REFERENCES = {"landscape_6.jpg": ("orientation", "landscape_1.jpg"),
              "rot3mir1.avif": ("avif", "rot0mir0.avif")}


async def fetch(http_client, url, **kwargs):
    return await http_client.fetch(url, raise_error=False, **kwargs)


@pytest.mark.gen_test(timeout=120)
async def test_real_files_are_stored_and_thumbnailed_by_the_app(http_client, base_url,
                                                                 context):
    for folder, name, mime in PIPELINE:
        data = read(folder, name)
        response = await post_upload(http_client, base_url, "corpus", data, filename=name)
        assert response.code == 202, (name, response.body)
        status = await wait_for_upload(http_client, base_url,
                                       json.loads(response.body)["request_id"], timeout=60)
        assert status["status"] == "stored", (name, status)
        image_id = status["image_id"]
        meta = json.loads((await fetch(http_client, "%s/api/images/%d"
                                       % (base_url, image_id))).body)
        assert meta["mime_type"] == mime and meta["size"] == len(data)
        if name in CAMERAS:
            assert (meta["camera"], meta["taken_at"]) == CAMERAS[name], name
        content = await fetch(http_client, "%s/api/images/%d/content" % (base_url, image_id))
        assert content.body == data and content.headers["Content-Type"] == mime
        for size in (256, 1280):
            thumb = await fetch(http_client, "%s/api/images/%d/thumbnail?size=%d"
                                % (base_url, image_id, size))
            assert thumb.code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
            image = decode(thumb.body)
            assert max(image.size) == min(size, max(meta["width"], meta["height"]))
            assert (image.width > image.height) == (meta["width"] > meta["height"])
            if name in REFERENCES:
                reference = grey(process(read(*REFERENCES[name]), DEFAULT).thumbnails[-1].data)
                assert_upright(thumb.body, reference)
        if name.startswith("iphone"):
            assert (meta["width"], meta["height"]) == (3024, 4032)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"strip_metadata": True}])
async def test_strip_metadata_reaches_a_heic_through_the_app(http_client, base_url, context):
    data = read("heif", "iphone_13_pro_max.heic")
    response = await post_upload(http_client, base_url, "private", data, filename="a.heic")
    status = await wait_for_upload(http_client, base_url,
                                   json.loads(response.body)["request_id"], timeout=60)
    assert status["status"] == "stored", status
    content = await fetch(http_client, "%s/api/images/%d/content"
                          % (base_url, status["image_id"]))
    assert len(content.body) == len(data) and b"iPhone 13 Pro Max" not in content.body
    assert len(decode(content.body).getexif()) == 0
    meta = json.loads((await fetch(http_client, "%s/api/images/%d"
                                   % (base_url, status["image_id"]))).body)
    assert meta["sha256"] == hashlib.sha256(content.body).hexdigest()
    assert meta["camera"] == "Apple iPhone 13 Pro Max"  # read before stripping


@pytest.mark.gen_test(timeout=60)
async def test_damaged_files_end_failed_with_the_reason(http_client, base_url, context):
    for name in ("corrupted.heic", "truncated_jpeg.jpg"):
        response = await post_upload(http_client, base_url, "corpus", read("bad", name),
                                     filename=name)
        assert response.code == 202, response.body
        status = await wait_for_upload(http_client, base_url,
                                       json.loads(response.body)["request_id"])
        assert status["status"] == "failed" and BAD[name] in status["error"], status


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("stack", ["embedded"])
async def test_sniff_mime_names_heic_heif_and_avif(http_client, base_url, context):
    heif = pillow_heif.from_pillow(Image.new("RGB", (16, 16)))
    generic = io.BytesIO()
    heif.save(generic, format="HEIF")
    # The same file with only the generic HEIF brands in its ftyp box.
    generic = generic.getvalue().replace(b"ftypheic\x00\x00\x00\x00mif1heic",
                                         b"ftypmif1\x00\x00\x00\x00mif1miaf", 1)
    for data, mime in ((read("heif", "iphone_13_pro_max.heic"), "image/heic"),
                       (read("avif", "star.avifs"), "image/avif"),
                       (read("avif", "exif.avif"), "image/avif"),
                       (generic, "image/heif"),
                       (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", None)):
        content_type, body = multipart(files={"image_data": ("x.bin", data)})
        response = await fetch(http_client, base_url + "/sniff-mime", method="POST",
                               body=body, headers={"Content-Type": content_type})
        assert json.loads(response.body) == {"mime_type": mime or "application/octet-stream"}
    assert process(generic, DEFAULT).mime_type == "image/heif"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("stack", ["embedded"])
async def test_photo_page_shows_the_large_rendition_and_offers_the_original(
        http_client, base_url, context):
    data = read("heif", "iphone_13_pro_max.heic")
    response = await post_upload(http_client, base_url, "phone", data, filename="IMG_0001.HEIC")
    status = await wait_for_upload(http_client, base_url,
                                   json.loads(response.body)["request_id"], timeout=60)
    image_id = status["image_id"]
    page = (await fetch(http_client, "%s/photos/%d" % (base_url, image_id))).body.decode()
    assert '<img src="/api/images/%d/thumbnail?size=1280"' % image_id in page
    assert re.search(r'<a href="/api/images/%d/content" download="photo-%d\.heic">'
                     % (image_id, image_id), page), page
    assert "Download the original (HEIC" in page
    index = (await fetch(http_client, base_url + "/")).body.decode()
    picker = re.search(r'<input id="image_data"[^>]*>', index).group(0)
    accept = re.search(r'accept="([^"]*)"', picker).group(1).split(",")
    assert {"image/*", ".heic", ".heif", ".avif"} <= set(accept)
