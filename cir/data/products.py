"""The product catalogue layout: ``styles.csv`` + ``images/<id>.jpg``, one record per product with the
other csv columns as attributes, and the pattern a product name states."""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from cir.data.common import AnnotationError, ImageRecord, check_split

logger = logging.getLogger(__name__)


# What styles.csv holds where an attribute is unknown: such a value is never a tag, a condition, a label or a phrase.
MISSING_VALUES = ("", "NA")


def known(value: str | None) -> bool:
    """Whether a catalogue attribute value says something (not missing, not "NA")."""
    return value is not None and value not in MISSING_VALUES


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
        check_split("catalog", split, splits + ["all"])
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
