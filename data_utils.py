"""Dataset loaders: image lists and (reference, caption, target) triplets.

Reads the on-disk layouts of the datasets the system works with and turns them into plain
records, validating every annotation entry so that a bad file fails early with a message
that names the file and the entry:

- ``catalog``:   a product catalogue, ``styles.csv`` + ``images/<id>.jpg``
- ``fashioniq``: FashionIQ, ``captions/cap.<category>.<split>.json``,
                 ``image_splits/split.<category>.<split>.json``, ``images/<asin>.(png|jpg)``
- ``cirr``:      CIRR rc2, ``cirr/captions/cap.rc2.<split>.json``,
                 ``cirr/image_splits/split.rc2.<split>.json`` (paths relative to the dataset folder)
- ``folder``:    any folder of images, searched recursively

Nothing here opens an image; :func:`check_images` only checks that the files exist.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

DATASETS = ("catalog", "fashioniq", "cirr", "folder")
DEFAULT_SUBDIRS = {"catalog": "fashion-catalog", "fashioniq": "fashionIQ_dataset", "cirr": "cirr_dataset"}
DATA_ROOT_ENV = "CIR_DATA_ROOT"

FASHIONIQ_SPLITS = ("train", "val", "test")
CIRR_SPLITS = ("train", "val", "test1")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# FashionIQ images come as .png in the official release but .jpg in some mirrors; prefer .png.
FASHIONIQ_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_LISTED = 10  # how many names an error message lists before summarising


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and the bad entry."""


class MissingImageError(FileNotFoundError):
    """Images referenced by a dataset are not on disk; the message lists them."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset: a unique name and where its file is.

    ``problem`` says why a listed file cannot be indexed ("" when it can): extraction skips it with that
    reason in the manifest instead of decoding it (e.g. a file name that is not UTF-8).
    """

    name: str
    path: Path
    attrs: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    problem: str = field(default="", compare=False, hash=False)


@dataclass(frozen=True)
class Triplet:
    """A composed query (reference image + captions) and its target image, if known."""

    reference: str
    captions: tuple[str, ...]
    target: str | None
    category: str | None = None
    pair_id: int | None = None
    group: tuple[str, ...] = ()
    target_soft: dict[str, float] | None = field(default=None, compare=False, hash=False)


# -----------------------------------------------------------------------------
# data root


def _descend(dataset: str, root: Path) -> Path:
    """Step into the dataset's default subfolder when ``root`` is its parent."""
    subdir = DEFAULT_SUBDIRS.get(dataset)
    if subdir and (root / subdir).is_dir():
        return root / subdir
    return root


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def resolve_data_root(dataset: str, data_root: str | os.PathLike | None = None) -> Path:
    """Find the folder of ``dataset``.

    Precedence: ``data_root`` argument > env ``CIR_DATA_ROOT`` > ``<repo>/../shared/data``.
    If the chosen folder contains ``DEFAULT_SUBDIRS[dataset]`` the result is that subfolder,
    so both ``.../data`` and ``.../data/fashion-catalog`` work.
    """
    _check_dataset(dataset)
    if data_root is not None and str(data_root) != "":
        root, source = Path(data_root), "--data-root"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    else:
        root, source = Path(__file__).resolve().parent.parent / "shared" / "data", "the default"
    root = root.expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"data root {root} (from {source}) {what}; pass --data-root or set {DATA_ROOT_ENV} "
            f"to the folder holding the {dataset} data"
        )
    return _descend(dataset, root).resolve()


# -----------------------------------------------------------------------------
# json helpers and validation


def _available_files(path: Path) -> str:
    """Describe the sibling files that share ``path``'s prefix (e.g. all ``cap.*.json``)."""
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist"
    prefix = path.name.split(".")[0]
    found = sorted(p.name for p in path.parent.glob(f"{prefix}.*{path.suffix}"))
    return f"available in {path.parent}: {', '.join(found) if found else 'none'}"


def load_json(path: Path) -> Any:
    """Read a JSON file, failing with the path (and line/column) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {_available_files(path)}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _type_name(value: Any) -> str:
    return type(value).__name__


def _bad(path: Path, index: int, problem: str) -> AnnotationError:
    return AnnotationError(f"{path}: entry {index}: {problem}")


def _expect_list(path: Path, data: Any, what: str) -> list:
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of {what}, got {_type_name(data)}")
    return data


def _get_str(path: Path, index: int, entry: dict, key: str, required: bool = True) -> str | None:
    if key not in entry:
        if required:
            raise _bad(path, index, f"missing key {key!r}")
        return None
    value = entry[key]
    if not isinstance(value, str):
        raise _bad(path, index, f"{key!r} must be a string, got {_type_name(value)}")
    return value


def _get_str_list(path: Path, index: int, entry: dict, key: str) -> list[str]:
    if key not in entry:
        raise _bad(path, index, f"missing key {key!r}")
    value = entry[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        got = _type_name(value) if not isinstance(value, list) else "a list with non-strings"
        raise _bad(path, index, f"{key!r} must be a list of strings, got {got}")
    if not value:
        raise _bad(path, index, f"{key!r} must not be empty")
    return value


def _expect_entry(path: Path, index: int, entry: Any) -> dict:
    if not isinstance(entry, dict):
        raise _bad(path, index, f"expected an object, got {_type_name(entry)}")
    return entry


def _check_split(dataset: str, split: str | None, valid: Sequence[str]) -> str:
    if split not in valid:
        raise ValueError(f"unknown {dataset} split {split!r}; choose one of {', '.join(valid)}")
    return split


# -----------------------------------------------------------------------------
# catalogue

# Pattern words of product names, checked in this order: the few names matching several ("Printed Stripe
# Shirts", "Stripes Solid Sweaters", "Stripe Look Checks Shirts") get the first, the most specific pattern.
PATTERN_WORDS = (
    ("Striped", ("striped", "stripe", "stripes")),
    ("Checked", ("check", "checked", "checks")),
    ("Printed", ("printed", "print", "prints", "graphic", "floral", "polka")),
    ("Solid", ("solid", "plain")),
)
PATTERNS = tuple(p for p, _ in PATTERN_WORDS)
_PATTERN_RES = tuple((p, re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)) for p, words in PATTERN_WORDS)


def pattern_of(name: str) -> str:
    """The pattern a product name states (whole words, any case): Striped, Checked, Printed, Solid, or ""
    when it names none. Priority when several match: Striped > Checked > Printed > Solid."""
    for pattern, regex in _PATTERN_RES:
        if regex.search(name or ""):
            return pattern
    return ""


def catalog_images(root: Path, split: str | None = None) -> list[ImageRecord]:
    """Images of the catalogue, optionally one split; ``attrs`` holds the other csv columns.

    Without a ``pattern`` column, ``attrs["pattern"]`` is derived from the product name (:func:`pattern_of`).
    """
    path = Path(root) / "styles.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected the catalogue's styles.csv in {root}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "split") if c not in header]
        if missing:
            raise AnnotationError(f"{path}: header lacks column(s) {', '.join(missing)}; got {header}")
        rows = []
        for row in reader:
            # DictReader puts extra fields under None and fills short rows with None.
            if None in row or None in row.values():
                raise AnnotationError(f"{path}: line {reader.line_num}: expected {len(header)} fields")
            if not row["id"].strip():
                raise AnnotationError(f"{path}: line {reader.line_num}: empty id")
            rows.append(row)

    splits = list(dict.fromkeys(r["split"] for r in rows))
    if split not in (None, "all"):
        _check_split("catalog", split, splits + ["all"])
        rows = [r for r in rows if r["split"] == split]

    records, seen = [], set()
    derive_pattern = "pattern" not in header
    for row in rows:
        name = row["id"].strip()
        if name in seen:
            raise AnnotationError(f"{path}: duplicate id {name}")
        seen.add(name)
        attrs = {k: v for k, v in row.items() if k != "id"}
        if derive_pattern:
            attrs["pattern"] = pattern_of(attrs.get("productDisplayName", ""))
        records.append(ImageRecord(name, Path(root) / "images" / f"{name}.jpg", attrs))
    logger.info("catalog %s: %d images", split or "all", len(records))
    return records


# -----------------------------------------------------------------------------
# FashionIQ


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
    _check_split("fashioniq", split, FASHIONIQ_SPLITS)
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
    _check_split("fashioniq", split, FASHIONIQ_SPLITS)
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


# -----------------------------------------------------------------------------
# CIRR


def cirr_file(root: Path, kind: str, split: str) -> Path:
    """Path of a CIRR rc2 annotation file: kind "captions" (cap.rc2.<split>.json) or "splits"."""
    folder, prefix = {"captions": ("captions", "cap"), "splits": ("image_splits", "split")}[kind]
    return Path(root) / "cirr" / folder / f"{prefix}.rc2.{split}.json"


def cirr_images(root: Path, split: str) -> list[ImageRecord]:
    """Images of a CIRR split, in the split file's order."""
    _check_split("cirr", split, CIRR_SPLITS)
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
    _check_split("cirr", split, CIRR_SPLITS)
    path = cirr_file(root, "captions", split)
    entries = _expect_list(path, load_json(path), "caption entries")
    triplets = [_cirr_triplet(path, i, entry, split) for i, entry in enumerate(entries)]
    logger.info("cirr %s: %d triplets", split, len(triplets))
    return triplets


# -----------------------------------------------------------------------------
# any folder


def folder_images(root: Path) -> list[ImageRecord]:
    """Every image under ``root`` (recursive), named by its relative posix path, sorted.

    Hidden files and folders are skipped: macOS leaves ``._name.jpg`` files that are not images. A file
    whose relative path is not valid UTF-8 is listed under a ``\\xNN``-escaped name with a ``problem``
    (names are stored as JSON text and served by the API), so extraction lists it as skipped. Anything that
    is not a directory is listed: extraction only opens regular files and skips the rest (FIFOs, devices)
    with the reason, a symlink to a regular file is an image like any other.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / filename
                records.append(_folder_record(path.relative_to(root).as_posix(), path))
    records.sort(key=lambda r: r.name)
    if not records:
        logger.warning("no images (%s) found under %s", ", ".join(IMAGE_EXTENSIONS), root)
    logger.info("folder %s: %d images", root, len(records))
    return records


# -----------------------------------------------------------------------------
# dispatchers and checks


def _folder_record(name: str, path: Path) -> ImageRecord:
    """The record of a listed file; a name that is not UTF-8 (os.walk keeps such bytes as surrogates) is
    escaped and flagged, since it cannot be written to names.json or sent to a browser as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        logger.warning("%s: file name is not valid UTF-8; it will not be indexed", shown)
        return ImageRecord(shown, path, problem="file name is not valid UTF-8; rename it to index it")
    return ImageRecord(name, path)


def list_images(
    dataset: str, root: Path, split: str | None = None, categories: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Images to index for ``dataset``; ``root`` may be the dataset folder or its parent."""
    _check_dataset(dataset)
    if categories is not None and dataset != "fashioniq":
        raise ValueError(f"categories only apply to fashioniq, not {dataset}")
    root = _descend(dataset, Path(root))
    if dataset == "catalog":
        return catalog_images(root, split)
    if dataset == "fashioniq":
        return fashioniq_images(root, _check_split("fashioniq", split, FASHIONIQ_SPLITS), categories)
    if dataset == "cirr":
        return cirr_images(root, _check_split("cirr", split, CIRR_SPLITS))
    if split is not None:
        logger.warning("folder dataset has no splits; ignoring split=%r", split)
    return folder_images(root)


def load_triplets(
    dataset: str, root: Path, split: str, categories: Sequence[str] | None = None
) -> list[Triplet]:
    """Annotated triplets of ``dataset`` (fashioniq or cirr); ``root`` as in :func:`list_images`."""
    _check_dataset(dataset)
    if dataset in ("catalog", "folder"):
        raise ValueError(
            f"{dataset} has no annotation files to load triplets from; triplets are read for "
            "fashioniq and cirr (catalogue triplets are generated by their own module)"
        )
    if categories is not None and dataset != "fashioniq":
        raise ValueError(f"categories only apply to fashioniq, not {dataset}")
    root = _descend(dataset, Path(root))
    if dataset == "fashioniq":
        return fashioniq_triplets(root, split, categories)
    return cirr_triplets(root, split)


def check_images(records: Sequence[ImageRecord]) -> None:
    """Raise :class:`MissingImageError` if any record's file is absent."""
    missing = [r for r in records if not r.path.is_file()]
    if not missing:
        return
    names = ", ".join(r.name for r in missing[:MAX_LISTED])
    more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    raise MissingImageError(
        f"{len(missing)} of {len(records)} images not found: {names}{more} "
        f"(first expected at {missing[0].path})"
    )
