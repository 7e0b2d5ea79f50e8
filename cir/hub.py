"""The authors' released CLIP4Cir Combiners (trained on CLIP RN50x4 features, for CIRR and FashionIQ), fetched
once into torch.hub's cache and loaded into this project's Combiner (the same module names, so the same keys).

The URLs and file names are those of the original demo's hubconf (its `combiner(dataset)`); the files land where
its `torch.hub.load_state_dict_from_url` puts them (<torch.hub.get_dir()>/checkpoints/cirr_combiner, ...), so a
cache filled by either is used by both. The authors publish no checksum: a download is checked for completeness
(Content-Length), for being a Combiner checkpoint of the RN50x4 sizes, and against `sha256=` when the caller
gives one; only then is it renamed into place, so the cache never holds a partial or unverified file.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from cir.combiner import Combiner
from cir.utils import sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0


class DownloadError(ValueError):
    """A download that cannot be used: truncated, another checksum, or not the expected checkpoint."""


@dataclass(frozen=True)
class Release:
    """One released Combiner: where it is, its cache file name, its checksum when known, what it must hold."""

    url: str
    file_name: str
    sha256: str | None = None                      # None: the authors publish none (see the module docstring)
    sizes: tuple[int, int, int] = (640, 2560, 5120)  # feature, projection, hidden: RN50x4's 640, 4x, 8x
    encoder: str = "openai:RN50x4"                 # the features it was trained on (the demo's clip.load)


RELEASED_COMBINERS = {
    "cirr": Release("https://www.dropbox.com/s/cdesqz7yincaq8g/cirr_combiner.pth?dl=1", "cirr_combiner"),
    "fashioniq": Release("https://www.dropbox.com/s/tra1no8ionus3lk/fashionIQ_combiner.pth?dl=1",
                         "fashionIQ_combiner"),
}


def release(dataset: str) -> Release:
    """The release for a dataset name, case-insensitive ("fashionIQ", the demo's spelling, works too)."""
    key = str(dataset).lower()
    if key not in RELEASED_COMBINERS:
        raise ValueError(f"no released Combiner for dataset {dataset!r}; valid: {', '.join(RELEASED_COMBINERS)}")
    return RELEASED_COMBINERS[key]


def cache_dir() -> Path:
    """torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def released_combiner(dataset: str, map_location: str | torch.device = "cpu", sha256: str | None = None,
                      model_dir: str | os.PathLike | None = None, progress: bool = True) -> Combiner:
    """The authors' Combiner for `dataset` (cirr | fashioniq), in eval mode, downloaded on first use.

    `sha256` pins the file (checked on download and on every load from the cache); it overrides the table's.
    DownloadError for a file that fails a check (nothing is left in the cache then); OSError for the network.
    """
    rel = release(dataset)
    expected = _checked_hex(sha256 or rel.sha256)
    path = Path(model_dir) if model_dir is not None else cache_dir()
    path = path / rel.file_name
    if path.is_file():
        if expected and (got := sha256_file(path)) != expected:
            raise DownloadError(f"the cached {path} has sha256 {got}, not {expected}: delete it to download it "
                                "again, or pass the checksum of the file you trust")
        return _verified(path, rel, map_location)
    log.info("downloading the released %s Combiner from %s to %s", dataset, rel.url, path)
    return download(rel, path, expected, map_location, progress)


def download(rel: Release, dest: Path, sha256: str | None, map_location: str | torch.device = "cpu",
             progress: bool = False) -> Combiner:
    """Fetch `rel.url` into a temporary file beside `dest`, check it, load it, then rename it to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(rel.url, out, progress)
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest != sha256:
            raise DownloadError(f"{rel.url} has sha256 {digest}, not {sha256}: the file was not kept")
        model = _verified(tmp, rel, map_location, source=rel.url)
        os.replace(tmp, dest)   # atomic: a reader sees no file or the whole verified one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return model


def _fetch(url: str, out, progress: bool) -> str:
    """Stream `url` into `out`; the sha256 of what was written. DownloadError when it ends early."""
    h, done = hashlib.sha256(), 0
    req = urllib.request.Request(url, headers={"User-Agent": "cir-hub"})   # some hosts refuse urllib's default
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            while block := resp.read(CHUNK):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress:
                    sys.stderr.write(f"\r{url.split('?')[0].rsplit('/', 1)[-1]}: {done / 1e6:.1f}"
                                     + (f" / {total / 1e6:.1f}" if total else "") + " MB")
    except http.client.IncompleteRead as e:   # the server closed the connection mid-body
        raise DownloadError(f"{url}: the download was cut off after {done + len(e.partial)} bytes") from None
    if progress:
        sys.stderr.write("\n")
    if total and done != total:
        raise DownloadError(f"{url}: truncated download, {done} of {total} bytes: the file was not kept")
    return h.hexdigest()


def _verified(path: Path, rel: Release, map_location: str | torch.device, source: str | None = None) -> Combiner:
    """Load a released checkpoint and check it holds a Combiner of the release's sizes."""
    try:
        model = Combiner.load(path, map_location)
    except ValueError as e:   # not loadable by torch.load (truncated, an HTML error page), or another module
        where = f"{source}: the download" if source else f"the cached {path}"
        raise DownloadError(f"{where} is not a CLIP4Cir Combiner checkpoint ({e}); "
                            + ("the file was not kept" if source else "delete it to download it again")) from None
    cfg = model.cfg
    got = (cfg.feature_dim, cfg.projection_dim, cfg.hidden_dim)
    if got != rel.sizes:
        raise DownloadError(f"{source or path} holds a Combiner of sizes {got}, not the release's {rel.sizes}")
    cfg.encoder = rel.encoder   # so check_compatible refuses features of another encoder
    return model


def _checked_hex(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, not {sha256!r}")
    return sha256.lower()
