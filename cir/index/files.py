"""Feature folders on disk: the safetensors header, the memory mapping, the norms, the sampled row check,
the content fingerprint and the checksum verification.

A feature folder holds features.safetensors (L2-normalised float16 rows and, since format 2, each row's
float32 norm), names.json (row -> image name) and manifest.json (what wrote it; since the extractor records
them, `"checksums": {"features.safetensors": sha256, "names.json": sha256}`). Everything here raises
IndexLoadError naming the file and what is wrong with it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np
import torch

from cir.utils import sha256_file

from .errors import IndexLoadError

log = logging.getLogger("index")

FEATURES_FILE = "features.safetensors"
NAMES_FILE = "names.json"
MANIFEST_FILE = "manifest.json"
CHECKSUMMED_FILES = (FEATURES_FILE, NAMES_FILE)           # what the manifest's "checksums" must cover
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4")}   # what a feature file may hold
MAX_HEADER_BYTES = 100 * 1024 * 1024                       # safetensors' own limit
CHECK_SAMPLE_ROWS = 1024                                   # rows checked for NaN/inf and norm at load
# Feature files up to this size are read into each process's memory instead of memory-mapped: the demo's
# catalogue (9,583 x 256 float16) is about 5 MB. A copy cannot fault when the file is truncated under the server.
IN_MEMORY_MAX_BYTES = 256 * 1024 * 1024

# Folders already warned about (no checksums): once per folder and process, not at every reload.
_warned_unverified: set[str] = set()


def read_header(path: Path, data: bytes | bytearray | None = None) -> tuple[dict, int, bytes]:
    """The safetensors header of `path` (or of its bytes `data`, already read): (header JSON, offset of the
    data section, raw header bytes)."""
    if data is not None:
        return _parse_header(path, io.BytesIO(data), len(data))
    with open(path, "rb") as f:
        return _parse_header(path, f, os.fstat(f.fileno()).st_size)


def _parse_header(path: Path, f: BinaryIO, size: int) -> tuple[dict, int, bytes]:
    head = f.read(8)
    if len(head) < 8:
        raise IndexLoadError(f"{path} is truncated or corrupt: {size} bytes, not even a safetensors header")
    n = int.from_bytes(head, "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise IndexLoadError(f"{path} is truncated or corrupt: its header claims {n} bytes, the file has "
                             f"{size}")
    raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexLoadError(f"{path} is unreadable or corrupt: its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise IndexLoadError(f"{path} is unreadable or corrupt: its header is not a JSON object")
    return header, 8 + n, head + raw


def read_small_file(path: Path, max_bytes: int) -> bytearray | None:
    """The whole file in an anonymous buffer when it has at most `max_bytes` (None when larger).

    What is served from this copy cannot change under the server: truncating or overwriting the file in place
    would make a memory map fault (SIGBUS kills the worker), a private buffer never does.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            return None
        buf = bytearray(size)
        got = f.readinto(buf)
    if got != size:   # shrunk while being read
        raise IndexLoadError(f"{path} changed while it was being read ({got:,} of {size:,} bytes); load it again")
    return buf


def map_features(path: str | os.PathLike, data: bytearray | None = None) -> tuple[torch.Tensor, np.memmap | None]:
    """The `features` tensor of a safetensors file, checking its header against its size: a view of `data`
    (the file's bytes, read_small_file) when given, else memory-mapped.

    Returns (tensor, the np.memmap under it, None for `data`). Copy-on-write mapping: pages are shared with the
    page cache (and with every other process mapping the file) until written; a write would stay private,
    never reaching the file. A mapping still reads the file: truncated under the server, it faults (SIGBUS),
    which is why small files are served from `data`.
    """
    path = Path(path)
    header, start, _ = read_header(path, data)
    entry = header.get("features")
    if not isinstance(entry, dict):
        raise IndexLoadError(f"{path} is unreadable or corrupt: no tensor named 'features' "
                             f"(it holds {', '.join(k for k in header if k != '__metadata__') or 'nothing'})")
    dtype = DTYPES.get(entry.get("dtype"))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise IndexLoadError(f"{path}: features are {entry.get('dtype')}, expected F16 (or F32)")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise IndexLoadError(f"{path} is unreadable or corrupt: features shape {shape} is not [rows, dim]")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise IndexLoadError(f"{path} is unreadable or corrupt: bad data offsets {offsets}")
    rows, dim = shape
    want = rows * dim * dtype.itemsize
    if offsets[1] - offsets[0] != want:
        raise IndexLoadError(f"{path} is unreadable or corrupt: {rows}x{dim} {entry['dtype']} needs {want} bytes, "
                             f"its header gives {offsets[1] - offsets[0]}")
    size = len(data) if data is not None else path.stat().st_size
    if start + offsets[1] > size:
        raise IndexLoadError(f"{path} is truncated or corrupt: the header promises {start + offsets[1]:,} bytes "
                             f"({rows}x{dim} {entry['dtype']}), the file has {size:,}; extract it again")
    if rows == 0 or dim == 0:
        return torch.zeros((rows, dim), dtype=torch.float16 if dtype.itemsize == 2 else torch.float32), None
    if data is not None:
        view = np.frombuffer(data, dtype=dtype, count=rows * dim, offset=start + offsets[0]).reshape(rows, dim)
        return torch.from_numpy(view), None
    mm = np.memmap(path, dtype=dtype, mode="c", offset=start + offsets[0], shape=(rows, dim))
    return torch.from_numpy(mm), mm


def read_norms(path: str | os.PathLike, rows: int, data: bytearray | None = None) -> torch.Tensor | None:
    """The `norms` tensor of a feature file (float32 [rows]: the raw features' norms), or None if it has none;
    read from `data` (the file's bytes) when given."""
    path = Path(path)
    header, start, _ = read_header(path, data)
    entry = header.get("norms")
    if entry is None:
        return None
    if not (isinstance(entry, dict) and entry.get("dtype") == "F32" and entry.get("shape") == [rows]
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
        raise IndexLoadError(f"{path} is unreadable or corrupt: 'norms' is not a float32 vector of {rows} rows")
    lo, hi = entry["data_offsets"]
    size = len(data) if data is not None else path.stat().st_size
    if not (isinstance(lo, int) and isinstance(hi, int)) or hi - lo != 4 * rows or start + hi > size:
        raise IndexLoadError(f"{path} is truncated or corrupt: bad 'norms' offsets {entry['data_offsets']}")
    if data is not None:
        raw = bytes(data[start + lo:start + hi])
    else:
        with open(path, "rb") as f:
            f.seek(start + lo)
            raw = f.read(4 * rows)
    norms = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
    if rows and not (torch.isfinite(norms).all() and (norms > 0).all()):
        raise IndexLoadError(f"{path} is corrupt: its 'norms' hold zero, negative, NaN or infinite values")
    return norms


def check_sample(path: Path, features: torch.Tensor, normalized: bool, every_row: bool = False) -> bool:
    """Corrupt data usually shows as NaN/inf (random fp16 bits) or wrong norms: check evenly spaced rows
    (`every_row`: all of them, for features already in memory, where it costs milliseconds).

    Returns whether the checked rows are unit-norm (what the fp16 fast path of the exact scan relies on).
    A cheap first line only: valid rows in the wrong place pass it; the checksums catch those.
    """
    n = features.shape[0]
    if n == 0:
        return True
    count = n if every_row else min(n, CHECK_SAMPLE_ROWS)
    rows = torch.from_numpy(np.unique(np.linspace(0, n - 1, count).astype(np.int64)))
    sample = features[rows].float()
    bad = ~torch.isfinite(sample).all(dim=1)
    if bad.any():
        raise IndexLoadError(f"{path} is corrupt: row {int(rows[bad][0])} (and {int(bad.sum()) - 1} more of "
                             f"{len(rows)} checked) holds NaN or infinite values; extract it again")
    norms = sample.norm(dim=1)
    off = (norms - 1).abs() > 0.02
    if off.any():
        msg = (f"{path}: row {int(rows[off][0])} has norm {float(norms[off][0]):.3f} ({int(off.sum())} of "
               f"{len(rows)} checked rows are not L2-normalised)")
        if normalized:
            raise IndexLoadError(f"{msg}; the file is corrupt or was not written by extract_features.py")
        log.warning("%s; cosine ranking expects normalised rows", msg)
        return False
    return True


# ----------------------------------------------------------------------------------------------- checksums

def reextract_command(folder: Path, manifest: Mapping) -> str:
    """The command that extracts `folder` again, shell-quoted, from what its manifest recorded: dataset, split,
    FashionIQ category, images root and encoder (the default lite is left out), with --overwrite.
    extract_features.py names its output folder from these (extraction.index_name): a renamed folder is
    rewritten under its original name."""
    args = ["python3", "extract_features.py"]
    for flag, key in (("--dataset", "dataset"), ("--split", "split"), ("--categories", "category"),
                      ("--data-root", "data_root")):
        if isinstance(manifest.get(key), str):
            args += [flag, manifest[key]]
    if isinstance(manifest.get("encoder"), str) and manifest["encoder"] != "lite":
        args += ["--encoder", manifest["encoder"]]
    return shlex.join([*args, "--out", str(folder.parent), "--overwrite"])


def _reextract_hint(folder: Path, manifest: dict) -> str:
    """How to rebuild a folder, for error messages."""
    return f"extract it again: {reextract_command(folder, manifest)}"


def verify_checksums(folder: Path, manifest: dict, digests: Mapping[str, str] | None = None) -> bool:
    """Check the files against the manifest's "checksums" (sha256 hex per file name, streamed: ~1 s per GB).
    `digests` holds the sha256 of files already read to be served (name -> hex): they are checked on those
    bytes, so what is verified is what is served.

    Returns True when every listed file matches, False when the manifest has no checksums (a folder written
    before the extractor recorded them: it loads, unverified, with one warning per folder and process).
    Raises IndexLoadError naming the folder and the file when one does not match (damaged or altered), and
    for checksums that are malformed or leave out features.safetensors or names.json.
    """
    sums = manifest.get("checksums")
    if sums is None:
        if str(folder) not in _warned_unverified:
            _warned_unverified.add(str(folder))
            log.warning("%s: its manifest records no checksums (extracted by an older version), so damaged or "
                        "altered files cannot be detected: loaded unverified. To have it verified, %s", folder,
                        _reextract_hint(folder, manifest))
        return False
    if not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())
            and set(CHECKSUMMED_FILES) <= set(sums)):
        raise IndexLoadError(f"{folder}/{MANIFEST_FILE} is damaged or was altered: its 'checksums' must map "
                             f"{' and '.join(CHECKSUMMED_FILES)} to sha256 hex digests; "
                             f"{_reextract_hint(folder, manifest)}")
    digests = digests or {}
    for name, want in sorted(sums.items()):
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise IndexLoadError(f"{folder}: the manifest has a checksum for {name!r}, which is not a file of the "
                                 f"folder; the folder is damaged or was altered: {_reextract_hint(folder, manifest)}")
        got = digests[name] if name in digests else sha256_file(path)
        if got != want.lower():
            raise IndexLoadError(f"{folder}: {name} is damaged or was altered since extraction (sha256 {got[:16]}..., "
                                 f"the manifest records {want[:16]}...); it cannot be served: "
                                 f"{_reextract_hint(folder, manifest)}")
    return True


def features_fingerprint(folder: str | os.PathLike, full_hash_bytes: int = 64 << 20,
                         checksums: dict | None = None) -> str:
    """A content fingerprint of a feature folder: what a saved ANN index or a Milvus collection was built from.

    Content, not mtime, so that a copy of the folder on another machine matches. With verified `checksums`
    (the manifest's), the fingerprint is derived from them: exact, and free. Otherwise files up to
    `full_hash_bytes` are hashed whole; larger ones by header, size and 1,024 evenly spaced 4 KB samples
    (extract_features.py rewrites the whole file, so any re-extraction changes the samples). names.json is
    hashed whole: it maps rows to images.
    """
    folder = Path(folder)
    if checksums:
        wanted = {n: checksums[n].lower() for n in CHECKSUMMED_FILES}
        return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:32]
    path = folder / FEATURES_FILE
    h = hashlib.sha256()
    size = path.stat().st_size
    _, start, raw = read_header(path)
    h.update(raw)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= full_hash_bytes:
            f.seek(start)
            while block := f.read(1 << 20):
                h.update(block)
        else:
            span = size - start - 4096
            for i in range(1024):
                f.seek(start + span * i // 1023)
                h.update(f.read(4096))
    h.update((folder / NAMES_FILE).read_bytes())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------------------------- changes on disk

@dataclass
class FileState:
    """A served file as it was when loaded: its stat and, when known, its sha256. `changed()` compares the file
    on disk now (health asks; a file replaced or truncated under the server is reported, never served)."""

    path: Path
    stamp: tuple[int, int, int]         # size, mtime in ns, inode
    sha256: str | None = None           # of the loaded bytes (None: not known, e.g. a large unverified file)
    _last: tuple[tuple[int, int, int], str | None] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, path: Path, sha256: str | None = None) -> "FileState":
        return cls(path, _stamp(os.stat(path)), sha256)

    def changed(self) -> str | None:
        """None while the file on disk is the one loaded; else what happened to it. A file whose stat changed
        is hashed again (once per new stat) when its hash is known: a `touch` or a copy of the same bytes is
        not a change."""
        try:
            now = _stamp(os.stat(self.path))
        except OSError as e:
            return f"{self.path.name} is gone or unreadable ({e.strerror or e})"
        if now == self.stamp:
            return None
        if self._last is None or self._last[0] != now:
            self._last = (now, self._compare(now))
        return self._last[1]

    def _compare(self, now: tuple[int, int, int]) -> str | None:
        if now[0] != self.stamp[0]:
            return f"{self.path.name} changed on disk since it was loaded ({self.stamp[0]:,} -> {now[0]:,} bytes)"
        if self.sha256 is None:
            return f"{self.path.name} was rewritten on disk since it was loaded"
        try:
            same = sha256_file(self.path) == self.sha256
        except OSError as e:
            return f"{self.path.name} is unreadable ({e.strerror or e})"
        return None if same else f"{self.path.name} no longer matches what was loaded (other bytes, same size)"


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino
