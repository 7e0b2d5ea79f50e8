"""The annotated relative captions of a demo dataset, by reference: what the original demo offers to pick.

FashionIQ and CIRR read theirs from the dataset's real annotation files (cir.data.load_triplets); the
catalogue's are the generated triplets of its split (triplets.generate with evaluate.py's defaults: seed 0,
500 per kind, all phrasings, over the split's images that have features, in the catalogue's order), so
the demo offers exactly the queries evaluate.py scores. Each caption carries its annotated target when that
image is in the dataset's index (FashionIQ and CIRR test splits have none).

Loading is lazy and happens once per dataset (generating the catalogue's takes 2-3 s on 2 cores; the
server's start-up does not wait for it); concurrent first requests share one load.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cir.catalog.triplets import generate
from cir.data import CIRR_SPLITS, FASHIONIQ_SPLITS, ImageRecord, cirr_file, fashioniq_categories, load_triplets
from cir.data.common import dataset_folder
from cir.data.fashioniq import fiq_caption
from cir.serving.errors import ServiceUnavailable

log = logging.getLogger("annotations")

# evaluate.py's catalogue protocol: --triplet-seed 0, --per-kind 500, --phrasings all
CATALOG_SEED, CATALOG_PER_KIND, CATALOG_PHRASINGS = 0, 500, "all"


@dataclass(frozen=True)
class Annotation:
    """One annotated query of a reference: the text searched, as annotated, and its target."""

    reference: str
    caption: str                    # the text the search encodes (FashionIQ: both captions joined, as evaluated)
    captions: tuple[str, ...]       # the caption(s) as the annotation holds them
    target: str | None              # the annotated target, None when unknown or not in the index
    kind: str | None = None         # catalogue: the triplet kind; FashionIQ: the category; CIRR: None

    def describe(self) -> dict:
        return {"caption": self.caption, "captions": list(self.captions), "target": self.target,
                "kind": self.kind}


Loader = Callable[[], list[Annotation]]


class Annotations:
    """One dataset's annotations by reference, loaded on first use (once, thread-safe).

    `available` says whether the dataset has any to offer (annotation files found, or a catalogue); a load
    that fails (a malformed file) is logged and answered as ServiceUnavailable, never as "no captions".
    """

    def __init__(self, loader: Loader | None, what: str):
        self.available = loader is not None
        self._loader, self._what = loader, what
        self._lock = threading.Lock()
        self._by_ref: dict[str, list[Annotation]] | None = None
        self._error: str | None = None

    def _load(self) -> dict[str, list[Annotation]]:
        with self._lock:
            if self._by_ref is None and self._error is None and self._loader is not None:
                try:
                    by_ref: dict[str, list[Annotation]] = {}
                    for a in self._loader():
                        by_ref.setdefault(a.reference, []).append(a)
                    self._by_ref = by_ref
                    log.info("%s: %d annotated captions of %d references", self._what,
                             sum(map(len, by_ref.values())), len(by_ref))
                except (OSError, ValueError) as e:   # cir.data.AnnotationError is a ValueError
                    log.warning("%s: annotations cannot be loaded: %s", self._what, e)
                    self._error = str(e)
        if self._error:
            # a broken file stays broken until an operator fixes it: no Retry-After
            raise ServiceUnavailable(f"the annotations of {self._what} cannot be read: {self._error}",
                                     retry_after_s=0)
        return self._by_ref or {}

    def of(self, reference: str) -> list[Annotation]:
        """The annotated captions of `reference` (in the annotation's order); [] when it has none."""
        return list(self._load().get(reference, ())) if self.available else []

    def count(self) -> int:
        """How many annotated captions the dataset has (loads them)."""
        return sum(map(len, self._load().values())) if self.available else 0


def _keep_target(target: str | None, names: set[str]) -> str | None:
    return target if target in names else None


def _catalog_loader(records: Sequence[ImageRecord], names: set[str]) -> Loader:
    usable = [r for r in records if r.name in names]   # as evaluate.py: the split's images with features

    def load() -> list[Annotation]:
        trips = generate(usable, seed=CATALOG_SEED, per_kind=CATALOG_PER_KIND, phrasings=CATALOG_PHRASINGS)
        return [Annotation(t.reference, t.caption, (t.caption,), _keep_target(t.target, names), t.kind)
                for t in trips]
    return load


def _fashioniq_loader(root: Path, split: str, category: str | None, names: set[str]) -> Loader:
    def load() -> list[Annotation]:
        trips = load_triplets("fashioniq", root, split, [category] if category else None)
        return [Annotation(t.reference, fiq_caption(t.captions), t.captions, _keep_target(t.target, names),
                           t.category) for t in trips if t.reference in names and fiq_caption(t.captions)]
    return load


def _cirr_loader(root: Path, split: str, names: set[str]) -> Loader:
    def load() -> list[Annotation]:
        trips = load_triplets("cirr", root, split)
        return [Annotation(t.reference, t.captions[0], t.captions, _keep_target(t.target, names))
                for t in trips if t.reference in names and t.captions[0]]
    return load


def _fashioniq_has_captions(root: Path, split: str, category: str | None) -> bool:
    folder = dataset_folder("fashioniq", Path(root)) / "captions"
    cats = [category] if category else fashioniq_categories(folder.parent)
    return any((folder / f"cap.{c}.{split}.json").is_file() for c in cats)


def annotations_for(dataset: str, split: str | None, category: str | None, root: Path,
                    records: Sequence[ImageRecord], names: Sequence[str], what: str) -> Annotations:
    """The (lazily loaded) annotations of a dataset of kind `dataset` whose index holds `names`; `records`
    are its image records in the dataset's own order (the catalogue's triplets depend on it)."""
    in_index = set(names)
    loader: Loader | None = None
    if dataset == "catalog":
        loader = _catalog_loader(records, in_index)
    elif dataset == "fashioniq" and split in FASHIONIQ_SPLITS and \
            _fashioniq_has_captions(root, split, category):
        loader = _fashioniq_loader(root, split, category, in_index)
    elif dataset == "cirr" and split in CIRR_SPLITS and \
            cirr_file(dataset_folder("cirr", Path(root)), "captions", split).is_file():
        loader = _cirr_loader(root, split, in_index)
    return Annotations(loader, what)
