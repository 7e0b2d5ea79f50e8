"""Decoding an untrusted image upload into a small, clean RGB image, at a bounded memory cost.

    decode_upload(data, max_pixels, max_side)  ->  (RGB image of at most max_side px, sniffed format)

- The format is sniffed from the bytes (never the file name) and must be one of UPLOAD_FORMATS; of a
  multi-frame image (MPO, animated GIF or WebP, multi-page TIFF) only the first frame is decoded.
- width x height is checked against `max_pixels` from the header, before any pixel is decoded.
- Large JPEGs are decoded at reduced size (libjpeg's DCT scaling, 1/2 to 1/8: a 48 MP phone photo decodes
  at 1/4, 3 MP, about 9 MB instead of 144 MB). Other formats have no reduced decode, so they are shrunk
  right after decoding, before any full-size copy (mode conversion, rotation) is made.
- It is then read as every image is (cir.images: EXIF orientation applied, an embedded ICC profile converted
  to sRGB), and the result is a new image that carries no metadata at all (no EXIF, XMP, ICC, comments):
  re-encoding it can leak nothing.
"""
from __future__ import annotations

import io
import logging
import math
import warnings

from PIL import Image

from cir.images import as_displayed
from cir.serving.errors import ApiError, BadInput, TooLarge

log = logging.getLogger("uploads")

# What PIL may sniff an upload as. MPO is a JPEG followed by more JPEG frames (what many phones write for
# depth or multi-shot photos): its first frame is the photo, and is all that is decoded.
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
JPEG_FORMATS = ("JPEG", "MPO")   # decoded at reduced size by libjpeg's DCT scaling


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """BadInput for an image without pixels, TooLarge above `max_pixels` (width x height)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise BadInput("the image has no pixels")
    if w * h > max_pixels:
        raise TooLarge(f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} "
                       "(phones' usual photos fit; scale larger images down)")


def decode_upload(data: bytes, max_pixels: int, max_side: int) -> tuple[Image.Image, str]:
    """An RGB image of at most `max_side` px on its long side, without metadata, and the sniffed format.

    BadInput for anything that is not a whole image of a supported format, TooLarge above `max_pixels`.
    """
    if not data:
        raise BadInput("the upload is empty; choose an image file")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the guard; PIL's DecompressionBombWarning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                if fmt not in UPLOAD_FORMATS:
                    raise BadInput(f"unsupported image type {fmt or 'unknown'}; use one of {', '.join(UPLOAD_FORMATS)}")
                check_pixels(im.size, max_pixels)
                im.verify()  # structure and checksums, without keeping the pixels
            with Image.open(io.BytesIO(data)) as im:
                check_pixels(im.size, max_pixels)
                return _small_clean_rgb(im, max_side), fmt
    except ApiError:
        raise
    except Image.DecompressionBombError as e:
        raise TooLarge(f"the image has too many pixels: {e}") from None
    except Image.UnidentifiedImageError:
        raise BadInput("the upload is not an image (its bytes match no supported image format)") from None
    except MemoryError:
        raise TooLarge("the image is too large to decode on this server; scale it down") from None
    except Exception as e:  # noqa: BLE001 -- PIL's decoders raise anything on hostile bytes (IndexError for
        # a PNG header without image data, struct.error, KeyError, ZeroDivisionError ...): all mean "corrupt".
        log.info("refused a corrupt upload: %s: %s", type(e).__name__, e)
        raise BadInput(f"the image is corrupt or truncated ({type(e).__name__}); try another file") from None


def _small_clean_rgb(im: Image.Image, max_side: int) -> Image.Image:
    """Decode `im` (just opened) as small as possible, then read it as displayed (cir.images) and strip it."""
    if im.format in JPEG_FORMATS and max(im.size) > max_side:
        # DCT scaling: the largest reduction (1/2, 1/4, 1/8) that still leaves the stored size or more.
        w, h = im.size
        scale = max_side / max(w, h)
        im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    im.load()  # the decode: truncated or corrupt data fails here
    rgb = as_displayed(im, max_side)   # shrunk first, then oriented and colour-managed: the images policy
    clean = Image.new("RGB", rgb.size)  # a fresh image: no info dict, so no EXIF / XMP / ICC / comment to save
    clean.paste(rgb)
    return clean
