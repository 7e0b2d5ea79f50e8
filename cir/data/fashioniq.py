"""FashionIQ: ``captions/cap.<category>.<split>.json``, ``image_splits/split.<category>.<split>.json``,
``images/<asin>.(png|jpg)``: its images, triplets and categories."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Sequence

from cir.data.common import (
    FASHIONIQ_EXTENSIONS,
    FASHIONIQ_SPLITS,
    ImageRecord,
    Triplet,
    _bad,
    _expect_entry,
    _expect_list,
    _get_str,
    _get_str_list,
    _type_name,
    check_split,
    load_json,
)

logger = logging.getLogger(__name__)


def _fashioniq_file(root: Path, kind: str, category: str, split: str) -> Path:
    folder, prefix = {"captions": ("captions", "cap"), "splits": ("image_splits", "split")}[kind]
    return Path(root) / folder / f"{prefix}.{category}.{split}.json"


def fashioniq_categories(root: Path) -> list[str]:
    """Categories found in the caption and image-split file names, sorted."""
    found = set()
    for folder, prefix in (("captions", "cap."), ("image_splits", "split.")):
        for p in (Path(root) / folder).glob(f"{prefix}*.json"):
            # cap.<category>.<split>.json; rsplit so a category may itself contain dots
            category, _, split = p.name[len(prefix) : -len(".json")].rpartition(".")
            if category and split in FASHIONIQ_SPLITS:
                found.add(category)
    return sorted(found)


def _fashioniq_category_list(root: Path, categories: Sequence[str] | None) -> list[str]:
    if categories is None:
        categories = fashioniq_categories(root)
        if not categories:
            raise FileNotFoundError(
                f"no FashionIQ annotation files (captions/cap.<category>.<split>.json or "
                f"image_splits/split.<category>.<split>.json) under {root}"
            )
    elif isinstance(categories, str):  # a bare string would otherwise iterate by character
        categories = [categories]
    return list(categories)


def _fashioniq_image_files(root: Path) -> dict[str, Path]:
    """Map asin -> image file, listing the folder once instead of probing each name."""
    folder = Path(root) / "images"
    if not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(FASHIONIQ_EXTENSIONS)}
    best: dict[str, Path] = {}
    for entry in os.scandir(folder):
        p = Path(entry.path)
        ext = p.suffix.lower()
        if ext in rank and (p.stem not in best or rank[ext] < rank[best[p.stem].suffix.lower()]):
            best[p.stem] = p
    return best


def fashioniq_images(root: Path, split: str, categories: Sequence[str] | None = None) -> list[ImageRecord]:
    """Images of a split: the union of the categories' split files, first occurrence kept."""
    check_split("fashioniq", split, FASHIONIQ_SPLITS)
    files = _fashioniq_image_files(root)
    records: dict[str, ImageRecord] = {}
    for category in _fashioniq_category_list(root, categories):
        path = _fashioniq_file(root, "splits", category, split)
        names = _expect_list(path, load_json(path), "image names")
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise _bad(path, i, f"image name must be a string, got {_type_name(name)}")
            if name not in records:
                # An absent image gets the .png path so check_images can report it.
                image = files.get(name, Path(root) / "images" / f"{name}.png")
                records[name] = ImageRecord(name, image)
    logger.info("fashioniq %s: %d images", split, len(records))
    return list(records.values())


def fashioniq_triplets(root: Path, split: str, categories: Sequence[str] | None = None) -> list[Triplet]:
    """Triplets of a split, categories in the given (or sorted) order; target None on test."""
    check_split("fashioniq", split, FASHIONIQ_SPLITS)
    triplets = []
    for category in _fashioniq_category_list(root, categories):
        path = _fashioniq_file(root, "captions", category, split)
        for i, entry in enumerate(_expect_list(path, load_json(path), "caption entries")):
            entry = _expect_entry(path, i, entry)
            reference = _get_str(path, i, entry, "candidate")
            captions = _get_str_list(path, i, entry, "captions")
            # Test files have no targets; keep one if a (re-annotated) test file does.
            target = _get_str(path, i, entry, "target", required=split != "test")
            captions = tuple(c.strip() for c in captions)  # the raw files have stray spaces
            triplets.append(Triplet(reference, captions, target, category=category))
    logger.info("fashioniq %s: %d triplets", split, len(triplets))
    return triplets


# ----------------------------------------------------------------------------------------------- captions
# How an annotation's two relative captions become one text, as CLIP4Cir does: the one place for both the
# evaluation's fixed join and training's four random views.

def _cleaned(captions: Sequence[str]) -> list[str]:
    """The captions with text, each stripped of spaces and of '.?, ' at its ends."""
    cleaned = [c.strip().strip(".?, ") for c in captions]
    return [c for c in cleaned if c]


def fiq_caption(captions: Sequence[str], literal: bool = False) -> str:
    """FashionIQ's two relative captions as one query text, as CLIP4Cir's evaluation joins them.

    "<first, cleaned and capitalised> and <second, cleaned>", cleaning = strip('.?, '). The real files
    hold a few entries with one empty caption: the other one (cleaned) is used alone rather than
    " and <...>", and "" is returned when none has any text. `literal` joins them exactly as the original
    does whatever they hold ("Red and ", " and "): `--empty-captions encode`.
    """
    if literal and len(captions) >= 2:
        return f"{captions[0].strip('.?, ').capitalize()} and {captions[1].strip('.?, ')}"
    cleaned = _cleaned(captions)
    if len(cleaned) >= 2:
        return f"{cleaned[0].capitalize()} and {cleaned[1]}"
    return cleaned[0] if cleaned else ""


def randomized_fiq_caption(captions: Sequence[str], rng: random.Random) -> str:
    """One of CLIP4Cir's four training views of FashionIQ's two captions, equally likely: "c1 and c2",
    "c2 and c1", "c1", "c2" (each cleaned as fiq_caption cleans, the first letter capitalised). A triplet
    with one empty caption uses the other."""
    c = _cleaned(captions)
    r = rng.random()   # drawn whatever the captions, so an epoch's draws do not depend on empty ones
    if len(c) < 2:
        return c[0].capitalize() if c else ""
    a, b = c[:2]
    if r < 0.25:
        return f"{a.capitalize()} and {b}"
    if r < 0.5:
        return f"{b.capitalize()} and {a}"
    return a.capitalize() if r < 0.75 else b.capitalize()


def fashioniq_image_records(root: Path, names: Sequence[str]) -> list[ImageRecord]:
    """Records for FashionIQ images by name (images/<name>.png|.jpg|.jpeg, as cir.data looks them up)."""
    folder = Path(root) / "images"
    records = []
    for n in dict.fromkeys(names):
        found = [folder / f"{n}{ext}" for ext in FASHIONIQ_EXTENSIONS if (folder / f"{n}{ext}").is_file()]
        records.append(ImageRecord(n, found[0] if found else folder / f"{n}.png"))
    return records
