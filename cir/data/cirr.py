"""CIRR rc2: ``cirr/captions/cap.rc2.<split>.json`` and ``cirr/image_splits/split.rc2.<split>.json``
(image paths relative to the dataset folder): its images and triplets with their img_set groups."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cir.data.common import (
    CIRR_SPLITS,
    AnnotationError,
    ImageRecord,
    Triplet,
    _bad,
    _expect_entry,
    _expect_list,
    _get_str,
    _type_name,
    check_split,
    load_json,
)

logger = logging.getLogger(__name__)


def cirr_file(root: Path, kind: str, split: str) -> Path:
    """Path of a CIRR rc2 annotation file: kind "captions" (cap.rc2.<split>.json) or "splits"."""
    folder, prefix = {"captions": ("captions", "cap"), "splits": ("image_splits", "split")}[kind]
    return Path(root) / "cirr" / folder / f"{prefix}.rc2.{split}.json"


def cirr_images(root: Path, split: str) -> list[ImageRecord]:
    """Images of a CIRR split, in the split file's order."""
    check_split("cirr", split, CIRR_SPLITS)
    path = cirr_file(root, "splits", split)
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected an object mapping name -> path, got {_type_name(data)}")
    records = []
    for i, (name, rel) in enumerate(data.items()):
        if not isinstance(rel, str):
            raise _bad(path, i, f"path of {name!r} must be a string, got {_type_name(rel)}")
        records.append(ImageRecord(name, Path(root) / rel))  # pathlib drops the leading "./"
    logger.info("cirr %s: %d images", split, len(records))
    return records


def _cirr_triplet(path: Path, i: int, entry: Any, split: str) -> Triplet:
    entry = _expect_entry(path, i, entry)
    if "pairid" not in entry:
        raise _bad(path, i, "missing key 'pairid'")
    pair_id = entry["pairid"]
    if not isinstance(pair_id, int) or isinstance(pair_id, bool):
        raise _bad(path, i, f"'pairid' must be an integer, got {_type_name(pair_id)}")
    reference = _get_str(path, i, entry, "reference")
    caption = _get_str(path, i, entry, "caption")
    target = _get_str(path, i, entry, "target_hard", required=split != "test1")

    if "img_set" not in entry:
        raise _bad(path, i, "missing key 'img_set'")
    img_set = entry["img_set"]
    if not isinstance(img_set, dict):
        raise _bad(path, i, f"'img_set' must be an object, got {_type_name(img_set)}")
    members = img_set.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise _bad(path, i, "'img_set.members' must be a list of strings")

    soft = entry.get("target_soft")
    if soft is not None:
        if not isinstance(soft, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in soft.values()
        ):
            raise _bad(path, i, "'target_soft' must map image names to numbers")
        soft = {k: float(v) for k, v in soft.items()}
    return Triplet(
        reference, (caption.strip(),), target, pair_id=pair_id, group=tuple(members), target_soft=soft
    )


def cirr_triplets(root: Path, split: str) -> list[Triplet]:
    """Triplets of a CIRR split; target None on test1."""
    check_split("cirr", split, CIRR_SPLITS)
    path = cirr_file(root, "captions", split)
    entries = _expect_list(path, load_json(path), "caption entries")
    triplets = [_cirr_triplet(path, i, entry, split) for i, entry in enumerate(entries)]
    logger.info("cirr %s: %d triplets", split, len(triplets))
    return triplets
