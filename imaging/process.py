"""Turning uploaded bytes into a stored image: validate, orient, measure, thumbnail.

One decode serves every step.  The header is read first and the image refused
before any pixel is decoded when it is too large (a decompression bomb that
declares 100,000 x 100,000 pixels costs nothing).  A JPEG is then decoded at a
reduced size (``draft``: libjpeg scales by 1/2, 1/4 or 1/8 while decoding) just
large enough for the largest thumbnail (a HEIF, from an embedded thumbnail when it
has one that large); the decode still reads the whole file,
so a truncated or corrupt image fails here.  Each smaller thumbnail is made from
the previous one.  Thumbnails carry no metadata at all (no EXIF, no GPS).

This is CPU work: callers run it in an executor, never on the IOLoop.
"""

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field

import pillow_heif
from PIL import ExifTags, Image

from imaging import FORMAT_OF, InvalidImage, sniff_mime
from imaging.metadata import MARKUP, MARKUP_REASON, polyglot_reason, strip_metadata

# HEIC/HEIF through pillow-heif (libheif).  It applies the file's own rotation and
# mirror (irot, imir) while decoding and reports EXIF orientation 1, so nothing
# is turned twice; Pillow's AVIF reader leaves them to us as an EXIF orientation.
pillow_heif.register_heif_opener()

SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
# How to stand each EXIF orientation upright (as ImageOps.exif_transpose does).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's decompression-bomb warnings are errors in this process (set once,
# not per call: warning filters are process-wide and calls run in threads).
warnings.simplefilter("error", Image.DecompressionBombWarning)
THUMBNAIL_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


@dataclass(frozen=True)
class ImagingSettings:
    """The processing settings of ``config.Config`` (built with ``from_config``)."""
    accepted: tuple
    max_pixels: int
    max_side: int
    thumbnail_sizes: tuple
    thumbnail_format: str
    thumbnail_quality: int
    strip_metadata: bool

    @classmethod
    def from_config(cls, config):
        return cls(accepted=tuple(config.accepted_types), max_pixels=config.max_image_pixels,
                   max_side=config.max_image_side,
                   thumbnail_sizes=tuple(sorted(config.thumbnail_sizes)),
                   thumbnail_format=config.thumbnail_format,
                   thumbnail_quality=config.thumbnail_quality,
                   strip_metadata=config.strip_metadata)


@dataclass
class Thumbnail:
    size: int  # the longest side it was made for
    mime_type: str
    width: int
    height: int
    data: bytes


@dataclass
class ProcessedImage:
    mime_type: str
    data: bytes  # the original, byte-identical unless metadata stripping is on
    width: int   # after EXIF orientation
    height: int
    sha256: str  # of ``data``
    taken_at: str = None  # EXIF DateTimeOriginal, "YYYY-MM-DDTHH:MM:SS"
    camera: str = None    # EXIF Make and Model
    thumbnails: list = field(default_factory=list)


def check_acceptable(data, settings):
    """Refuse what the bytes alone already show; return the sniffed mime type."""
    mime = sniff_mime(data)
    if mime not in settings.accepted:
        raise InvalidImage("not an accepted image type (%s); accepted: %s"
                           % (mime, ", ".join(settings.accepted)))
    reason = polyglot_reason(data, mime)
    if reason:
        raise InvalidImage("refused as a polyglot: " + reason)
    return mime


def process(data, settings):
    """Validate ``data`` and make its thumbnails; raise InvalidImage with a reason."""
    mime = check_acceptable(data, settings)
    try:
        return _process(data, mime, settings)
    except InvalidImage:
        raise
    except Image.UnidentifiedImageError:
        raise InvalidImage("the %s data is corrupt or truncated: its header cannot be read"
                           % mime) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidImage("image is too large to decode safely: %s" % exc) from None
    except Exception as exc:  # Pillow raises many types for bad data
        raise InvalidImage("the %s data is corrupt or truncated: %s" % (mime, exc)) from None


def _process(data, mime, settings):
    # Only the reader of the sniffed type may open the bytes.
    with Image.open(io.BytesIO(data), formats=[FORMAT_OF[mime]]) as image:
        width, height = image.size
        if width * height > settings.max_pixels:
            raise InvalidImage("image is %d x %d pixels, more than the %d allowed"
                               % (width, height, settings.max_pixels))
        if max(width, height) > settings.max_side:
            raise InvalidImage("image is %d x %d pixels; no side may exceed %d"
                               % (width, height, settings.max_side))
        if MARKUP.search(_as_bytes(image.info.get("xmp"))):  # HEIF keeps XMP with the pixels
            raise InvalidImage("refused as a polyglot: " + MARKUP_REASON)
        exif = image.getexif()
        largest = max(settings.thumbnail_sizes)
        if image.format in ("JPEG", "MPO", "HEIF"):  # HEIF: an embedded thumbnail that big
            image.draft("RGB", (largest, largest))
        image.load()
        # Asked after the load: newer Pillows stand a TIFF upright themselves
        # (its size is already upright) and drop the tag from ``exif`` while loading.
        if exif.get(ExifTags.Base.Orientation) in SWAPPED_ORIENTATIONS:
            width, height = height, width
        thumbnails = make_thumbnails(image, exif, settings)

    stored = strip_metadata(data, mime) if settings.strip_metadata else data
    return ProcessedImage(mime, stored, width, height, hashlib.sha256(stored).hexdigest(),
                          taken_at=capture_time(exif), camera=camera_model(exif),
                          thumbnails=thumbnails)


def _as_bytes(value):
    return value.encode("utf-8", "replace") if isinstance(value, str) else value or b""


def make_thumbnails(image, exif, settings):
    """Upright thumbnails, largest first, each from the one before.  The EXIF
    rotation is applied to the largest thumbnail rather than the decoded frame
    (the box is square, so resizing first gives the same picture)."""
    pil_format, mime = THUMBNAIL_FORMATS[settings.thumbnail_format]
    transpose = ORIENTATIONS.get(exif.get(ExifTags.Base.Orientation, 1))
    frame = flatten(image, keep_alpha=pil_format == "WEBP")
    thumbnails = []
    for size in sorted(settings.thumbnail_sizes, reverse=True):
        frame.thumbnail((size, size))  # Pillow's defaults: bicubic, reducing gap 2
        if transpose is not None:
            frame, transpose = frame.transpose(transpose), None
        buffer = io.BytesIO()
        frame.save(buffer, pil_format, quality=settings.thumbnail_quality)
        thumbnails.append(Thumbnail(size, mime, frame.width, frame.height, buffer.getvalue()))
    return thumbnails


def flatten(frame, keep_alpha):
    """An RGB (or RGBA) image; transparency goes onto white for formats without it."""
    has_alpha = frame.mode in ("RGBA", "LA", "PA") or (
        frame.mode == "P" and "transparency" in frame.info)
    if has_alpha:
        frame = frame.convert("RGBA")
        if keep_alpha:
            return frame
        background = Image.new("RGB", frame.size, (255, 255, 255))
        background.paste(frame, mask=frame.getchannel("A"))
        return background
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def capture_time(exif):
    value = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) \
        or exif.get(ExifTags.Base.DateTime)
    match = re.match(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})", str(value or ""))
    return "%s-%s-%sT%s:%s:%s" % match.groups() if match else None


def camera_model(exif):
    # EXIF strings end at their first NUL; some cameras leave bytes after it.
    make = str(exif.get(ExifTags.Base.Make) or "").split("\x00")[0].strip()
    model = str(exif.get(ExifTags.Base.Model) or "").split("\x00")[0].strip()
    if make and model.lower().startswith(make.lower()):
        make = ""
    return " ".join(part for part in (make, model) if part) or None
