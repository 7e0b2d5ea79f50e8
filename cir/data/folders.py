"""Any folder of images, searched recursively, each named by its relative path."""
from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from cir.data.common import IMAGE_EXTENSIONS, ImageRecord

logger = logging.getLogger(__name__)


def folder_images(root: Path) -> list[ImageRecord]:
    """Every image under ``root`` (recursive), named by its relative posix path, sorted.

    Hidden files and folders are skipped: macOS leaves ``._name.jpg`` files that are not images. A file
    whose relative path is not valid UTF-8, or holds a control character or a line break (a newline: no URL
    or id of the API may carry one), is listed under an escaped name with a ``problem`` (names are stored as
    JSON text and served by the API), so extraction lists it as skipped. Anything that
    is not a directory is listed: extraction only opens regular files and skips the rest (FIFOs, devices)
    with the reason, a symlink to a regular file is an image like any other.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / filename
                records.append(_folder_record(path.relative_to(root).as_posix(), path))
    records.sort(key=lambda r: r.name)
    if not records:
        logger.warning("no images (%s) found under %s", ", ".join(IMAGE_EXTENSIONS), root)
    logger.info("folder %s: %d images", root, len(records))
    return records


def _folder_record(name: str, path: Path) -> ImageRecord:
    """The record of a listed file; a name that is not UTF-8 (os.walk keeps such bytes as surrogates) or holds
    a control character is escaped and flagged, since it cannot be written to names.json, sent to a browser or
    put in a URL as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        logger.warning("%s: file name is not valid UTF-8; it will not be indexed", shown)
        return ImageRecord(shown, path, problem="file name is not valid UTF-8; rename it to index it")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        shown = name.encode("unicode_escape").decode("ascii")
        logger.warning("%s: file name contains a control character (U+%04X); it will not be indexed", shown, ord(bad))
        return ImageRecord(shown, path, problem=f"file name contains a control character (U+{ord(bad):04X}); "
                                                "rename it to index it")
    return ImageRecord(name, path)
