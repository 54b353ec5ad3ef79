"""The imaging module on its own (no services): what is accepted, what is refused
and why, thumbnails, EXIF orientation and fields, metadata stripping, bombs.

Every image is made here with Pillow (or, for the hostile ones, by hand).
"""

import gzip
import hashlib
import io
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from PIL import ExifTags, Image, ImageOps, PngImagePlugin

from config import Config, load_config
from imaging import SUPPORTED_TYPES, InvalidImage, sniff_mime
from imaging.process import ImagingSettings, process
from tests.helpers import close_to, decode, encode

DEFAULT = ImagingSettings.from_config(Config())
FORMATS = [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
           ("WEBP", "image/webp"), ("TIFF", "image/tiff"), ("BMP", "image/bmp"),
           ("HEIF", "image/heic"), ("AVIF", "image/avif")]  # HEIF: saved by pillow-heif
RED, BLUE, GREEN, WHITE = (220, 20, 20), (20, 20, 220), (20, 200, 20), (255, 255, 255)


def settings(**changes):
    values = dict(DEFAULT.__dict__)
    values.update(changes)
    return ImagingSettings(**values)


def solid(fmt, size=(300, 200), color=RED, **params):
    return encode(Image.new("RGB", size, color), fmt, **params)


def upright_picture(size=(400, 250)):
    """Blue, with a red block filling the top-left quadrant: one way up only."""
    width, height = size
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    return image


# How to store the upright picture so that a viewer honouring the EXIF
# orientation shows it upright (from the EXIF specification's row/column
# description, independently of the code under test).
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,  # row 0 top, column 0 right
    3: Image.Transpose.ROTATE_180,       # row 0 bottom, column 0 right
    4: Image.Transpose.FLIP_TOP_BOTTOM,  # row 0 bottom, column 0 left
    5: Image.Transpose.TRANSPOSE,        # row 0 left, column 0 top
    6: Image.Transpose.ROTATE_90,        # row 0 right, column 0 top (display turns it clockwise)
    7: Image.Transpose.TRANSVERSE,       # row 0 right, column 0 bottom
    8: Image.Transpose.ROTATE_270,       # row 0 left, column 0 bottom
}


def oriented(orientation, fmt="JPEG", size=(400, 250), exif=None):
    """The upright picture stored pre-transformed, tagged with ``orientation``."""
    image = upright_picture(size)
    transform = STORE_FOR_ORIENTATION[orientation]
    if transform is not None:
        image = image.transpose(transform)
    exif = exif if exif is not None else Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = encode(image, fmt, exif=exif)
    # The fixture itself is right: Pillow's own exif_transpose stands it upright.
    assert ImageOps.exif_transpose(decode(data)).size == size
    return data


def assert_upright(image, size):
    """``image`` is the upright picture (red block top-left) at ``size``."""
    assert image.size == size
    width, height = size
    rgb = image.convert("RGB")
    assert close_to(rgb.getpixel((width // 4, height // 4)), RED)
    for x, y in ((3 * width // 4, height // 4), (width // 4, 3 * height // 4),
                 (3 * width // 4, 3 * height // 4)):
        assert close_to(rgb.getpixel((x, y)), BLUE), (x, y)


def camera_exif(orientation=None):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "Canon EOS 5D Mark IV"
    exif[ExifTags.Base.DateTime] = "2022:01:01 09:00:00"  # modified; not the capture time
    exif[ExifTags.Base.Software] = "secret-editor 1.0"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:15 14:30:05"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 30.0, 12.5),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (13.0, 24.0, 7.0)})
    return exif


def assert_no_metadata(data):
    """A derivative with no EXIF at all (so no GPS, no camera)."""
    image = decode(data)
    assert len(image.getexif()) == 0
    assert "exif" not in image.info and "xmp" not in image.info
    assert b"Exif\x00\x00" not in data
    assert b"Canon" not in data and b"secret-editor" not in data


def jpeg_scan_data(data):
    """Everything from the first start-of-scan marker on (a small walk of our own)."""
    pos = 2
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        if marker == 0xDA:
            return data[pos:]
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zip_bytes():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", "<html><script>alert(1)</script></html>")
    return buffer.getvalue()


def refused(data, config=DEFAULT):
    with pytest.raises(InvalidImage) as caught:
        process(data, config)
    return str(caught.value)


# -- accepted types -----------------------------------------------------------

@pytest.mark.parametrize("fmt,mime", FORMATS)
def test_every_accepted_type_is_processed(fmt, mime):
    data = solid(fmt, (300, 200))
    assert sniff_mime(data) == mime
    result = process(data, DEFAULT)
    assert result.mime_type == mime
    assert (result.width, result.height) == (300, 200)
    assert result.data == data  # the original is kept byte for byte by default
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (result.taken_at, result.camera) == (None, None)
    sizes = {thumb.size: thumb for thumb in result.thumbnails}
    assert sorted(sizes) == [256, 1280]
    # Never upscaled: 1280 keeps 300 x 200; 256 is the longest side, aspect kept.
    assert (sizes[1280].width, sizes[1280].height) == (300, 200)
    assert sizes[256].width == 256 and abs(sizes[256].height - 256 * 200 / 300) <= 1
    for thumb in result.thumbnails:
        assert thumb.mime_type == "image/jpeg"
        image = decode(thumb.data)
        assert image.format == "JPEG"
        assert image.size == (thumb.width, thumb.height)
        assert close_to(image.convert("RGB").getpixel((image.width // 2, image.height // 2)), RED)


def test_supported_types_are_the_eight_formats():
    assert set(SUPPORTED_TYPES) == {mime for _fmt, mime in FORMATS} | {"image/heif"}
    assert DEFAULT.accepted == SUPPORTED_TYPES


def test_large_jpeg_is_thumbnailed_to_the_longest_side():
    """A JPEG bigger than the largest size goes through the reduced (draft) decode."""
    data = encode(upright_picture((2600, 1700)), "JPEG", quality=90)
    result = process(data, DEFAULT)
    assert (result.width, result.height) == (2600, 1700)
    for thumb in result.thumbnails:
        assert max(thumb.width, thumb.height) == thumb.size
        assert abs(thumb.height - thumb.width * 1700 / 2600) <= 1
        assert_upright(decode(thumb.data), (thumb.width, thumb.height))


def test_a_small_image_is_never_upscaled():
    result = process(solid("PNG", (40, 90)), DEFAULT)
    assert [(t.size, t.width, t.height) for t in result.thumbnails] == [(1280, 40, 90),
                                                                        (256, 40, 90)]


def test_thumbnail_sizes_format_and_quality_are_configurable():
    data = encode(upright_picture((900, 600)), "PNG")
    result = process(data, settings(thumbnail_sizes=(64, 300, 2000), thumbnail_format="webp"))
    assert [(t.size, t.width, t.height) for t in result.thumbnails] == [
        (2000, 900, 600), (300, 300, 200), (64, 64, 43)]
    for thumb in result.thumbnails:
        assert thumb.mime_type == "image/webp"
        assert decode(thumb.data).format == "WEBP"

    noisy = Image.effect_noise((600, 400), 60).convert("RGB")
    low = process(encode(noisy, "PNG"), settings(thumbnail_quality=20)).thumbnails[0]
    high = process(encode(noisy, "PNG"), settings(thumbnail_quality=95)).thumbnails[0]
    assert len(low.data) < len(high.data) / 2


def test_animated_gif_thumbnail_shows_the_first_frame():
    frames = [Image.new("RGB", (120, 80), color) for color in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)
    assert getattr(decode(data), "n_frames", 1) == 3
    result = process(data, DEFAULT)
    assert (result.mime_type, result.width, result.height) == ("image/gif", 120, 80)
    assert result.data == data
    for thumb in result.thumbnails:
        image = decode(thumb.data).convert("RGB")
        assert close_to(image.getpixel((60, 40)), RED), image.getpixel((60, 40))


def test_png_alpha_is_flattened_on_white_in_jpeg_thumbnails():
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # transparent black
    image.paste((200, 0, 0, 255), (0, 0, 100, 100))       # left half opaque red
    result = process(encode(image, "PNG"), DEFAULT)
    for thumb in result.thumbnails:
        flat = decode(thumb.data)
        assert flat.mode == "RGB"
        assert close_to(flat.getpixel((flat.width // 4, flat.height // 2)), (200, 0, 0))
        assert close_to(flat.getpixel((3 * flat.width // 4, flat.height // 2)), WHITE, 10)


def test_gif_transparency_is_flattened_on_white():
    image = Image.new("P", (100, 100), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 50, 100))  # left half: index 0, transparent
    data = encode(image, "GIF", transparency=0)
    flat = decode(process(data, DEFAULT).thumbnails[0].data)
    assert close_to(flat.getpixel((25, 50)), WHITE, 10)
    assert close_to(flat.getpixel((75, 50)), (200, 0, 0))


def test_webp_thumbnails_keep_alpha():
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 50, 100))
    thumb = process(encode(image, "PNG"), settings(thumbnail_format="webp")).thumbnails[0]
    decoded = decode(thumb.data)
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((75, 50))[3] == 0 and decoded.getpixel((25, 50))[3] == 255


# -- EXIF orientation -----------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_thumbnails_and_dimensions(orientation):
    data = oriented(orientation)
    result = process(data, DEFAULT)
    assert (result.width, result.height) == (400, 250)  # after orientation
    assert result.data == data
    sizes = {thumb.size: thumb for thumb in result.thumbnails}
    assert (sizes[1280].width, sizes[1280].height) == (400, 250)
    assert (sizes[256].width, sizes[256].height) == (256, 160)
    for thumb in result.thumbnails:
        assert_upright(decode(thumb.data), (thumb.width, thumb.height))
        assert_no_metadata(thumb.data)  # the orientation tag is not carried over


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_other_formats(fmt, orientation):
    result = process(oriented(orientation, fmt), DEFAULT)
    assert (result.width, result.height) == (400, 250)
    for thumb in result.thumbnails:
        assert_upright(decode(thumb.data), (thumb.width, thumb.height))


# -- EXIF fields and metadata in derivatives ------------------------------------

def test_capture_time_and_camera_come_from_exif():
    data = solid("JPEG", exif=camera_exif())
    result = process(data, DEFAULT)
    assert result.taken_at == "2021-06-15T14:30:05"  # DateTimeOriginal, not DateTime
    assert result.camera == "Canon EOS 5D Mark IV"   # the make is not said twice


def test_camera_joins_make_and_model_and_time_falls_back_to_datetime():
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Apple\x00"
    exif[ExifTags.Base.Model] = "iPhone 12"
    exif[ExifTags.Base.DateTime] = "2019:12:31 23:59:58"
    result = process(solid("JPEG", exif=exif), DEFAULT)
    assert result.camera == "Apple iPhone 12"
    assert result.taken_at == "2019-12-31T23:59:58"


def test_gps_tagged_jpeg_gives_thumbnails_without_any_exif():
    data = oriented(6, exif=camera_exif())
    assert decode(data).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the fixture has GPS
    result = process(data, DEFAULT)
    assert result.data == data  # the original keeps its EXIF unless stripping is on
    assert (result.taken_at, result.camera) == ("2021-06-15T14:30:05", "Canon EOS 5D Mark IV")
    for thumb in result.thumbnails:
        assert_no_metadata(thumb.data)
        assert_upright(decode(thumb.data), (thumb.width, thumb.height))


def test_webp_thumbnails_carry_no_exif_either():
    data = solid("WEBP", exif=camera_exif())
    for thumb in process(data, settings(thumbnail_format="webp")).thumbnails:
        assert_no_metadata(thumb.data)


# -- stripping the stored original ------------------------------------------------

STRIP = settings(strip_metadata=True)


def test_strip_metadata_jpeg_keeps_orientation_pixels_and_scan_bytes():
    exif = camera_exif(orientation=6)
    image = upright_picture().transpose(STORE_FOR_ORIENTATION[6])
    data = encode(image, "JPEG", exif=exif, quality=90, comment=b"a comment")
    result = process(data, STRIP)
    stored = result.data
    assert stored != data and len(stored) < len(data)
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.mime_type == "image/jpeg"

    kept = decode(stored)
    exif = kept.getexif()
    assert dict(exif) == {ExifTags.Base.Orientation: 6}
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo) and not exif.get_ifd(ExifTags.IFD.Exif)
    for secret in (b"Canon", b"secret-editor", b"2021:06:15", b"2022:01:01", b"a comment"):
        assert secret not in stored
    # Lossless: the same pixels, and the entropy-coded scans byte for byte.
    assert kept.tobytes() == decode(data).tobytes()
    assert jpeg_scan_data(stored) == jpeg_scan_data(data)
    # Still read as taken from the original's EXIF, and upright.
    assert result.taken_at == "2021-06-15T14:30:05" and result.camera
    assert (result.width, result.height) == (400, 250)
    assert process(stored, DEFAULT).width == 400


def test_strip_metadata_jpeg_without_orientation_keeps_no_exif():
    data = solid("JPEG", exif=camera_exif())
    stored = process(data, STRIP).data
    assert len(decode(stored).getexif()) == 0
    assert b"Exif\x00\x00" not in stored
    assert jpeg_scan_data(stored) == jpeg_scan_data(data)


def test_strip_metadata_png_drops_text_and_exif_chunks():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "where I live")
    info.add_text("Author", "someone", zip=True)
    info.add_itxt("Description", "more about me")
    data = encode(Image.new("RGB", (60, 40), RED), "PNG", pnginfo=info, exif=camera_exif())
    assert decode(data).text and decode(data).getexif()
    stored = process(data, STRIP).data
    kept = decode(stored)
    assert kept.text == {}
    assert len(kept.getexif()) == 0
    for secret in (b"where I live", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"Canon"):
        assert secret not in stored
    assert kept.tobytes() == decode(data).tobytes()


def test_strip_metadata_webp_drops_exif_and_xmp():
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = encode(Image.new("RGB", (60, 40), RED), "WEBP", exif=camera_exif(), xmp=xmp)
    assert "exif" in decode(data).info
    stored = process(data, STRIP).data
    kept = decode(stored)
    assert "exif" not in kept.info and "xmp" not in kept.info
    assert len(kept.getexif()) == 0
    assert b"Canon" not in stored and b"xmpmeta" not in stored
    assert kept.tobytes() == decode(data).tobytes()
    assert struct.unpack("<I", stored[4:8])[0] == len(stored) - 8  # RIFF size is right


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_strip_metadata_heif_and_avif_drop_gps_exif_and_xmp_in_place(fmt):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>where I live</rdf:RDF></x:xmpmeta>'
    data = encode(upright_picture(), fmt, exif=camera_exif(), xmp=xmp)
    assert decode(data).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    result = process(data, STRIP)
    stored = result.data
    assert len(stored) == len(data) and result.sha256 == hashlib.sha256(stored).hexdigest()
    kept = decode(stored)
    assert len(kept.getexif()) == 0 and not kept.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert not kept.info.get("xmp", b"").strip()
    for secret in (b"Canon", b"secret-editor", b"2021:06:15", b"where I live"):
        assert secret not in stored
    assert kept.tobytes() == decode(data).tobytes()
    assert (result.taken_at, result.camera) == ("2021-06-15T14:30:05", "Canon EOS 5D Mark IV")
    assert_upright(decode(process(stored, DEFAULT).thumbnails[0].data), (400, 250))


def test_without_strip_option_the_original_is_byte_identical():
    data = solid("JPEG", exif=camera_exif())
    assert process(data, DEFAULT).data == data


# -- refused ---------------------------------------------------------------------

@pytest.mark.parametrize("name,data", [
    ("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>'
            b"alert(1)</script></svg>"),
    ("html", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"),
    ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"),
    ("text", b"just some text, not a picture\n"),
    ("zip", zip_bytes()),
    ("empty", b""),
])
def test_things_that_are_not_images_are_refused(name, data):
    message = refused(data)
    assert "not an accepted image type" in message
    assert "application/octet-stream" in message


def test_jpeg_with_a_zip_appended_is_a_polyglot():
    message = refused(solid("JPEG") + zip_bytes())
    assert "polyglot" in message and "follow the end of the image/jpeg data" in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "HEIF", "AVIF"])
def test_any_format_with_an_archive_appended_is_a_polyglot(fmt):
    assert "polyglot" in refused(solid(fmt) + zip_bytes())


def test_archive_behind_padding_is_still_a_polyglot():
    """The padding between the image and the archive is the attacker's choice."""
    assert "polyglot" in refused(solid("JPEG") + b"\x01" * 10000 + zip_bytes())


def test_trailing_zero_padding_is_fine():
    data = solid("JPEG") + b"\x00" * 100
    assert process(data, DEFAULT).data == data


def test_gif_with_script_in_a_comment_is_refused():
    data = solid("GIF", comment=b"<script>alert(document.cookie)</script>")
    assert b"<script>" in data
    message = refused(data)
    assert "polyglot" in message and "markup" in message


def test_gif_with_script_in_a_comment_after_a_large_frame_is_refused():
    noisy = Image.effect_noise((300, 300), 80).convert("RGB")
    data = encode(noisy, "GIF")
    assert len(data) > 20000 and data.endswith(b";")
    comment = b"<script>alert(document.cookie)</script>"
    hidden = data[:-1] + b"\x21\xfe" + bytes([len(comment)]) + comment + b"\x00;"
    assert decode(hidden).size == (300, 300)
    assert "markup" in refused(hidden)


def test_jpeg_with_script_in_a_comment_between_scans_is_refused():
    noisy = Image.effect_noise((300, 300), 80).convert("RGB")
    data = encode(noisy, "JPEG", progressive=True)
    payload = b"<script>alert(document.cookie)</script>"
    segment = b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
    end = data.rindex(b"\xff\xd9")
    hidden = data[:end] + segment + data[end:]
    assert decode(hidden).size == (300, 300)
    assert "markup" in refused(hidden)
    header = encode(noisy, "JPEG", comment=payload)  # and in the header, of course
    assert "markup" in refused(header)


def test_png_with_html_in_a_text_chunk_is_refused():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<html><body><script>alert(1)</script></body></html>")
    data = encode(Image.new("RGB", (30, 20), RED), "PNG", pnginfo=info)
    message = refused(data)
    assert "polyglot" in message and "markup" in message


def test_webp_with_html_in_xmp_is_refused():
    data = encode(Image.new("RGB", (30, 20), RED), "WEBP",
                  xmp=b"<x:xmpmeta><html><script>alert(1)</script></html></x:xmpmeta>")
    assert "markup" in refused(data)


def test_phone_media_appended_to_a_jpeg_is_not_a_polyglot():
    """Multi-picture JPEGs and HDR gain maps append a second JPEG; motion photos
    an MP4.  Those are photos as phones write them, and are kept."""
    noisy = io.BytesIO()
    Image.effect_noise((300, 200), 80).convert("RGB").save(noisy, "JPEG")
    gain_map = noisy.getvalue()
    motion = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    for trailer in (gain_map, motion):
        data = solid("JPEG") + trailer
        assert process(data, DEFAULT).data == data


def test_a_zip_found_from_the_end_is_a_polyglot_whatever_comes_first():
    junk = bytes(range(1, 256)) * 8  # no known signature at the start
    assert "polyglot" in refused(solid("JPEG") + junk + zip_bytes())


def elf_header():
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    fields = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    return ident + fields + bytes(200)


def pe_header():
    stub = b"MZ" + bytes(58) + struct.pack("<I", 64)
    return stub + b"PE\x00\x00" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x22) \
        + b"\x0b\x02" + bytes(300)


@pytest.mark.parametrize("name,trailer", [
    ("zip", zip_bytes()),
    ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"),
    ("elf", elf_header()),
    ("pe", pe_header()),
    ("gzip", gzip.compress(b"a payload " * 50)),
    ("rar", b"Rar!\x1a\x07\x01\x00" + bytes(64)),
    ("html", b"<html><body>hello</body></html>"),
    ("svg with a handler", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
    ("php", b"<?php system($_GET['c']); ?>"),
])
def test_a_trailer_that_holds_together_as_another_format_is_refused(name, trailer):
    message = refused(solid("JPEG") + b"\x00" * 4 + trailer)
    assert "polyglot" in message and "another format" in message, (name, message)


@pytest.mark.parametrize("trailer", [
    b"<", b"<<", b"MZ", b"MZ" + bytes(100), b"PK", b"PK\x03\x04" + bytes(40), b"\x1f\x8b",
    b"\x1f\x8b\x08\x00" + bytes(30), b"\x7fELF" + bytes(10), b"%PDF-1.4 and nothing else",
    b"%%EOF", b"PK\x05\x06" + bytes(18), b"<body>", b"<svg/>", b"<!DOCTYPE plist>",
    b"SEFH\x6b\x00\x00\x00" + bytes(32) + b"SEFT",  # Samsung's trailer, in outline
])
def test_a_signature_alone_behind_an_image_is_not_a_polyglot(trailer):
    data = solid("JPEG") + trailer
    assert process(data, DEFAULT).data == data


def test_xml_in_metadata_is_not_markup():
    """XMP, and an Apple property list in it, as iPhones write (issue 12's refusal)."""
    xmp = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
           b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
           b'<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" '
           b'"http://www.apple.com/DTDs/PropertyList-1.0.dtd"><plist version="1.0"><dict/></plist>')
    app1 = b"\xff\xe1" + struct.pack(">H", len(xmp) + 31) + b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    jpeg = solid("JPEG")
    data = jpeg[:2] + app1 + jpeg[2:]
    assert decode(data).size == (300, 200)
    assert process(data, DEFAULT).data == data
    for fmt in ("PNG", "WEBP", "HEIF", "AVIF"):
        process(encode(Image.new("RGB", (30, 20), RED), fmt, xmp=xmp), DEFAULT)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_and_avif_with_script_in_xmp_are_refused(fmt):
    """Their XMP sits among the coded data; the reader hands it over."""
    data = encode(Image.new("RGB", (30, 20), RED), fmt,
                  xmp=b"<x:xmpmeta><script>alert(1)</script></x:xmpmeta>")
    assert "markup" in refused(data)


def test_harmless_metadata_is_not_a_polyglot():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a < b and 3 > 2, fine")
    process(encode(Image.new("RGB", (30, 20), RED), "PNG", pnginfo=info), DEFAULT)
    process(solid("JPEG", comment=b"holiday, 2021"), DEFAULT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "HEIF", "AVIF"])
def test_truncated_images_are_refused(fmt):
    data = encode(Image.effect_noise((200, 150), 50).convert("RGB"), fmt)
    message = refused(data[:len(data) // 2])
    assert "corrupt or truncated" in message or "not an accepted" in message, message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_jpeg_and_png_say_so(fmt):
    data = solid(fmt, (200, 150))
    message = refused(data[:len(data) * 2 // 3])
    assert "%s data is corrupt or truncated" % sniff_mime(data) in message


@pytest.mark.parametrize("fmt,keep", [("JPEG", 300), ("PNG", 60), ("GIF", 40),
                                      ("WEBP", 40), ("TIFF", 12), ("BMP", 20)])
def test_corrupt_bytes_after_a_valid_header_are_refused(fmt, keep):
    data = solid(fmt)
    junk = bytes((i * 37 + 11) % 251 for i in range(len(data) - keep))
    message = refused(data[:keep] + junk)
    assert "corrupt or truncated" in message or "polyglot" in message, message


@pytest.mark.parametrize("data", [b"BM", b"BM\x00\x00", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
                                  b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"])
def test_bare_signatures_are_refused_cleanly(data):
    """Only InvalidImage ever comes out (anything else would be retried forever)."""
    refused(data)


def test_bytes_that_merely_start_like_an_image_are_refused():
    assert refused(b"BMW makes cars, this is not a bitmap")
    assert refused(b"GIF89a is a nice format name, and this is text")


# -- decompression bombs and size limits -----------------------------------------

def giant_png(width=100_000, height=100_000):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b""))


def giant_gif(width=65_535, height=65_535):
    """The largest a GIF can declare (its sides are 16-bit): 4.3 gigapixels."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x44\x01\x00" + b";"


def refused_cheaply(data, config=DEFAULT):
    """Refused, without Pillow allocating any image and in little memory."""
    before = Image.core.get_stats()["new_count"]
    tracemalloc.start()
    try:
        message = refused(data, config)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Image.core.get_stats()["new_count"] == before, "an image was allocated"
    assert peak < 20 * 1024 * 1024, peak
    return message


@pytest.mark.parametrize("data", [giant_png(), giant_gif(), giant_png(200_000, 1)],
                         ids=["png-100000x100000", "gif-65535x65535", "png-200000x1"])
def test_declared_giants_are_refused_without_decoding(data):
    assert len(data) < 200
    message = refused_cheaply(data)
    assert "too large" in message or "more than" in message or "exceed" in message, message


def declaring(fmt, width, height):
    """A small HEIF or AVIF whose ``ispe`` box (the size readers take) is rewritten."""
    data = encode(Image.effect_noise((300, 200), 50).convert("RGB"), fmt)
    at = data.index(b"ispe") + 8  # after the box's version and flags
    assert struct.unpack(">II", data[at:at + 8]) == (300, 200)
    return data[:at] + struct.pack(">II", width, height) + data[at + 8:]


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_and_avif_giants_are_refused_before_decoding(fmt):
    assert "8000 x 7000 pixels, more than the 50000000 allowed" in refused_cheaply(
        declaring(fmt, 8000, 7000))
    # libavif itself refuses sides this long while reading the header.
    message = refused_cheaply(declaring(fmt, 40000, 10))
    assert "no side may exceed 30000" in message or "header cannot be read" in message
    assert "too large" in refused_cheaply(declaring("HEIF", 100_000, 100_000))


def test_default_limits_are_50_megapixels():
    assert DEFAULT.max_pixels == 50_000_000
    # 8000 x 7000 = 56 MP: under Pillow's own bomb limit, over ours.
    message = refused_cheaply(giant_png(8000, 7000))
    assert "8000 x 7000 pixels, more than the 50000000 allowed" in message


def test_pillow_bomb_warnings_are_errors():
    """With our limits raised, Pillow's warning (over ~89 MP) still refuses."""
    loose = settings(max_pixels=10 ** 12, max_side=10 ** 6)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    message = refused_cheaply(giant_png(10_000, 10_000), loose)
    assert "too large to decode safely" in message


def test_max_pixels_and_max_side_are_respected():
    data = solid("PNG", (300, 200))
    assert "more than the 50000 allowed" in refused(data, settings(max_pixels=50_000))
    process(data, settings(max_pixels=60_000))
    assert "no side may exceed 250" in refused(data, settings(max_side=250))
    process(data, settings(max_side=300))
    tall = solid("JPEG", (20, 400))
    assert "no side may exceed 300" in refused(tall, settings(max_side=300))


def test_accepted_types_can_be_narrowed():
    only_jpeg = settings(accepted=("image/jpeg",))
    process(solid("JPEG"), only_jpeg)
    message = refused(solid("PNG"), only_jpeg)
    assert "not an accepted image type (image/png)" in message and "image/jpeg" in message


def test_accepted_types_setting_reaches_the_imaging_settings():
    config = load_config([], {"ACCEPTED_TYPES": "image/jpeg, image/webp",
                              "THUMBNAIL_SIZES": "512,128", "STRIP_METADATA": "yes",
                              "THUMBNAIL_FORMAT": "webp", "THUMBNAIL_QUALITY": "70",
                              "MAX_IMAGE_PIXELS": "1000000", "MAX_IMAGE_SIDE": "2000"})
    imaging = ImagingSettings.from_config(config)
    assert imaging == ImagingSettings(accepted=("image/jpeg", "image/webp"), max_pixels=1_000_000,
                                      max_side=2000, thumbnail_sizes=(128, 512),
                                      thumbnail_format="webp", thumbnail_quality=70,
                                      strip_metadata=True)
    assert "not an accepted image type" in refused(solid("GIF"), imaging)
    assert [t.size for t in process(solid("WEBP"), imaging).thumbnails] == [512, 128]
