"""Real photos of clothes (`real-photos/`: worn, on hangers, on beds), and what each photo class means in the
catalogue: the one place that decides which catalogue article types a photo of a class may be matched with.

Layout: `images/<name>.jpg` and `labels.csv` (image, label, split). Only the class is labelled; the
catalogue has no twin for some classes, so each class accepts the article types that honestly are that
garment there (the catalogue has no blazers; "outwear" is its jackets and sweatshirts; a "longsleeve" is a
long-sleeved t-shirt, top, sweatshirt or sweater there).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from cir.data.common import DATA_ROOT_ENV, AnnotationError, ImageRecord, check_split
from cir.paths import DEFAULT_DATA_ROOT

PHOTO_SPLITS = ("train", "val", "test")
PHOTOS_SUBDIR = "real-photos"


@dataclass(frozen=True)
class PhotoClass:
    """A real-photos class as the catalogue knows it."""
    noun: str                       # how a shopper types it ("red t-shirt", "a jacket")
    types: tuple[str, ...]          # catalogue articleTypes a photo of this class may be matched with


PHOTO_CLASSES: dict[str, PhotoClass] = {
    "t-shirt": PhotoClass("t-shirt", ("Tshirts",)),
    "longsleeve": PhotoClass("long-sleeve top", ("Tshirts", "Tops", "Sweatshirts", "Sweaters")),
    "pants": PhotoClass("trousers", ("Trousers", "Jeans", "Track Pants", "Lounge Pants")),
    "shirt": PhotoClass("shirt", ("Shirts",)),
    "shoes": PhotoClass("shoes", ("Casual Shoes", "Sports Shoes", "Formal Shoes", "Heels", "Flats")),
    "dress": PhotoClass("dress", ("Dresses",)),
    "shorts": PhotoClass("shorts", ("Shorts", "Lounge Shorts")),
    "outwear": PhotoClass("jacket", ("Jackets", "Sweatshirts")),
    "hat": PhotoClass("cap", ("Caps", "Hat")),
    "skirt": PhotoClass("skirt", ("Skirts",)),
}


def photo_class(label: str) -> PhotoClass:
    """The catalogue meaning of a photo class; ValueError listing the known ones."""
    if label not in PHOTO_CLASSES:
        raise ValueError(f"unknown photo class {label!r}; known: {', '.join(PHOTO_CLASSES)}")
    return PHOTO_CLASSES[label]


def photo_images(root: Path, split: str | None = None) -> list[ImageRecord]:
    """The photos of `split` (all when None), each with attrs {"label": class}; root is `real-photos/`."""
    if split is not None:
        check_split("real-photos", split, PHOTO_SPLITS)
    labels = Path(root) / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: give the real-photos folder (with labels.csv and images/)")
    out = []
    with open(labels, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            name, label, part = (row.get(k, "") or "" for k in ("image", "label", "split"))
            if not name or label not in PHOTO_CLASSES or part not in PHOTO_SPLITS:
                raise AnnotationError(f"{labels}:{line}: expected image, a known label and a split "
                                      f"({', '.join(PHOTO_SPLITS)}); got {dict(row)}")
            if split is None or part == split:
                out.append(ImageRecord(name, Path(root) / "images" / f"{name}.jpg", {"label": label}))
    return out


def photos_root(data_root: str | os.PathLike | None = None) -> Path:
    """The real-photos folder: `data_root` (or $CIR_DATA_ROOT, or ../shared/data), its `real-photos/`, or
    the `real-photos/` beside it (data_root being the catalogue's folder)."""
    base = Path(data_root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser()
    # The folder itself, the data root holding it, or (a catalogue folder given) its sibling.
    found = [d for d in (base, base / PHOTOS_SUBDIR, base.parent / PHOTOS_SUBDIR) if (d / "labels.csv").is_file()]
    if not found:
        raise FileNotFoundError(f"no real-photos folder at {base} (expected labels.csv there or in "
                                f"{PHOTOS_SUBDIR}/); pass --data-root or set {DATA_ROOT_ENV}")
    return found[0]
