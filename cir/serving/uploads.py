"""User uploads: decoded safely (serving.decode), re-encoded under a generated id, their image features computed
once, and kept within a quota (total bytes and count, oldest evicted first) and a time-to-live.

Files: <dir>/<id>.jpg and <dir>/<id>.<encoder tag>.raw.npy beside it (the raw image features); an upload's age
is its JPEG's modification time. An upload is whole (both files: add() answers only once both are written) or
a leftover of a worker killed or crashed mid-way, which the sweep deletes once it is older than a grace period
(UploadLimits.leftover_grace_s): a JPEG without features under an id no client received, features without
their JPEG, atomic_write's temporary files. Nothing ever builds a path from user input except a validated
32-hex-digit id. The limits hold across the workers of one server because each sweep reads the folder itself
(about 9 ms with 1,000 uploads stored, on 2 cores); two workers adding at the same instant may overshoot the
quota by one upload each until the next sweep.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from cir.images import open_image
from cir.serving.caching import LRU
from cir.serving.decode import UPLOAD_FORMATS, decode_upload  # noqa: F401 (UPLOAD_FORMATS: part of this API)
from cir.serving.errors import InsufficientStorage, NotFound, ServiceUnavailable, TooLarge
from cir.utils import atomic_write

log = logging.getLogger("uploads")
MB = 1024 * 1024
UPLOAD_MAX_SIDE = 1024      # uploads are stored at most this large: the encoders work at 224 px anyway
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")                       # uuid4().hex, nothing else names an upload
_FILE_ID = re.compile(r"^\.?([0-9a-f]{32})\.")                   # an upload's files, and atomic_write's temps
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def default_upload_dir(environ: dict[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/cir-demo/uploads, else ~/.cache/cir-demo/uploads: user data stays out of the source tree."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "cir-demo" / "uploads"


def encoder_tag(encoder) -> str:
    """Short hash of what defines an encoder's image features: stored upload features are only reused
    by the same encoder (a retrained head gets fresh ones)."""
    desc = json.dumps(encoder.describe(), sort_keys=True, default=str)
    return hashlib.sha256(desc.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload and all of them together may cost (see Settings for the defaults' reasons)."""

    max_bytes: int = 10 * MB            # one upload's file
    max_pixels: int = 25_000_000        # width x height of one upload, read from its header
    quota_bytes: int = 512 * MB         # all stored uploads together (JPEGs + features)
    quota_count: int = 1000             # stored uploads
    ttl_s: float = 3600.0               # an upload is deleted this long after it was stored
    decodes: int = 2                    # images decoded at once per process; more wait, then get 503
    decode_wait_s: float = 2.0          # how long an upload waits for a decode slot
    # A leftover (see the module's docstring) younger than this may be an upload another worker is writing
    # right now (its JPEG is written before its features are computed: tens of ms, seconds behind a Grad-CAM
    # holding the model lock): only older ones are deleted.
    leftover_grace_s: float = 60.0

    @classmethod
    def of(cls, settings: Any) -> "UploadLimits":
        """The limits named in an Engine settings object (fields max_upload_bytes, max_image_pixels,
        upload_quota_bytes, upload_quota_count, upload_ttl_s, upload_decodes)."""
        return cls(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels,
                   quota_bytes=settings.upload_quota_bytes, quota_count=settings.upload_quota_count,
                   ttl_s=settings.upload_ttl_s, decodes=settings.upload_decodes)


@dataclass
class UploadResult:
    id: str
    width: int
    height: int
    format: str
    encode_ms: float


@dataclass
class _Stored:
    uid: str
    files: dict[str, tuple[float, int]]   # its files in the folder: name -> (modification time, bytes)

    @property
    def names(self) -> list[str]:
        return list(self.files)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.files.values())

    @property
    def newest(self) -> float:
        return max(t for t, _ in self.files.values())

    @property
    def mtime(self) -> float:
        """The upload's age: its JPEG's; a leftover without one ages from its newest file."""
        jpeg = self.files.get(f"{self.uid}.jpg")
        return jpeg[0] if jpeg else self.newest

    @property
    def whole(self) -> bool:
        """Its JPEG and a features file (of any encoder: another one's are recomputed on use) are there."""
        return f"{self.uid}.jpg" in self.files and any(
            not n.startswith(".") and n != f"{self.uid}.jpg" for n in self.files)


class UploadStore:
    """User images: decoded within bounds, re-encoded as JPEG under a generated id, features computed once,
    evicted oldest first beyond the quota and deleted after the time-to-live."""

    def __init__(self, folder: Path, encoder, limits: UploadLimits, cache_size: int,
                 guard: Callable[[], ContextManager]):
        self.folder, self.encoder, self.limits = Path(folder), encoder, limits
        self.tag = encoder_tag(encoder)
        self.cache = LRU(cache_size)
        self.guard = guard  # held around every model call (see Engine.model_calls)
        self._decodes = threading.BoundedSemaphore(max(1, limits.decodes))
        self._lock = threading.Lock()        # one sweep (and quota check) at a time in this process
        # Sweeps also run from lookups, at most this often: the TTL holds without a background thread.
        self.sweep_every_s = min(60.0, limits.ttl_s / 4)
        self._last_sweep = 0.0
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # uploads are users' photos: not for other local users
            self.folder.chmod(0o700)
        self.sweep()

    # -- lookups

    def path(self, uid: Any) -> Path:
        """The JPEG of a stored, unexpired upload; NotFound otherwise."""
        if not isinstance(uid, str) or not UPLOAD_ID.match(uid):
            raise NotFound(f"upload {str(uid)[:40]!r} does not exist (upload ids are 32 hex digits)")
        self._maybe_sweep()
        p = self.folder / f"{uid}.jpg"
        try:
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            raise NotFound(f"upload {uid} does not exist (uploads may have been cleared; upload it again)") from None
        if age > self.limits.ttl_s:
            self._remove(uid)
            raise NotFound(f"upload {uid} has expired: uploads are kept {_duration(self.limits.ttl_s)}; "
                           "upload it again")
        return p

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
        image = open_image(path)
        with self.guard():  # another encoder's upload: encode it once, keep it
            feats = self.encoder.encode_images([image], raw=True)
        self.cache.put(uid, feats)
        try:
            self._save_features(uid, feats)
        except OSError as e:  # the search can go on without the file: it is only a cache
            log.warning("could not store the features of upload %s: %s", uid, e)
        return feats

    # -- adding

    def add(self, data: bytes) -> UploadResult:
        """Validate, re-encode, store and encode an uploaded image; returns its id and sizes.

        BadInput / TooLarge for a bad image, ServiceUnavailable while every decode slot stays busy,
        InsufficientStorage when the disk is full (nothing of the upload is left behind).
        """
        max_bytes = self.limits.max_bytes
        if len(data) > max_bytes:
            raise TooLarge(f"the upload has {len(data):,} bytes; the limit is {max_bytes / MB:g} MB "
                           f"({max_bytes:,} bytes)")
        if not self._decodes.acquire(timeout=self.limits.decode_wait_s):
            raise ServiceUnavailable("the server is busy decoding other uploads; try again in a few seconds")
        try:
            img, fmt = decode_upload(data, self.limits.max_pixels, UPLOAD_MAX_SIDE)
        finally:
            self._decodes.release()
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)  # img has no metadata (decode_upload): neither has the file
        jpeg = buf.getvalue()
        uid = uuid.uuid4().hex
        self.sweep(incoming=len(jpeg) + 4 * self.encoder.dim + 128)  # room for the JPEG and its .npy
        try:
            with atomic_write(self.folder / f"{uid}.jpg") as f:
                f.write(jpeg)
            t0 = time.perf_counter()
            with self.guard():
                feats = self.encoder.encode_images([img], raw=True)
            ms = (time.perf_counter() - t0) * 1000
            self._save_features(uid, feats)
        except BaseException as e:
            self._remove(uid)  # an upload is whole or absent
            if isinstance(e, OSError) and e.errno in _DISK_FULL:
                log.error("upload refused, the disk is full: %s", e)
                raise InsufficientStorage("the server has no room for uploads right now; try again later "
                                          "or search from a catalogue image") from None
            raise
        self.cache.put(uid, feats)
        return UploadResult(uid, img.width, img.height, fmt, ms)

    def _save_features(self, uid: str, feats: torch.Tensor) -> None:
        with atomic_write(self._npy(uid)) as f:
            np.save(f, feats.numpy().astype(np.float32))

    def _npy(self, uid: str) -> Path:
        # ".raw": files of versions that stored normalised features are not mistaken for raw ones.
        return self.folder / f"{uid}.{self.tag}.raw.npy"

    # -- quota and time-to-live

    def sweep(self, incoming: int = 0) -> int:
        """Delete leftovers and expired uploads, then the oldest ones until `incoming` more bytes (and, when
        incoming, one more upload) fit the quota. Returns how many uploads (leftovers included) were deleted."""
        with self._lock:
            self._last_sweep = time.monotonic()
            lim, now = self.limits, time.time()
            stored, n_leftovers = self._drop_leftovers(self._scan(), now)
            stored.sort(key=lambda s: (s.mtime, s.uid))  # oldest first
            n_expired = sum(now - s.mtime > lim.ttl_s for s in stored)
            total = sum(s.size for s in stored[n_expired:])
            n_gone = n_expired
            while n_gone < len(stored) and (total + incoming > lim.quota_bytes or
                                            len(stored) - n_gone + (incoming > 0) > lim.quota_count):
                total -= stored[n_gone].size
                n_gone += 1
            for s in stored[:n_gone]:
                self._remove(s.uid, s.names)
            if n_gone or n_leftovers:
                log.info("uploads: %d leftovers, %d expired, %d evicted (quota %d uploads, %.0f MB); %d kept, "
                         "%.1f MB", n_leftovers, n_expired, n_gone - n_expired, lim.quota_count,
                         lim.quota_bytes / MB, len(stored) - n_gone, total / MB)
            return n_gone + n_leftovers

    def _drop_leftovers(self, stored: list[_Stored], now: float) -> tuple[list[_Stored], int]:
        """Delete what killed or crashed writers left, once older than leftover_grace_s: uploads that are not
        whole (every file of them that old), and stale temporary files beside whole ones. Returns the uploads
        kept (without those temporary files) and how many were deleted.

        A worker SIGKILLed between an upload's JPEG and its features leaves a JPEG under an id no client
        received: nothing would ever ask for it, and it held its place in the quota until the time-to-live.
        """
        grace = self.limits.leftover_grace_s
        kept, n = [], 0
        for s in stored:
            if not s.whole and now - s.newest > grace:
                self._remove(s.uid, s.names)
                n += 1
                continue
            stale = [name for name, (t, _) in s.files.items() if name.startswith(".") and now - t > grace]
            self._remove(s.uid, stale)
            for name in stale:
                del s.files[name]
            kept.append(s)
        return kept, n

    def _maybe_sweep(self) -> None:
        if time.monotonic() - self._last_sweep > self.sweep_every_s:
            self.sweep()

    def _scan(self) -> list[_Stored]:
        """Every upload in the folder (leftovers included) with its files' times and sizes."""
        found: dict[str, _Stored] = {}
        if not self.folder.is_dir():  # removed under the running server: the next write recreates it
            return []
        with os.scandir(self.folder) as it:
            for entry in it:
                m = _FILE_ID.match(entry.name)
                if not m:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted by another worker meanwhile
                    continue
                uid = m.group(1)
                found.setdefault(uid, _Stored(uid, {})).files[entry.name] = (st.st_mtime, st.st_size)
        return list(found.values())

    def _remove(self, uid: str, names: list[str] | None = None) -> None:
        """Delete an upload's files: its JPEG, features and temporary files. (Its features may stay in the
        memory cache: every lookup checks the JPEG first.)"""
        for name in names if names is not None else [p.name for p in self.folder.glob(f"*{uid}.*")]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / name)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
