"""User uploads: sniffed, bounded, re-encoded under a generated id, their image features computed once."""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocess import to_rgb
from service.caching import LRU
from service.errors import ApiError, BadInput, NotFound, TooLarge
from utils import atomic_write

UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what PIL may sniff an upload as
UPLOAD_MAX_SIDE = 1024      # uploads are stored at most this large: the encoders work at 224 px anyway
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")                       # uuid4().hex, nothing else names an upload


def encoder_tag(encoder) -> str:
    """Short hash of what defines an encoder's image features: stored upload features are only reused
    by the same encoder (a retrained head gets fresh ones)."""
    desc = json.dumps(encoder.describe(), sort_keys=True, default=str)
    return hashlib.sha256(desc.encode()).hexdigest()[:12]


@dataclass
class UploadResult:
    id: str
    width: int
    height: int
    format: str
    encode_ms: float


class UploadStore:
    """User images: sniffed, bounded, re-encoded as JPEG under a generated id, features computed once.

    Files: <dir>/<id>.jpg and <dir>/<id>.<encoder tag>.raw.npy (the raw image features). Nothing ever builds a
    path from user input except a validated 32-hex-digit id.
    """

    def __init__(self, folder: Path, encoder, max_bytes: int, max_pixels: int, cache_size: int,
                 guard: Callable[[], ContextManager]):
        self.folder, self.encoder = Path(folder), encoder
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.tag = encoder_tag(encoder)
        self.cache = LRU(cache_size)
        self.guard = guard  # held around every model call (see Engine.model_calls)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, uid: Any) -> Path:
        if not isinstance(uid, str) or not UPLOAD_ID.match(uid):
            raise NotFound(f"upload {str(uid)[:40]!r} does not exist (upload ids are 32 hex digits)")
        p = self.folder / f"{uid}.jpg"
        if not p.is_file():
            raise NotFound(f"upload {uid} does not exist (uploads may have been cleared; upload it again)")
        return p

    def _decode(self, data: bytes) -> tuple[Image.Image, str]:
        if not data:
            raise BadInput("the upload is empty; choose an image file")
        if len(data) > self.max_bytes:
            raise TooLarge(f"the upload has {len(data):,} bytes; the limit is {self.max_bytes / 2**20:g} MB "
                           f"({self.max_bytes:,} bytes)")
        try:
            with warnings.catch_warnings():
                # Our own pixel limit below is the guard; PIL's DecompressionBombWarning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    fmt = im.format or ""
                    if fmt not in UPLOAD_FORMATS:
                        raise BadInput(f"unsupported image type {fmt or 'unknown'}; "
                                       f"use one of {', '.join(UPLOAD_FORMATS)}")
                    self._check_pixels(im.size)
                    im.verify()  # structure and checksums, without decoding the pixels
                with Image.open(io.BytesIO(data)) as im:
                    self._check_pixels(im.size)
                    im.load()  # full decode: truncated or corrupt data fails here
                    img = ImageOps.exif_transpose(im)
                    return img, fmt
        except ApiError:
            raise
        except Image.DecompressionBombError as e:
            raise TooLarge(f"the image has too many pixels: {e}") from None
        except UnidentifiedImageError:
            raise BadInput("the upload is not an image (its bytes match no supported image format)") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise BadInput(f"the image is corrupt or truncated ({type(e).__name__}); try another file") from None

    def _check_pixels(self, size: tuple[int, int]) -> None:
        w, h = size
        if w <= 0 or h <= 0:
            raise BadInput("the image has no pixels")
        if w * h > self.max_pixels:
            raise TooLarge(f"the image is {w}x{h} = {w * h:,} pixels; the limit is {self.max_pixels:,}")

    def add(self, data: bytes) -> UploadResult:
        """Validate, re-encode, store and encode an uploaded image; returns its id and sizes."""
        img, fmt = self._decode(data)
        img = to_rgb(img)
        img.thumbnail((UPLOAD_MAX_SIDE, UPLOAD_MAX_SIDE), Image.LANCZOS)
        uid = uuid.uuid4().hex
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        with atomic_write(self.folder / f"{uid}.jpg") as f:
            f.write(buf.getvalue())
        t0 = time.perf_counter()
        with self.guard():
            feats = self.encoder.encode_images([img], raw=True)
        ms = (time.perf_counter() - t0) * 1000
        self._keep(uid, feats)
        return UploadResult(uid, img.width, img.height, fmt, ms)

    def _keep(self, uid: str, feats: torch.Tensor) -> None:
        self.cache.put(uid, feats)
        with atomic_write(self._npy(uid)) as f:
            np.save(f, feats.numpy().astype(np.float32))

    def features(self, uid: Any) -> torch.Tensor:
        """[1, dim] raw image features of an upload: memory, else the .npy beside it, else encoded once now."""
        path = self.path(uid)
        feats = self.cache.get(uid)
        if feats is not None:
            return feats
        npy = self._npy(uid)
        if npy.is_file():
            try:
                feats = torch.from_numpy(np.load(npy, allow_pickle=False))
            except (OSError, ValueError):
                feats = None
            if feats is not None and feats.shape == (1, self.encoder.dim):
                self.cache.put(uid, feats)
                return feats
        with Image.open(path) as im, self.guard():  # another encoder's upload: encode it once, keep it
            feats = self.encoder.encode_images([im.convert("RGB")], raw=True)
        self._keep(uid, feats)
        return feats

    def _npy(self, uid: str) -> Path:
        # ".raw": files of versions that stored normalised features are not mistaken for raw ones.
        return self.folder / f"{uid}.{self.tag}.raw.npy"
