"""What an upload's bytes are, and turning them into a stored image.

The type is always judged from the bytes, never from the file name or the
client's content type.  ``sniff_mime`` is cheap (a look at the first bytes) and
runs on the web tier; ``imaging.process`` decodes the image and is CPU work for
an executor.
"""

import struct

# Magic numbers of the supported types: (offset, bytes, mime type).
SIGNATURES = [
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" and a length
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"BM", "image/bmp"),
]
# HEIF and AVIF files (ISO base media) start with an ``ftyp`` box naming brands:
# the coding brands say HEVC or AV1; ``mif1``/``msf1`` only say "an image (or a
# sequence) in HEIF", and the compatible brands then tell which codec.
AVIF_BRANDS = (b"avif", b"avis")
HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
HEIF_BRANDS = (b"mif1", b"msf1")
# Pillow's format names for the supported types ("HEIF" is pillow-heif's).
PILLOW_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                  "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp",
                  "HEIF": "image/heic", "AVIF": "image/avif"}
# The format that opens each type (image/heif is HEIF without a named codec).
FORMAT_OF = {mime: fmt for fmt, mime in PILLOW_FORMATS.items()}
FORMAT_OF["image/heif"] = "HEIF"
SUPPORTED_TYPES = tuple(PILLOW_FORMATS.values()) + ("image/heif",)
UNKNOWN = "application/octet-stream"


class InvalidImage(Exception):
    """The bytes are not an acceptable image; the message says why, in plain words."""


def sniff_mime(data):
    """The image type the bytes start with, or ``application/octet-stream``."""
    head = bytes(data[:16])
    for offset, magic, mime in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return mime
    if head[4:8] == b"ftyp":
        return _ftyp_mime(data)
    return UNKNOWN


def _ftyp_mime(data):
    """image/avif, image/heic or image/heif from an ``ftyp`` box's brands."""
    size = struct.unpack(">I", bytes(data[:4]))[0]
    if size < 16 or size > min(len(data), 4096):
        return UNKNOWN
    box = bytes(data[8:size])
    major, compatible = box[:4], [box[i:i + 4] for i in range(8, len(box) - 3, 4)]
    for brand in [major] + compatible:
        if brand in AVIF_BRANDS:
            return "image/avif"
        if brand in HEIC_BRANDS:
            return "image/heic"
    if major in HEIF_BRANDS or any(brand in HEIF_BRANDS for brand in compatible):
        return "image/heif"
    return UNKNOWN
