"""What every dataset layout shares: image records, triplets, the errors a bad file raises, where
the data root is, and the validation of annotation files (every entry checked, the file and the entry named
in the message). Nothing here opens an image; :func:`check_images` only checks that files exist."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cir.paths import DEFAULT_DATA_ROOT

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


def dataset_folder(dataset: str, root: Path) -> Path:
    """Step into the dataset's default subfolder when ``root`` is its parent."""
    subdir = DEFAULT_SUBDIRS.get(dataset)
    if subdir and (root / subdir).is_dir():
        return root / subdir
    return root


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def resolve_data_root(dataset: str, data_root: str | os.PathLike | None = None) -> Path:
    """Find the folder of ``dataset``.

    Precedence: ``data_root`` argument > env ``CIR_DATA_ROOT`` > ``<repo>/../shared/data``.
    If the chosen folder contains ``DEFAULT_SUBDIRS[dataset]`` the result is that subfolder,
    so both ``.../data`` and ``.../data/fashion-catalog`` work.
    """
    check_dataset(dataset)
    if data_root is not None and str(data_root) != "":
        root, source = Path(data_root), "--data-root"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    else:
        root, source = DEFAULT_DATA_ROOT, "the default"
    root = root.expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"data root {root} (from {source}) {what}; pass --data-root or set {DATA_ROOT_ENV} "
            f"to the folder holding the {dataset} data"
        )
    return dataset_folder(dataset, root).resolve()


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


def check_split(dataset: str, split: str | None, valid: Sequence[str]) -> str:
    if split not in valid:
        raise ValueError(f"unknown {dataset} split {split!r}; choose one of {', '.join(valid)}")
    return split


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
