"""The demo's datasets: where their features and images are (manifests or a datasets file), one loaded
dataset's index, records, tag vocabulary and CIRR groups, and loading them all with the ones that fail kept
as DamagedDataset (reported by /api/health, never dropped silently)."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from cir.catalog.descriptions import GENDER_PHRASES, PLURAL_ONLY, article_phrase, colour_phrase, usage_phrase, with_a
from cir.data import (
    CIRR_SPLITS,
    DATASETS,
    MISSING_VALUES,
    ImageRecord,
    folder_images,
    known,
    list_images,
    load_triplets,
    resolve_data_root,
)
from cir.encoders import IMAGE_SIDE_KEY, Encoder
from cir.index import (
    Facets,
    FeatureIndex,
    IndexLoadError,
    Metadata,
    load_index,
    open_backend_or_placeholder,
    rank_subset,
)
from cir.serving.annotations import Annotations, annotations_for
from cir.serving.errors import BadInput, NotFound

log = logging.getLogger("datasets")

TAG_KEYS = ("gender", "articleType", "baseColour", "usage")   # the chips offered in tags mode
# a UUID, a hex digest or a long run of digits: file names no shopper wants to read as a title
_MACHINE_NAME = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[0-9_-]{9,}")
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # dataset names appear in URLs


def tags_caption(tags: Mapping[str, str]) -> str:
    """Chosen attribute values -> the phrase a shopper would type: 'a red casual t-shirt for men'."""
    art = tags.get("articleType", "")
    noun = " ".join(w for w in (colour_phrase(tags.get("baseColour", "")), usage_phrase(tags.get("usage", "")),
                                article_phrase(art) if art else "item") if w)
    phrase = noun if art in PLURAL_ONLY else with_a(noun)
    gender = GENDER_PHRASES.get(tags.get("gender", ""), ("", ""))[0]
    return f"{phrase} for {gender}" if gender else phrase


@dataclass
class DatasetSource:
    """Where one searchable dataset's features and images are (from a manifest or the datasets file)."""

    name: str                       # id used in the API and URLs (the index folder name by default)
    features: Path                  # the index folder written by extract_features.py
    dataset: str                    # layout: catalog, fashioniq, cirr or folder
    split: str | None = None        # split the index was built from (None for folders)
    category: str | None = None     # FashionIQ category, if any
    data_root: Path | None = None   # image folder recorded at extraction (or given in the datasets file)
    label: str = ""                 # human-readable name for the dataset picker
    manifest: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DamagedDataset:
    """A dataset that was found but cannot be served: /api/health lists it, the start-up error names it."""

    name: str                       # the name it would be served under (its folder's name by default)
    folder: Path                    # its feature folder
    reason: str                     # why it cannot be loaded, for the operator

    def describe(self) -> dict:
        return {"status": "degraded", "folder": str(self.folder), "reason": self.reason}


def _source_from_manifest(folder: Path, manifest: dict, **overrides: Any) -> DatasetSource:
    root = overrides.get("data_root") or manifest.get("data_root")
    source = DatasetSource(name=overrides.get("name") or folder.name, features=folder,
                       dataset=overrides.get("dataset") or manifest.get("dataset", ""),
                       split=overrides.get("split", manifest.get("split")),
                       category=overrides.get("category", manifest.get("category")),
                       data_root=Path(root).expanduser() if root else None, label=overrides.get("label", ""),
                       manifest=manifest)
    if not source.label:
        what = {"catalog": "Catalogue", "fashioniq": "FashionIQ", "cirr": "CIRR", "folder": "Folder"}.get(
            source.dataset, source.dataset)
        parts = [p for p in (source.category, source.split) if p]
        if source.dataset == "folder" and source.data_root:
            parts = [source.data_root.name]
        source.label = f"{what} ({', '.join(parts)})" if parts else what
    return source


def discover_datasets(features_root: Path) -> tuple[list[DatasetSource], list[DamagedDataset]]:
    """Every index folder directly under `features_root` that has a manifest: the usable ones, and those
    whose manifest cannot be read (a symlink loop, a dangling link, not a regular file, not JSON) or names no
    known dataset."""
    sources: list[DatasetSource] = []
    damaged: list[DamagedDataset] = []
    if not features_root.is_dir():
        return sources, damaged
    for folder in sorted(p for p in features_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        mf = folder / "manifest.json"
        if not os.path.lexists(mf):   # no manifest at all: not an index folder
            continue
        try:
            # stat first: a symlink loop or a dangling link fails here, and a FIFO is never opened (it would block)
            if not stat.S_ISREG(os.stat(mf).st_mode):
                raise ValueError("not a regular file")
            manifest = json.loads(mf.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:   # json.JSONDecodeError is a ValueError
            damaged.append(DamagedDataset(folder.name, folder, f"unreadable manifest.json ({e})"))
            continue
        if manifest.get("dataset") not in DATASETS:
            damaged.append(DamagedDataset(folder.name, folder, "its manifest names no known dataset (extract it "
                                          "again with extract_features.py to record one)"))
            continue
        sources.append(_source_from_manifest(folder, manifest))
    return sources, damaged


def dataset_sources(features_root: Path, datasets_file: Path | None = None
                    ) -> tuple[list[DatasetSource], list[DamagedDataset]]:
    """The datasets a server is given: those listed in `datasets_file` when set, else every index folder
    found under `features_root` (with the damaged ones found there)."""
    if datasets_file:
        return read_datasets_file(Path(datasets_file), Path(features_root)), []
    return discover_datasets(Path(features_root))


def read_datasets_file(path: Path, features_root: Path) -> list[DatasetSource]:
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
    sources = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("features"), str):
            raise ValueError(f"datasets file {path}: entry {i} needs a \"features\" folder (string)")
        folder = Path(e["features"]).expanduser()
        if not folder.is_absolute():
            folder = next((c for c in (Path(path).parent / folder, features_root / folder) if c.is_dir()),
                          Path(path).parent / folder)
        manifest = _manifest_or_empty(folder / "manifest.json")  # a bad one: load_all reports the folder
        if e.get("data_root") and not Path(e["data_root"]).expanduser().is_absolute():
            e = {**e, "data_root": str(Path(path).parent / e["data_root"])}
        sources.append(_source_from_manifest(folder, manifest, **{k: v for k, v in e.items() if k != "features"}))
    return sources


def _manifest_or_empty(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


class Dataset:
    """One searchable dataset: its feature index, image records, tag vocabulary, CIRR groups, annotated
    captions (serving.annotations: none unless given) and metadata (cir.index.metadata: the words of its
    product names and attributes, for the metadata path of search; empty, a no-op, without attributes)."""

    def __init__(self, source: DatasetSource, index: FeatureIndex, records: Iterable[ImageRecord],
                 groups: Mapping[str, Sequence[str]] | None = None, annotations: Annotations | None = None):
        self.source, self.name, self.index = source, source.name, index
        self.annotations = annotations or Annotations(None, f"dataset {source.name!r}")
        by_name = {r.name: r for r in records}
        # Only what is in the index can be a reference or a result.
        self.records = {n: by_name[n] for n in index.names if n in by_name}
        self.groups = {n: tuple(m for m in g if m in index) for n, g in (groups or {}).items() if n in index}
        self.metadata = Metadata.from_records(self.records.values(), index.names)
        # the rows of each tag value: /api/search's `filters` (cir.index.facets); empty without attributes
        self.facets = Facets.from_records(self.records.values(), index.names, TAG_KEYS)
        self.vocabulary: dict[str, list[tuple[str, int]]] = {}
        for key in TAG_KEYS:
            counts = Counter(r.attrs.get(key, "") for r in self.records.values())
            for v in MISSING_VALUES:   # never offered as tags
                counts.pop(v, None)
            if counts:
                self.vocabulary[key] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._vocab_sets = {k: {v for v, _ in vals} for k, vals in self.vocabulary.items()}
        # Per image, the words of its id and attribute values for the browse filter, each after a space, so
        # that " men" finds the word "men" and words starting with it, never the "men" inside "women".
        self._haystack = [" " + " ".join(_words(" ".join([n, *(self.records[n].attrs.values()
                                                                  if n in self.records else [])])))
                          for n in index.names]

    def row(self, name: Any) -> int:
        """Index row of an image id; NotFound for anything else."""
        if not isinstance(name, str) or name not in self.index:
            raise NotFound(f"image {str(name)[:80]!r} is not in dataset {self.name!r}")
        return self.index.id_of(name)

    def record(self, name: str) -> ImageRecord:
        self.row(name)
        rec = self.records.get(name)
        if rec is None:
            raise NotFound(f"image {name!r} of dataset {self.name!r} has no image file listed")
        return rec

    def info(self, name: str) -> dict:
        """What the page shows of an image: id, title and attributes (URLs are added by the web layer)."""
        rec = self.records.get(name)
        attrs = rec.attrs if rec else {}
        title = attrs.get("productDisplayName") or self._plain_title(name)
        return {"id": name, "title": title, "attrs": {k: attrs[k] for k in ("gender", "articleType", "baseColour",
                                                                           "usage", "season", "year")
                                                      if known(attrs.get(k))}}

    def _plain_title(self, name: str) -> str:
        """A folder image's title: its file stem, unless that is a machine name (a UUID, a hash, digits and
        dashes only), which says nothing to a shopper: then "Photo N", N its place in the dataset."""
        stem = Path(name).stem
        return f"Photo {self.index.id_of(name) + 1}" if _MACHINE_NAME.fullmatch(stem) else stem

    def browse(self, q: str = "", page: int = 1, per_page: int = 24) -> tuple[list[str], int]:
        """Image ids of one page of the (filtered) index, and how many match in all."""
        names = self.index.names
        words = [" " + w for w in _words(q)]
        if words:   # every word of the filter starts a word of the image's text ("men" is not in "women")
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
        s = self.source
        return {"name": self.name, "label": s.label, "dataset": s.dataset, "split": s.split,
                "category": s.category, "count": len(self.index), "has_tags": bool(self.vocabulary),
                "has_groups": bool(self.groups), "has_captions": self.annotations.available,
                "has_metadata": bool(self.metadata)}


def _words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of a text."""
    return re.findall(r"\w+", text.lower())


def records_for(source: DatasetSource, data_root: str | None) -> tuple[list[ImageRecord], Path]:
    """The dataset's image records and their root: an explicit data root, else the one recorded at extraction
    (what the server loads, and what app.py extracts again)."""
    if source.dataset == "folder":
        root = source.data_root if source.data_root else Path(data_root or ".")
        return folder_images(root), root
    if data_root:
        root = resolve_data_root(source.dataset, data_root)
    elif source.data_root and source.data_root.is_dir():
        root = source.data_root
    else:
        root = resolve_data_root(source.dataset, None)
    cats = [source.category] if source.category else None
    return list_images(source.dataset, root, source.split, cats), root


def cirr_groups(root: Path, split: str | None) -> dict[str, tuple[str, ...]]:
    """CIRR img_set groups by member image (every member maps to its set); {} without caption files."""
    if split not in CIRR_SPLITS:
        return {}
    try:
        triplets = load_triplets("cirr", Path(root), split)
    except FileNotFoundError:
        return {}
    groups: dict[str, tuple[str, ...]] = {}
    for t in triplets:
        for name in (t.reference, *t.group):
            groups.setdefault(name, t.group)
    return groups


def load_dataset(source: DatasetSource, data_root: str | None = None, index_backend: str = "exact",
                 in_memory_max_bytes: int = 0) -> Dataset:
    """A dataset with its index ranked by `index_backend`; an unreachable backend leaves it degraded. Its
    features are read into memory up to `in_memory_max_bytes` (index.load_index), else memory-mapped."""
    index = open_backend_or_placeholder(load_index(source.features, in_memory_max_bytes=in_memory_max_bytes),
                                        index_backend)
    records, root = records_for(source, data_root)
    groups = cirr_groups(root, source.split) if source.dataset == "cirr" else {}
    annotations = annotations_for(source.dataset, source.split, source.category, root, records, index.names,
                                  f"dataset {source.name!r}")
    return Dataset(source, index, records, groups, annotations)


def load_all(sources: Iterable[DatasetSource], encoder: Encoder, data_root: str | None = None,
             index_backend: str = "exact", in_memory_max_bytes: int = 0
             ) -> tuple[dict[str, Dataset], list[DamagedDataset]]:
    """Every source this encoder can serve, loaded; those that fail are returned as DamagedDataset.

    Indexes of another encoder are skipped quietly (a features root may hold several encoders' indexes); one
    of this encoder's that cannot be loaded (corrupt or truncated files, other weights, a missing images root)
    is damaged: the operator has to know, so it is reported, never dropped silently.
    """
    datasets: dict[str, Dataset] = {}
    damaged: list[DamagedDataset] = []
    for source in sources:
        if not of_encoder(source, encoder):
            log.info("skipping %s: extracted with encoder %s, the demo runs %s", source.name,
                     source.manifest.get("encoder"), encoder.name)
            continue
        try:
            datasets[source.name] = _load_checked(source, encoder, data_root, index_backend, in_memory_max_bytes)
        except (OSError, ValueError) as e:   # IndexLoadError is a ValueError; FileNotFoundError an OSError
            log.warning("skipping %s: %s", source.name, e)
            damaged.append(DamagedDataset(source.name, source.features, str(e)))
    return datasets, damaged


def of_encoder(source: DatasetSource, encoder: Encoder) -> bool:
    """Whether `source` was extracted with this encoder (name and dimension; a manifest without them: assumed
    so): a features root may hold several encoders' indexes, and a server only loads its own."""
    return (source.manifest.get("encoder") in (None, encoder.name)
            and source.manifest.get("dim") in (None, encoder.dim))


def _load_checked(source: DatasetSource, encoder: Encoder, data_root: str | None, index_backend: str,
                  in_memory_max_bytes: int) -> Dataset:
    if not DATASET_NAME.match(source.name):
        raise ValueError(f"invalid dataset name {source.name!r}: names are letters, digits, '.', '_' and '-'")
    stale = stale_encoder_fields(source.manifest, encoder)
    if IMAGE_SIDE_KEY in stale:
        raise ValueError(image_side_mismatch(source.manifest, encoder))
    if stale:
        raise ValueError(f"extracted with other {encoder.name} weights or settings ({', '.join(stale)}); "
                         "extract it again")
    if "decode" not in source.manifest:
        log.warning("%s was extracted before images were read as displayed (EXIF orientation, sRGB): extract it "
                    "again if its photos carry an orientation tag", source.features)
    ds = load_dataset(source, data_root, index_backend, in_memory_max_bytes)
    if ds.index.raw_error:  # composed and sum queries would be mis-scaled: refuse, never guess
        raise IndexLoadError(ds.index.raw_error)
    return ds


def rank_group(query: torch.Tensor, ds: Dataset, reference: str | None) -> list[tuple[str, float]]:
    """CIRR's subset setting: the reference's img_set members (reference excluded), ranked by the query
    (index.rank_subset, as evaluation ranks them)."""
    return rank_subset(query, ds.index, [m for m in ds.groups.get(reference or "", ()) if m != reference])


def stale_encoder_fields(manifest: dict, encoder: Encoder) -> list[str]:
    """The fields of encoder.describe() that an index manifest records with another value: its features are
    not this encoder's (other heads, preprocessing or colour descriptor), so they must not be searched."""
    now = json.loads(json.dumps(encoder.describe(), default=str))  # tuples -> lists, as the manifest holds them
    stale = [k for k, v in now.items() if k in manifest and manifest[k] != v]
    # A fine-tuned image side is recorded only where there is one: a manifest without it is the backend's own.
    if manifest.get(IMAGE_SIDE_KEY) != now.get(IMAGE_SIDE_KEY) and IMAGE_SIDE_KEY not in stale:
        stale.append(IMAGE_SIDE_KEY)
    return stale


def image_side_mismatch(manifest: dict, encoder: Encoder) -> str:
    """Why an index of another image tower is refused, and what to do."""
    had = manifest.get(IMAGE_SIDE_KEY) or "the backend's own"
    now = encoder.describe().get(IMAGE_SIDE_KEY) or "the backend's own"
    side = getattr(encoder, "text_side", None)
    return (f"extracted with another image tower (image side {had}; the {encoder.name} encoder runs {now}"
            f"{f', from stage-1 checkpoint {side.record}' if side is not None and side.path else ''}): extract it "
            "again with this encoder (extract_features.py --stage1 CHECKPOINT for a fine-tuned image side)")
