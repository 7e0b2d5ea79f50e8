"""The web demo's engine, without HTTP: datasets, references, uploads, query building, caches and metrics.

app.py turns requests into calls here and the results into JSON; everything in this module can be used and
tested without Flask. `Engine.load(settings)` loads the encoder, its text sides, the Combiner checkpoints and
every dataset's feature index once; a query then goes

    reference features (index row or stored upload) + caption  --model.compose-->  query vector
    query vector  --index.search-->  ranked ids

so the demo ranks with exactly the code evaluation uses. Every dataset is ranked by the index backend of
`Settings.index_backend` (exact, faiss, milvus: see index.py); one that cannot be reached (a Milvus server
that is down) leaves its dataset listed but degraded: `Engine.health()` says why and its searches answer 503.
Errors a user can cause are raised as `ApiError` subclasses (400 / 404 / 413) carrying a message meant for
that user.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import random
import re
import threading
import time
import unicodedata
import uuid
import warnings
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import data_utils
from captions import GENDER_PHRASES, PLURAL_ONLY, article_phrase, colour_phrase, usage_phrase, with_a
from index import (BackendUnavailable, FeatureIndex, IndexLoadError, load_index, open_backend_or_placeholder,
                   parse_backend, search)
from utils import atomic_write

log = logging.getLogger("service")

# Search modes of the API -> fusion method of model.compose. Tags become a text query.
MODES: dict[str, str] = {"composed": "combiner", "sum": "sum", "image": "image", "text": "text", "tags": "text"}
MODE_LABELS = {"composed": "Composed (Combiner)", "sum": "Composed (sum baseline)", "image": "Image → image",
               "text": "Text → image", "tags": "Tags → image"}
NEEDS_REFERENCE = {"composed", "sum", "image"}
NEEDS_CAPTION = {"composed", "sum", "text"}
TAG_KEYS = ("gender", "articleType", "baseColour", "usage")   # the chips offered in tags mode
MISSING_VALUES = ("", "NA")                                     # catalogue placeholders, never offered as tags
MAX_CAPTION_CHARS = 1000
MAX_FILTER_CHARS = 200
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what PIL may sniff an upload as
UPLOAD_MAX_SIDE = 1024      # uploads are stored at most this large: the encoders work at 224 px anyway
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")                       # uuid4().hex, nothing else names an upload
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # dataset names appear in URLs


# ----------------------------------------------------------------------------------------------- errors

class ApiError(Exception):
    """An error the user caused; `status` is the HTTP status, the message says what to change."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class TooLarge(ApiError):
    status = 413


class ServiceUnavailable(ApiError):
    """The dataset's index backend cannot be reached (e.g. its Milvus server is down)."""

    status = 503


# ----------------------------------------------------------------------------------------------- validation

def validate_text(value: Any, what: str = "caption", max_chars: int = MAX_CAPTION_CHARS) -> str:
    """A stripped, non-empty, printable string of at most `max_chars` characters, or BadInput."""
    if value is None:
        raise BadInput(f"the {what} is missing")
    if not isinstance(value, str):
        raise BadInput(f"the {what} must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadInput(f"the {what} is empty: say how the wanted item differs, e.g. 'is red with longer sleeves'"
                       if what == "caption" else f"the {what} is empty")
    if len(text) > max_chars:
        raise BadInput(f"the {what} has {len(text)} characters; at most {max_chars} are allowed")
    for i, ch in enumerate(text):
        # Cc: control characters (newlines, tabs, NUL, escapes); Cs: lone surrogates that cannot be encoded.
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise BadInput(f"the {what} contains a control character (U+{ord(ch):04X}) at position {i}; "
                           "use plain text on one line")
    return text


def parse_int(value: Any, what: str, lo: int, hi: int, default: int) -> int:
    """An integer in [lo, hi] from JSON or a query string; BadInput otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadInput(f"{what} must be an integer between {lo} and {hi}")
    try:
        n = int(value) if isinstance(value, (int, str)) else int(str(value))
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be an integer between {lo} and {hi}, not {str(value)[:40]!r}") from None
    if not lo <= n <= hi:
        raise BadInput(f"{what} must be between {lo} and {hi}, not {n}")
    return n


def tags_caption(tags: Mapping[str, str]) -> str:
    """Chosen attribute values -> the phrase a shopper would type: 'a red casual t-shirt for men'."""
    art = tags.get("articleType", "")
    noun = " ".join(w for w in (colour_phrase(tags.get("baseColour", "")), usage_phrase(tags.get("usage", "")),
                                article_phrase(art) if art else "item") if w)
    phrase = noun if art in PLURAL_ONLY else with_a(noun)
    gender = GENDER_PHRASES.get(tags.get("gender", ""), ("", ""))[0]
    return f"{phrase} for {gender}" if gender else phrase


# ----------------------------------------------------------------------------------------------- small helpers

class LRU:
    """A thread-safe least-recently-used map of at most `size` entries (size 0 disables it)."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation) or None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Metrics:
    """Per-app counters: queries by mode, latency window, errors by status, uploads. Thread-safe."""

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.started = time.time()
        self.queries = 0
        self.by_mode: Counter = Counter()
        self.errors: Counter = Counter()
        self.uploads = 0
        self._latency: deque[float] = deque(maxlen=window)  # recent total_ms of answered queries

    def query(self, mode: str, total_ms: float) -> None:
        with self._lock:
            self.queries += 1
            self.by_mode[mode] += 1
            self._latency.append(total_ms)

    def error(self, status: int) -> None:
        with self._lock:
            self.errors[str(status)] += 1

    def upload(self) -> None:
        with self._lock:
            self.uploads += 1

    def snapshot(self) -> dict:
        with self._lock:
            lat = list(self._latency)
            return {"queries": self.queries, "queries_by_mode": dict(self.by_mode),
                    "errors": sum(self.errors.values()), "errors_by_status": dict(self.errors),
                    "uploads": self.uploads, "uptime_s": round(time.time() - self.started, 1),
                    "latency_ms": {"p50": _round(percentile(lat, 50)), "p95": _round(percentile(lat, 95)),
                                   "window": len(lat)}}


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


class TimedTexts:
    """The part of an Encoder that model.compose uses (encode_texts), behind an LRU cache and a stopwatch.

    One is made per query, so the measured time belongs to that query even with concurrent requests.
    """

    def __init__(self, encoder, cache: LRU, key: str):
        self.encoder, self.cache, self.key = encoder, cache, key
        self.ms = 0.0
        self.cached = True

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        """Raw features are cached; normalised ones are derived from them (as Encoder.encode_texts)."""
        t0 = time.perf_counter()
        texts = [t.strip() if isinstance(t, str) else t for t in texts]
        found = [self.cache.get((self.key, t)) for t in texts]
        missing = list(dict.fromkeys(t for t, f in zip(texts, found) if f is None))
        if missing:
            self.cached = False
            new = dict(zip(missing, self.encoder.encode_texts(missing, raw=True)))  # ValueError on empty
            for t, f in new.items():
                self.cache.put((self.key, t), f)
            found = [f if f is not None else new[t] for t, f in zip(texts, found)]
        out = torch.stack(found) if found else torch.zeros(0, self.encoder.dim)
        self.ms += (time.perf_counter() - t0) * 1000
        return out if raw else torch.nn.functional.normalize(out, dim=-1)


# ----------------------------------------------------------------------------------------------- datasets

@dataclass
class DatasetSpec:
    """Where one searchable dataset's features and images are (from a manifest or the datasets file)."""

    name: str                       # id used in the API and URLs (the index folder name by default)
    features: Path                  # the index folder written by extract_features.py
    dataset: str                    # layout: catalog, fashioniq, cirr or folder
    split: str | None = None        # split the index was built from (None for folders)
    category: str | None = None     # FashionIQ category, if any
    data_root: Path | None = None   # image folder recorded at extraction (or given in the datasets file)
    label: str = ""                 # human-readable name for the dataset picker
    manifest: dict = field(default_factory=dict, repr=False)


def _spec_from_manifest(folder: Path, manifest: dict, **overrides: Any) -> DatasetSpec:
    root = overrides.get("data_root") or manifest.get("data_root")
    spec = DatasetSpec(name=overrides.get("name") or folder.name, features=folder,
                       dataset=overrides.get("dataset") or manifest.get("dataset", ""),
                       split=overrides.get("split", manifest.get("split")),
                       category=overrides.get("category", manifest.get("category")),
                       data_root=Path(root).expanduser() if root else None, label=overrides.get("label", ""),
                       manifest=manifest)
    if not spec.label:
        what = {"catalog": "Catalogue", "fashioniq": "FashionIQ", "cirr": "CIRR", "folder": "Folder"}.get(
            spec.dataset, spec.dataset)
        parts = [p for p in (spec.category, spec.split) if p]
        if spec.dataset == "folder" and spec.data_root:
            parts = [spec.data_root.name]
        spec.label = f"{what} ({', '.join(parts)})" if parts else what
    return spec


def discover_datasets(features_root: Path) -> list[DatasetSpec]:
    """Every complete index folder directly under `features_root` whose manifest names its dataset."""
    specs = []
    if not features_root.is_dir():
        return specs
    for folder in sorted(p for p in features_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        mf = folder / "manifest.json"
        if not mf.is_file():
            continue
        try:
            manifest = json.loads(mf.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: unreadable manifest (%s)", folder, e)
            continue
        if manifest.get("dataset") not in data_utils.DATASETS:
            log.warning("skipping %s: its manifest names no known dataset (re-extract it with "
                        "extract_features.py to record one)", folder)
            continue
        specs.append(_spec_from_manifest(folder, manifest))
    return specs


def read_datasets_file(path: Path, features_root: Path) -> list[DatasetSpec]:
    """Datasets listed in a JSON file: a list (or {"datasets": [...]}) of objects with `features` (an index
    folder, relative to the file or to the features root) and optionally name, label, dataset, split,
    category, data_root; what is not given is read from the index's manifest."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise FileNotFoundError(f"datasets file {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"datasets file {path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    entries = data.get("datasets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"datasets file {path}: expected a list of datasets or {{\"datasets\": [...]}}")
    specs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("features"), str):
            raise ValueError(f"datasets file {path}: entry {i} needs a \"features\" folder (string)")
        folder = Path(e["features"]).expanduser()
        if not folder.is_absolute():
            folder = next((c for c in (Path(path).parent / folder, features_root / folder) if c.is_dir()),
                          Path(path).parent / folder)
        mf = folder / "manifest.json"
        manifest = json.loads(mf.read_text()) if mf.is_file() else {}
        if e.get("data_root") and not Path(e["data_root"]).expanduser().is_absolute():
            e = {**e, "data_root": str(Path(path).parent / e["data_root"])}
        specs.append(_spec_from_manifest(folder, manifest, **{k: v for k, v in e.items() if k != "features"}))
    return specs


class Dataset:
    """One searchable dataset: its feature index, image records, tag vocabulary and CIRR groups."""

    def __init__(self, spec: DatasetSpec, index: FeatureIndex, records: Iterable[data_utils.ImageRecord],
                 groups: Mapping[str, Sequence[str]] | None = None):
        self.spec, self.name, self.index = spec, spec.name, index
        by_name = {r.name: r for r in records}
        # Only what is in the index can be a reference or a result.
        self.records = {n: by_name[n] for n in index.names if n in by_name}
        self.groups = {n: tuple(m for m in g if m in index) for n, g in (groups or {}).items() if n in index}
        self.vocabulary: dict[str, list[tuple[str, int]]] = {}
        for key in TAG_KEYS:
            counts = Counter(r.attrs.get(key, "") for r in self.records.values())
            for v in MISSING_VALUES:
                counts.pop(v, None)
            if counts:
                self.vocabulary[key] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._vocab_sets = {k: {v for v, _ in vals} for k, vals in self.vocabulary.items()}
        # Lower-cased text per image for the browse filter: name, title and attribute values.
        self._haystack = [" ".join([n, *(self.records[n].attrs.values() if n in self.records else [])]).lower()
                          for n in index.names]

    def row(self, name: Any) -> int:
        """Index row of an image id; NotFound for anything else."""
        if not isinstance(name, str) or name not in self.index:
            raise NotFound(f"image {str(name)[:80]!r} is not in dataset {self.name!r}")
        return self.index.id_of(name)

    def record(self, name: str) -> data_utils.ImageRecord:
        self.row(name)
        rec = self.records.get(name)
        if rec is None:
            raise NotFound(f"image {name!r} of dataset {self.name!r} has no image file listed")
        return rec

    def info(self, name: str) -> dict:
        """What the page shows of an image: id, title and attributes (URLs are added by the web layer)."""
        rec = self.records.get(name)
        attrs = rec.attrs if rec else {}
        title = attrs.get("productDisplayName") or name
        return {"id": name, "title": title, "attrs": {k: attrs[k] for k in ("gender", "articleType", "baseColour",
                                                                           "usage", "season", "year")
                                                      if attrs.get(k) not in (None, *MISSING_VALUES)}}

    def browse(self, q: str = "", page: int = 1, per_page: int = 24) -> tuple[list[str], int]:
        """Image ids of one page of the (filtered) index, and how many match in all."""
        names = self.index.names
        if q:
            words = q.lower().split()
            names = [n for n, h in zip(names, self._haystack) if all(w in h for w in words)]
        lo = (page - 1) * per_page
        return names[lo:lo + per_page], len(names)

    def sample(self, n: int, seed: int | None = None) -> list[str]:
        rng = random.Random(seed)
        return rng.sample(self.index.names, min(n, len(self.index.names)))

    def check_tags(self, tags: Any) -> dict[str, str]:
        """Validated {attribute: value} chips from this dataset's vocabulary; BadInput otherwise."""
        if not self.vocabulary:
            raise BadInput(f"dataset {self.name!r} has no attributes to pick tags from; use mode 'text'")
        if isinstance(tags, str):  # query-string form: key:value,key:value
            pairs = [t.split(":", 1) for t in tags.split(",") if t.strip()]
            if any(len(p) != 2 for p in pairs):
                raise BadInput("tags in a query string are written attribute:value,attribute:value")
            tags = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(tags, dict) or not tags:
            raise BadInput(f"tags mode needs at least one tag, as an object {{attribute: value}} with "
                           f"attributes from {', '.join(self.vocabulary)}")
        out = {}
        for key, value in tags.items():
            if key not in self.vocabulary:
                raise BadInput(f"unknown tag attribute {str(key)[:40]!r}; valid: {', '.join(self.vocabulary)}")
            if not isinstance(value, str) or value not in self._vocab_sets[key]:
                raise BadInput(f"unknown {key} tag {str(value)[:40]!r} for dataset {self.name!r}")
            out[key] = value
        return out

    def describe(self) -> dict:
        s = self.spec
        return {"name": self.name, "label": s.label, "dataset": s.dataset, "split": s.split,
                "category": s.category, "count": len(self.index), "has_tags": bool(self.vocabulary),
                "has_groups": bool(self.groups)}


def _records_for(spec: DatasetSpec, data_root: str | None) -> tuple[list[data_utils.ImageRecord], Path]:
    """The dataset's image records, from an explicit data root, else the one recorded at extraction."""
    if spec.dataset == "folder":
        root = spec.data_root if spec.data_root else Path(data_root or ".")
        return data_utils.folder_images(root), root
    if data_root:
        root = data_utils.resolve_data_root(spec.dataset, data_root)
    elif spec.data_root and spec.data_root.is_dir():
        root = spec.data_root
    else:
        root = data_utils.resolve_data_root(spec.dataset, None)
    cats = [spec.category] if spec.category else None
    return data_utils.list_images(spec.dataset, root, spec.split, cats), root


def cirr_groups(root: Path, split: str | None) -> dict[str, tuple[str, ...]]:
    """CIRR img_set groups by member image (every member maps to its set); {} without caption files."""
    if split not in data_utils.CIRR_SPLITS:
        return {}
    try:
        triplets = data_utils.load_triplets("cirr", Path(root), split)
    except FileNotFoundError:
        return {}
    groups: dict[str, tuple[str, ...]] = {}
    for t in triplets:
        for name in (t.reference, *t.group):
            groups.setdefault(name, t.group)
    return groups


def load_dataset(spec: DatasetSpec, data_root: str | None = None, index_backend: str = "exact") -> Dataset:
    """A dataset with its index ranked by `index_backend`; an unreachable backend leaves it degraded."""
    index = open_backend_or_placeholder(load_index(spec.features), index_backend)
    records, root = _records_for(spec, data_root)
    groups = cirr_groups(root, spec.split) if spec.dataset == "cirr" else {}
    return Dataset(spec, index, records, groups)


def rank_group(query: torch.Tensor, ds: Dataset, reference: str | None) -> list[tuple[str, float]]:
    """CIRR's subset setting: the reference's img_set members (reference excluded), ranked by the query.

    The members' rows are ranked by index.search like everything else, restricted to them (`subset`).
    """
    members = list(dict.fromkeys(m for m in ds.groups.get(reference or "", ()) if m != reference))
    if not members:
        return []
    rows = [ds.index.id_of(m) for m in members]
    scores, ids = search(query, ds.index, len(rows), subset=rows)
    return [(ds.index.names[j], float(s)) for s, j in zip(scores[0].tolist(), ids[0].tolist())]


def stale_encoder_fields(manifest: dict, encoder) -> list[str]:
    """The fields of encoder.describe() that an index manifest records with another value: its features are
    not this encoder's (other heads, preprocessing or colour descriptor), so they must not be searched."""
    now = json.loads(json.dumps(encoder.describe(), default=str))  # tuples -> lists, as the manifest holds them
    return [k for k, v in now.items() if k in manifest and manifest[k] != v]


# ----------------------------------------------------------------------------------------------- uploads

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
        from preprocess import to_rgb
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


# ----------------------------------------------------------------------------------------------- the engine

@dataclass
class Settings:
    """What Engine.load needs (app.AppConfig fills it from flags and environment variables)."""

    features_root: Path
    upload_dir: Path
    encoder: str = "lite"
    device: str = "auto"
    data_root: str | None = None
    datasets_file: Path | None = None
    default_dataset: str | None = None
    combiners: Mapping[str, str] | None = None
    text_checkpoints: Mapping[str, str] | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    default_k: int = 24
    max_k: int = 200
    text_cache_size: int = 4096
    upload_cache_size: int = 256
    thumb_cache_size: int = 2048
    thumb_size: int = 256
    query_threads: int | None = 1
    encoder_obj: Any = None
    warm_up: bool = True
    index_backend: str = "exact"    # index.py backend spec for every dataset: exact, faiss[...], milvus[:URI]


@dataclass
class SearchRequest:
    mode: str
    dataset: str
    reference: str | None = None
    upload: str | None = None
    caption: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    k: int = 24
    combiner: str | None = None
    text_encoder: str | None = None


class Engine:
    """Everything the demo loaded at start-up, plus its caches, metrics and the lock around the models."""

    def __init__(self, settings: Settings, encoder, text_sides: dict[str, Any],
                 combiners: dict[str, tuple[Any, str]], datasets: dict[str, Dataset], default_dataset: str):
        self.settings = settings
        self.encoder = encoder
        self.text_sides = text_sides            # name -> encoder sharing the image side (base, stage1, ...)
        self.combiners = combiners              # name -> (Combiner, name of the text side it was trained with)
        self.datasets = datasets
        self.default_dataset = default_dataset
        # Tokenizers and ONNX sessions are not all safe to call from several threads at once, and two cores
        # gain nothing from overlapping model calls: one query encodes at a time.
        self.model_lock = threading.Lock()
        self.text_cache = LRU(settings.text_cache_size)
        self.thumbs = LRU(settings.thumb_cache_size)
        self.metrics = Metrics()
        self.uploads = UploadStore(settings.upload_dir, encoder, settings.max_upload_bytes,
                                   settings.max_image_pixels, settings.upload_cache_size, self.model_calls)

    @contextlib.contextmanager
    def model_calls(self):
        """Hold the model lock and run torch with `query_threads` intra-op threads meanwhile.

        A query encodes one sentence or one image: more threads add only synchronisation, and on a small,
        busy CPU the waiting dominates (measured on 2 shared cores: MiniLM on one caption 12 ms with one
        thread, 500 ms with two). The previous setting is restored afterwards.
        """
        with self.model_lock, self.query_threads():
            yield

    @contextlib.contextmanager
    def query_threads(self):
        """Run torch with `query_threads` intra-op threads meanwhile (the search too, not only the models).

        Under load, a server's parallelism comes from its workers: a multi-threaded matrix product in one
        worker leaves OpenMP threads spinning on the cores the other workers need (measured with gunicorn,
        2 workers, 16 clients: 66 queries/s with the search at 2 threads, 185 with 1).
        """
        n = self.settings.query_threads
        old = torch.get_num_threads()
        if n and n != old:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if n and n != old:
                torch.set_num_threads(old)

    # -- start-up

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        import encoders
        t0 = time.perf_counter()
        encoder = settings.encoder_obj or encoders.load(settings.encoder, settings.device)
        text_sides: dict[str, Any] = {"base": encoder}
        wanted_text = settings.text_checkpoints
        if wanted_text is None:  # default: the shipped stage-1 text encoder, when it has been trained
            stage1 = Path(encoders.resolve_text("stage1"))
            wanted_text = {"stage1": str(stage1)} if stage1.exists() else {}
        for name, path in wanted_text.items():
            try:
                text_sides[name] = encoder.with_text(encoders.resolve_text(path))
            except (FileNotFoundError, ValueError, NotImplementedError) as e:
                log.warning("text encoder %s unavailable: %s", name, e)

        parse_backend(settings.index_backend)   # a bad spec is the operator's error: fail now, not per dataset
        combiners = _load_combiners(settings, encoder, text_sides)
        specs = (read_datasets_file(settings.datasets_file, settings.features_root) if settings.datasets_file
                 else discover_datasets(settings.features_root))
        datasets: dict[str, Dataset] = {}
        for spec in specs:
            if not DATASET_NAME.match(spec.name):
                log.warning("skipping dataset %r: names are letters, digits, '.', '_' and '-'", spec.name)
                continue
            enc = spec.manifest.get("encoder")
            if enc not in (None, encoder.name) or spec.manifest.get("dim") not in (None, encoder.dim):
                log.info("skipping %s: extracted with encoder %s, the demo runs %s", spec.name, enc, encoder.name)
                continue
            stale = stale_encoder_fields(spec.manifest, encoder)
            if stale:
                log.warning("skipping %s: extracted with other %s weights or settings (%s); extract it again",
                            spec.name, encoder.name, ", ".join(stale))
                continue
            try:
                ds = load_dataset(spec, settings.data_root, settings.index_backend)
                if ds.index.raw_error:  # composed and sum queries would be mis-scaled: refuse, never guess
                    raise IndexLoadError(ds.index.raw_error)
                datasets[spec.name] = ds
            except (IndexLoadError, FileNotFoundError, ValueError) as e:
                log.warning("skipping dataset %s: %s", spec.name, e)
        if not datasets:
            where = settings.datasets_file or settings.features_root
            raise FileNotFoundError(
                f"no feature index for encoder {encoder.name!r} found in {where}; run `python3 app.py` (it "
                "extracts the catalogue first) or extract_features.py --dataset ... --out FEATURES")
        default = settings.default_dataset if settings.default_dataset in datasets else next(
            (n for n in ("catalog-all", *sorted(datasets)) if n in datasets and datasets[n].spec.dataset == "catalog"),
            next(iter(datasets)))
        if settings.default_dataset and settings.default_dataset not in datasets:
            log.warning("default dataset %r not found; using %s", settings.default_dataset, default)
        engine = cls(settings, encoder, text_sides, combiners, datasets, default)
        if settings.warm_up:
            engine.warm_up()
        log.info("demo ready in %.1f s: %d dataset(s) (%s), combiners: %s, text encoders: %s",
                 time.perf_counter() - t0, len(datasets), ", ".join(datasets), ", ".join(combiners) or "none",
                 ", ".join(text_sides))
        return engine

    def warm_up(self) -> None:
        """First calls are slow (lazy allocations, page faults on the mapped features): pay them at start-up.

        No float32 copy of an index is made: search() scans the memory-mapped float16 file.
        """
        with self.model_calls():
            for side in self.text_sides.values():
                q = side.encode_texts(["warm up"])
        for ds in self.datasets.values():
            with contextlib.suppress(BackendUnavailable):   # reported by health(); searches answer 503
                search(q, ds.index, 1)

    def health(self) -> dict[str, dict]:
        """Per dataset: its index backend and whether it can serve (a Milvus server may be down)."""
        return {name: ds.index.backend.health() for name, ds in self.datasets.items()}

    # -- what the page needs to know

    def models(self) -> dict:
        return {"combiners": [{"name": n, "text_encoder": t} for n, (_, t) in self.combiners.items()],
                "default_combiner": next(iter(self.combiners), None),
                "text_encoders": list(self.text_sides), "composed_available": bool(self.combiners),
                "encoder": self.encoder.name}

    def modes(self) -> list[dict]:
        return [{"name": m, "label": MODE_LABELS[m], "available": m != "composed" or bool(self.combiners),
                 "needs_reference": m in NEEDS_REFERENCE, "needs_caption": m in NEEDS_CAPTION} for m in MODES]

    def dataset(self, name: Any) -> Dataset:
        if not isinstance(name, str) or name not in self.datasets:
            raise NotFound(f"unknown dataset {str(name)[:80]!r}; available: {', '.join(self.datasets)}")
        return self.datasets[name]

    # -- queries

    def parse(self, params: Mapping[str, Any]) -> SearchRequest:
        """A search request from JSON or query-string parameters; BadInput / NotFound say what is wrong."""
        mode = params.get("mode") or ("composed" if self.combiners else "sum")
        if mode not in MODES:
            raise BadInput(f"unknown mode {str(mode)[:40]!r}; valid: {', '.join(MODES)}")
        ds = self.dataset(params.get("dataset") or self.default_dataset)
        req = SearchRequest(mode=mode, dataset=ds.name,
                            k=parse_int(params.get("k"), "k", 1, self.settings.max_k, self.settings.default_k))
        ref, upload = params.get("reference"), params.get("upload")
        if ref not in (None, "") and upload not in (None, ""):
            raise BadInput("give either a reference image or an upload id, not both")
        if mode in NEEDS_REFERENCE:
            if ref in (None, "") and upload in (None, ""):
                raise BadInput(f"mode {mode!r} needs a reference: a dataset image id or an upload id")
            if upload not in (None, ""):
                self.uploads.path(upload)
                req.upload = upload
            else:
                ds.row(ref)
                req.reference = ref
        if mode in NEEDS_CAPTION:
            req.caption = validate_text(params.get("caption"))
        if mode == "tags":
            req.tags = ds.check_tags(params.get("tags"))
            req.caption = tags_caption(req.tags)
        comb, text = params.get("combiner") or None, params.get("text_encoder") or None
        if comb is not None and comb not in self.combiners:
            raise BadInput(f"unknown combiner {str(comb)[:60]!r}; available: {', '.join(self.combiners) or 'none'}")
        if text is not None and text not in ("auto",) and text not in self.text_sides:
            raise BadInput(f"unknown text encoder {str(text)[:60]!r}; available: {', '.join(self.text_sides)}")
        if mode == "composed" and not self.combiners:
            raise BadInput("composed (Combiner) mode is unavailable: no Combiner checkpoint is loaded "
                           "(train one into weights/combiner.safetensors); use mode 'sum' meanwhile")
        req.combiner, req.text_encoder = comb, None if text == "auto" else text
        return req

    def run(self, req: SearchRequest) -> dict:
        """Answer a parsed request: ranked results, the CIRR group row, timings (ms)."""
        import model
        t0 = time.perf_counter()
        ds = self.dataset(req.dataset)
        method = MODES[req.mode]
        ref_feats, exclude = None, None
        if req.mode in NEEDS_REFERENCE:
            if req.upload:
                ref_feats = self.uploads.features(req.upload)
            else:
                row = ds.row(req.reference)
                ref_feats = ds.index.raw([row])
                exclude = [[row]]  # never return the reference as its own result
        combiner, comb_name, paired = None, None, "base"
        if method == "combiner":
            comb_name = req.combiner or next(iter(self.combiners))
            combiner, paired = self.combiners[comb_name]
        text_name = (req.text_encoder or paired) if method != "image" else None
        warning = None
        if method == "combiner" and req.text_encoder and req.text_encoder != paired:
            warning = (f"combiner {comb_name} was trained with the {paired} text encoder; "
                       f"results with {req.text_encoder} may be worse")
        texts = TimedTexts(self.text_sides[text_name or "base"], self.text_cache, text_name or "base")
        t1 = time.perf_counter()
        with self.model_calls():
            t_locked = time.perf_counter()
            query = model.compose(texts, ref_feats, [req.caption] if req.caption else None, method, combiner)
        t2 = time.perf_counter()
        try:
            with self.query_threads():
                scores, ids = search(query, ds.index, req.k, exclude=exclude)
                group = rank_group(query, ds, req.reference) if req.reference and ds.groups else None
        except BackendUnavailable as e:
            raise ServiceUnavailable(f"dataset {ds.name!r} cannot be searched right now: {e}") from None
        t3 = time.perf_counter()
        total = (t3 - t0) * 1000
        return {
            "mode": req.mode, "dataset": ds.name, "caption": req.caption if req.mode != "tags" else None,
            "query_text": req.caption if req.mode in ("text", "tags", "composed", "sum") else None,
            "tags": req.tags or None,
            "model": {"combiner": comb_name, "text_encoder": text_name},
            "results": [(ds.index.names[j], float(s)) for s, j in zip(scores[0].tolist(), ids[0].tolist())],
            "group": group,
            "timings": {"encode_text_ms": round(texts.ms, 3), "text_cached": texts.cached if text_name else None,
                        "fuse_ms": round(max(0.0, (t2 - t_locked) * 1000 - texts.ms), 3),
                        "wait_ms": round((t_locked - t1) * 1000, 3),
                        "search_ms": round((t3 - t2) * 1000, 3), "total_ms": round(total, 3)},
            "warning": warning,
        }

    # -- images

    def thumbnail(self, key: tuple, path: Path) -> bytes:
        """A JPEG at most thumb_size on its long side (small files are sent as they are), cached."""
        data = self.thumbs.get(key)
        if data is not None:
            return data
        size = self.settings.thumb_size
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            if im.format == "JPEG" and max(im.size) <= size:
                data = raw  # catalogue photos are 224 px JPEGs already
            else:
                from preprocess import to_rgb
                im = to_rgb(ImageOps.exif_transpose(im))
                im.thumbnail((size, size), Image.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
                data = buf.getvalue()
        self.thumbs.put(key, data)
        return data


def _load_combiners(settings: Settings, encoder, text_sides: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The Combiner checkpoints that exist, each paired with the text side it was trained with."""
    import encoders
    import model
    wanted = settings.combiners
    if wanted is None:  # default: the shipped checkpoints that have been trained
        wanted = {n: str(p) for n, p in model.SHIPPED_COMBINERS.items() if Path(p).exists()}
    out: dict[str, tuple[Any, str]] = {}
    for name, path in wanted.items():
        try:
            _, comb = model.load_method(str(path))
        except (FileNotFoundError, ValueError, OSError, RuntimeError) as e:
            log.warning("combiner %s unavailable: %s", name, e)
            continue
        if comb.cfg.feature_dim != encoder.dim or comb.cfg.encoder not in ("", encoder.name):
            log.warning("combiner %s was trained on %s features (dim %d), not %s (dim %d): skipped", name,
                        comb.cfg.encoder or "unknown", comb.cfg.feature_dim, encoder.name, encoder.dim)
            continue
        side = _text_side_for(comb.cfg.text_encoder, encoder, text_sides, encoders.resolve_text)
        if side is None:
            log.warning("combiner %s needs text encoder %s, which is not available: skipped", name,
                        comb.cfg.text_encoder)
            continue
        out[name] = (comb.eval(), side)
    return out


def _text_side_for(spec: str, encoder, text_sides: dict[str, Any], resolve: Callable[[str], str]) -> str | None:
    """Name of the loaded text side a Combiner was trained with, loading it if needed."""
    if not spec or spec == "base":
        return "base"
    path = resolve(spec)
    for name, side in text_sides.items():
        if getattr(side, "text_checkpoint", "base") not in ("base",) and \
                Path(side.text_checkpoint).resolve() == Path(path).resolve():
            return name
    if not Path(path).exists():
        return None
    name = "stage1" if Path(path).resolve() == Path(resolve("stage1")).resolve() else Path(path).stem
    try:
        text_sides[name] = encoder.with_text(path)
    except (FileNotFoundError, ValueError, NotImplementedError) as e:
        log.warning("text encoder %s unavailable: %s", path, e)
        return None
    return name
