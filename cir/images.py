"""The one image-decoding policy: how every image a dataset or a user gives is turned into pixels.

An image is read as it is displayed: EXIF orientation applied, an embedded ICC profile converted to sRGB,
transparency composited on white, RGB. Extraction (both engines), training, the bof fit, query.py, uploads,
explanations and thumbnails all read through here, so a phone photo in a folder dataset and the same photo
uploaded give the same pixels, hence the same features.

    open_image(path, max_side)     a file on disk; regular files only (a FIFO or device named like an image is
                                   refused without being opened for reading: it could block forever); at most
                                   max_side px when given (explanations)
    as_displayed(im, max_side)     an image already opened (uploads: after their bounded, sniffed decode)

Catalogue, FashionIQ and CIRR files carry no orientation or profile in practice, so for them the policy is
the plain RGB conversion of CLIP4Cir's loaders.
"""
from __future__ import annotations

import io
import logging
import math
import os
import stat
import warnings
from typing import IO

from PIL import Image, ImageCms, ImageOps

log = logging.getLogger("images")

POLICY = "exif-orientation+srgb+rgb-on-white"   # recorded in feature manifests (extraction.job)
# Modes Image.thumbnail resizes directly (with a proper filter); others are converted to RGB first.
_RESIZABLE = ("L", "LA", "RGB", "RGBA", "CMYK")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# ----------------------------------------------------------------------------------------------- files

class NotRegularFileError(OSError):
    """An image path that is a FIFO, a device, a socket or a directory: nothing to decode, maybe a hang."""


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _regular_file_opener(path: str, flags: int) -> int:
    """`open(..., opener=)` that refuses anything but a regular file, without blocking on a FIFO.

    O_NONBLOCK makes opening a FIFO return at once (it has no effect on regular files); the check is on the
    opened descriptor, so a file swapped for a FIFO after listing is refused too.
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise NotRegularFileError(f"{path} is {kind}, not a regular file")


def open_image_file(path: str | os.PathLike) -> IO[bytes]:
    """Open an image file for reading; NotRegularFileError when it is not a regular file (symlinks followed)."""
    return open(path, "rb", opener=_regular_file_opener)


class ImageTooLarge(ValueError):
    """An image with more pixels to decode than the caller allows (or than PIL's own bomb limit)."""


def open_image(path: str | os.PathLike, max_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """The image file at `path`, decoded now (a truncated file fails here) and read as it is displayed; at
    most `max_side` px on its long side when given (a JPEG is then decoded at reduced size by libjpeg's DCT
    scaling, as uploads are: a 24 MP photo explained needs its 1,024 px, not its 72 MB of pixels).

    `max_pixels` bounds what is decoded (after that reduction): a file with more is ImageTooLarge before any
    pixel is read, so a server's image that was swapped for a 100 MP PNG costs nothing (it cost seconds and
    half a gigabyte per request)."""
    with open_image_file(path) as f, _opened(f) as im:
        if max_side is not None and im.format in ("JPEG", "MPO") and max(im.size) > max_side:
            w, h = im.size
            scale = max_side / max(w, h)
            im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageTooLarge(f"{im.width}x{im.height} px is more than the {max_pixels / 1e6:g} MP allowed")
        with warnings.catch_warnings():
            if max_pixels is not None:   # our own limit is the guard: PIL's bomb warning would only be noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
        return as_displayed(im, max_side)


def image_header(path: str | os.PathLike) -> tuple[str | None, tuple[int, int]]:
    """The file's format and size, from its header alone (no pixel decoded); ImageTooLarge past PIL's bomb
    limit, as open_image."""
    with open_image_file(path) as f, _opened(f) as im:
        return im.format, im.size


def _opened(f: IO[bytes]) -> Image.Image:
    """Image.open, with PIL's decompression-bomb refusal (an Exception, not an OSError) as ImageTooLarge."""
    try:
        return Image.open(f)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None


# ----------------------------------------------------------------------------------------------- pixels

def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (product cut-outs otherwise turn black)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def as_displayed(im: Image.Image, max_side: int | None = None) -> Image.Image:
    """A decoded image as it is displayed, in sRGB RGB; shrunk first to at most `max_side` px when given, so
    every later step works on the small image (the EXIF block and the profile travel with it)."""
    icc = im.info.get("icc_profile")
    if im.mode not in _RESIZABLE:
        im = to_rgb(im) if im.mode != "P" else im.convert("RGBA" if "transparency" in im.info else "RGB")
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    im = oriented(im)
    if icc:
        im = to_srgb(im, icc)
    return to_rgb(im)


def oriented(im: Image.Image) -> Image.Image:
    """EXIF orientation applied; a damaged EXIF block only costs the orientation, never the image."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 -- PIL raises anything on a hostile EXIF block
        return im


def to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Pixels converted from the embedded profile to sRGB (a Display P3 or Adobe RGB photo keeps its colours
    once the profile is dropped); left as they are when the profile is unusable."""
    mode = {"RGBA": "RGBA", "LA": "RGBA", "L": "RGB"}.get(im.mode, "RGB")
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        log.info("ignored an unusable ICC profile: %s", e)
        return im
