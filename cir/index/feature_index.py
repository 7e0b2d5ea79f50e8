"""FeatureIndex and load_index: a feature folder checked, verified and memory-mapped (or read into memory), with
its ranking backend.

`load_index(path, backend)` checks the folder is complete and consistent (one row per image id), verifies the
files against the manifest's checksums (sha256; a mismatch is an IndexLoadError naming the folder and the
file), memory-maps the features (no copy in RAM per process: the OS page cache is shared) or, up to
`in_memory_max_bytes` (servers), reads them into memory, and attaches the backend the spec names.
`FeatureIndex.disk_problem()` says when the files on disk have changed since. Folders written before the
extractor recorded checksums load unverified (`FeatureIndex.verified` is False, and says so in health and
summaries).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .backends.base import Backend, UnavailableBackend
from .backends.exact import ExactBackend
from .errors import IndexLoadError
from .files import (
    FEATURES_FILE,
    MANIFEST_FILE,
    NAMES_FILE,
    FileState,
    check_sample,
    features_fingerprint,
    map_features,
    read_norms,
    read_small_file,
    verify_checksums,
)
from .registry import open_backend, parse_backend
from .search import search
from .specs import BackendSpec

log = logging.getLogger("index")

# Encoders whose raw outputs are unit vectors (lite's heads end in a normalisation): their folders from before
# format 2, which stored only normalised rows, still give the exact raw features.
UNIT_OUTPUT_ENCODERS = ("lite",)


@dataclass
class FeatureIndex:
    features: torch.Tensor          # [N, d] L2-normalised, float16 as stored (memory-mapped when loaded)
    names: list[str]                # row -> image name
    manifest: dict = field(default_factory=dict)
    path: Path | None = None        # the folder it was loaded from; None for an index built in memory
    mapped: np.memmap | None = field(default=None, repr=False)   # the mapping under `features`, if any
    unit_rows: bool = False         # rows checked to be unit-norm at load (enables the fp16 fast scan)
    norms: torch.Tensor | None = None   # [N] float32 raw-feature norms (rows * norms = the encoder's raw
                                        # output); None: the rows are the raw features themselves
    raw_error: str | None = None    # why raw features cannot be had (an old folder of a non-unit encoder)
    verified: bool = False          # the files matched the manifest's checksums at load (False: it has none,
                                    # or the index was built in memory)
    disk: dict[str, FileState] = field(default_factory=dict, repr=False)   # the served files as loaded
    _ids: dict[str, int] | None = field(default=None, repr=False)
    _f32: torch.Tensor | None = field(default=None, repr=False)
    _backend: Any = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def id_of(self, name: str) -> int:
        """Row of an image name; KeyError if the image is not in the index."""
        if self._ids is None:
            self._ids = {n: i for i, n in enumerate(self.names)}
        return self._ids[name]

    def __contains__(self, name: str) -> bool:
        try:
            self.id_of(name)
            return True
        except KeyError:
            return False

    def matrix(self) -> torch.Tensor:
        """float32 copy of the whole matrix, made once, for small callers (training, evaluation).

        search() never needs it: a server keeps only the memory-mapped float16 file.
        """
        if self._f32 is None:
            self._f32 = self.features.float()
        return self._f32

    def raw(self, rows: Any) -> torch.Tensor:
        """float32 raw encoder features [len(rows), d] of some rows: what composition (combiner.compose) takes.

        Gathers only those rows from the (memory-mapped) float16 features; raises IndexLoadError for a folder
        that cannot give them (extracted before norms were stored, by an encoder whose outputs are not unit).
        """
        if self.raw_error:
            raise IndexLoadError(self.raw_error)
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        x = self.features[rows].float()
        return x if self.norms is None else x * self.norms[rows].unsqueeze(1)

    def raw_matrix(self) -> torch.Tensor:
        """float32 raw features of every row (training, evaluation; not the server)."""
        if self.raw_error:
            raise IndexLoadError(self.raw_error)
        return self.matrix() if self.norms is None else self.matrix() * self.norms.unsqueeze(1)

    def replace_raw(self, raw: torch.Tensor) -> None:
        """New raw features for the same rows, held in memory from now on (stage 1 re-encodes its validation
        indexes with the image side it fine-tunes); the folder on disk is left as it is."""
        if tuple(raw.shape) != (len(self), self.dim):
            raise ValueError(f"replace_raw: {tuple(raw.shape)} features for an index of {len(self)} x {self.dim}")
        norms = raw.detach().float().cpu().norm(dim=1).clamp_min(1e-12)
        self.features = (raw.detach().float().cpu() / norms.unsqueeze(1)).half()
        self.norms, self.unit_rows, self.raw_error = norms, True, None
        self.path, self.mapped, self.verified, self.disk = None, None, False, {}
        self._f32 = self._fingerprint = None

    @property
    def backend(self) -> Backend:
        """What ranks this index; an exact scan unless load_index / with_backend chose another."""
        if self._backend is None:
            self._backend = ExactBackend(self)
        return self._backend

    @backend.setter
    def backend(self, value: Backend | None) -> None:
        self._backend = value

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the features (see features_fingerprint); computed once."""
        if self._fingerprint is None:
            if self.path is not None:
                checksums = self.manifest.get("checksums") if self.verified else None
                self._fingerprint = features_fingerprint(self.path, checksums=checksums)
            else:
                h = hashlib.sha256(self.features.contiguous().numpy().tobytes())
                h.update(json.dumps(self.names).encode())
                self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def disk_problem(self) -> str | None:
        """None while the folder's files on disk are still those loaded; else what changed (a server keeps
        serving what it loaded and verified: health reports this)."""
        changed = [c for c in (state.changed() for state in self.disk.values()) if c]
        if not changed:
            return None
        copy = ("its memory-mapped features may fault: restart the server" if self.mapped is not None else
                "still serving the copy loaded at start-up; restart the server to load the folder again")
        return f"{self.path}: {'; '.join(changed)}; {copy} (extract it again if it is damaged)"

    def summary(self) -> dict:
        """What `python3 -m cir.index check` prints: size, layout, encoder, fingerprint, verification."""
        out = {"features": str(self.path) if self.path else None, "rows": len(self), "dim": self.dim,
               "dtype": str(self.features.dtype), "memory_mapped": self.mapped is not None,
               "encoder": self.manifest.get("encoder"), "verified": self.verified, "fingerprint": self.fingerprint}
        if self.path is not None:
            out["bytes"] = (self.path / FEATURES_FILE).stat().st_size
            out["faiss_indexes"] = sorted(p.name for p in self.path.glob("faiss-*.index"))
        return out


def _read_json(path: Path, raw: bytes | None = None) -> Any:
    try:
        return json.loads(path.read_bytes() if raw is None else raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{path.parent}: invalid JSON in {path.name}: {e}") from e


def _check_consistent(path: Path, features: torch.Tensor, names: Any, manifest: dict) -> None:
    if not isinstance(names, list) or len(names) != features.shape[0]:
        raise IndexLoadError(f"{path}: {features.shape[0]} feature rows but "
                             f"{len(names) if isinstance(names, list) else 'no list of'} names")
    if not all(isinstance(n, str) for n in names):
        raise IndexLoadError(f"{path}: {NAMES_FILE} must list image ids as strings; extract the folder again")
    if len(set(names)) != len(names):   # the last row of an id would answer for all of them
        dup = next(n for n, c in Counter(names).items() if c > 1)
        raise IndexLoadError(f"{path}: {NAMES_FILE} lists image {dup[:80]!r} {names.count(dup)} times "
                             f"({len(names) - len(set(names))} duplicate rows in all); each id must name one row: "
                             "the folder is damaged, extract it again")
    if manifest.get("dim") not in (None, features.shape[1]):
        raise IndexLoadError(f"{path}: manifest says dim {manifest['dim']}, features have {features.shape[1]}")
    if manifest.get("count") not in (None, features.shape[0]):
        raise IndexLoadError(f"{path}: manifest says {manifest['count']} features, the file has "
                             f"{features.shape[0]}; the folder is inconsistent, extract it again")


def load_index(path: str | os.PathLike, backend: "str | BackendSpec | None" = "exact",
               in_memory_max_bytes: int = 0) -> FeatureIndex:
    """Load a feature folder, with a clear error for anything missing, truncated, corrupt, altered or
    inconsistent, and attach the ranking backend named by `backend` (see index.specs).

    A features file of at most `in_memory_max_bytes` is read into this process's memory (what servers do:
    truncating or replacing it on disk then cannot crash them); a larger one is memory-mapped (the default,
    0: always mapped; the OS page cache is shared between processes). Either way the bytes verified against
    the manifest's checksums are the bytes served when they are in memory.
    """
    path = Path(path)
    files = {n: path / n for n in (FEATURES_FILE, NAMES_FILE, MANIFEST_FILE)}
    missing = [n for n, f in files.items() if not os.path.lexists(f)]
    if missing:
        raise IndexLoadError(f"{path} is not a complete feature folder (missing {', '.join(missing)}); "
                             "run extract_features.py for it")
    odd = [n for n, f in files.items() if not f.is_file()]
    if odd:   # a symlink loop or a dangling link, a folder, a FIFO (reading it would block), a device
        raise IndexLoadError(f"{path}: {', '.join(odd)} is not a regular file (or a link to one); the folder is "
                             "damaged, extract it again")
    try:
        manifest = _read_json(files[MANIFEST_FILE])
        if not isinstance(manifest, dict):
            raise IndexLoadError(f"{path}: {MANIFEST_FILE} is not a JSON object; extract the folder again")
        disk = {n: FileState.of(files[n]) for n in (FEATURES_FILE, NAMES_FILE)}   # before reading: see FileState
        contents = {NAMES_FILE: files[NAMES_FILE].read_bytes()}
        data = read_small_file(files[FEATURES_FILE], in_memory_max_bytes) if in_memory_max_bytes > 0 else None
        if data is not None:
            contents[FEATURES_FILE] = data
        digests = {n: hashlib.sha256(b).hexdigest() for n, b in contents.items()}
        # First: a damaged or altered file is reported as such, whatever else is wrong with it.
        verified = verify_checksums(path, manifest, digests)
        features, mapped = map_features(files[FEATURES_FILE], data)
        names = _read_json(files[NAMES_FILE], contents[NAMES_FILE])
        _check_consistent(path, features, names, manifest)
        unit = check_sample(files[FEATURES_FILE], features, bool(manifest.get("normalized")),
                            every_row=data is not None)
        norms = read_norms(files[FEATURES_FILE], features.shape[0], data)
    except OSError as e:
        raise IndexLoadError(f"{path} is unreadable: {e}") from e
    sums = manifest["checksums"] if verified else {}
    for n, state in disk.items():
        state.sha256 = digests.get(n) or (sums[n].lower() if n in sums else None)   # what changed() compares with
    index = FeatureIndex(features, names, manifest, path=path, mapped=mapped, unit_rows=unit, norms=norms,
                         raw_error=None if norms is not None else _legacy_raw_error(path, manifest),
                         verified=verified, disk=disk)
    return with_backend(index, backend)


def _legacy_raw_error(path: Path, manifest: dict) -> str | None:
    """Why an index without stored norms cannot give raw features (None when its rows are the raw ones)."""
    if not manifest.get("normalized") or manifest.get("encoder") in UNIT_OUTPUT_ENCODERS:
        return None
    return (f"{path} holds only L2-normalised {manifest.get('encoder', '?')} features (feature format "
            f"{manifest.get('format_version', 1)}), but composing a query needs the raw features the Combiner "
            f"and sum fusion were defined on; extract it again with this version (extract_features.py --overwrite)")


def with_backend(index: FeatureIndex, backend: "str | BackendSpec | None" = "exact") -> FeatureIndex:
    """Attach a ranking backend to `index` (in place) and return it. Raises IndexLoadError (StaleIndexError,
    BackendUnavailable) when the backend cannot serve this index."""
    backend_spec = parse_backend(backend)
    plain_exact = backend_spec.kind == "exact" and not backend_spec.params
    if plain_exact and (index._backend is None or isinstance(index._backend, ExactBackend)):
        return index  # nothing to do: indexes built in memory (tests, evaluation stand-ins) stay as they are
    index.backend = open_backend(index, backend_spec)
    return index


def open_backend_or_placeholder(index: FeatureIndex, backend: "str | BackendSpec | None") -> FeatureIndex:
    """with_backend for servers: a backend that cannot be opened (unreachable, stale, not loaded) leaves the
    index searchable by nobody but reported by health, instead of failing the whole start-up."""
    backend_spec = parse_backend(backend)
    try:
        return with_backend(index, backend_spec)
    except IndexLoadError as e:
        log.error("index backend %s of %s: %s", backend_spec.public, index.path, e)
        index.backend = UnavailableBackend(index, backend_spec, e, reopen=lambda: open_backend(index, backend_spec))
        return index


def rank_subset(query: torch.Tensor, index: FeatureIndex, names: Sequence[str],
                k: int | None = None) -> list[tuple[str, float]]:
    """Some images of the index, by name, ranked by one query [d] or [1, d]: (name, score) best first, at most
    k. Names without features are left out. Ranked by index.search restricted to their rows (`subset`), so by
    the index's backend like every other ranking: CIRR's subset setting, in evaluation and in the demo alike.
    """
    members = [m for m in dict.fromkeys(names) if m in index]
    if not members:
        return []
    rows = [index.id_of(m) for m in members]
    scores, ids = search(query.reshape(1, -1), index, len(rows) if k is None else k, subset=rows)
    return [(index.names[j], float(s)) for s, j in zip(scores[0].tolist(), ids[0].tolist())]
