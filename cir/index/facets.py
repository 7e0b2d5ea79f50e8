"""Facet filters: a dataset's attribute values as row sets, and {"gender": ["Women"], "baseColour": ["Red",
"Maroon"]} as the boolean row mask index.search(..., filters=) restricts every backend to.

    facets = Facets.from_records(records, index.names, ("gender", "articleType", "baseColour", "usage"))
    keep = facets.select({"gender": ["Women"], "baseColour": ["Red", "Maroon"]})   # AND across, OR within
    scores, ids = search(query, index, k, filters=keep)

An unknown attribute or value raises FilterError naming it (the API answers 400 with the message). The
words of the values also say which attribute a caption's word names (`attributes_of`): the session ranking
(cir.index.session) keeps an earlier turn's word unless the new caption names the same attribute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cir.data.products import known
from cir.data.words import name_words

from .metadata import word_keys

FACET_KEYS = ("gender", "articleType", "baseColour", "usage")
# The attributes whose value words a caption may name (pattern: derived from the product name on load).
WORD_KEYS = ("gender", "articleType", "subCategory", "baseColour", "usage", "pattern")
MAX_VALUES = 100          # values of one attribute in one filter


class FilterError(ValueError):
    """A filter naming an attribute or a value the dataset does not have, or malformed."""


@dataclass(frozen=True)
class RowFilter:
    """The rows a filter keeps: a boolean mask over the index rows, and the filter it came from."""

    mask: np.ndarray
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.mask.sum())


class Facets:
    """Per attribute, per value, the sorted rows having it; and which attributes each value word names."""

    def __init__(self, values: Mapping[str, Mapping[str, np.ndarray]], n: int,
                 word_attrs: Mapping[str, frozenset[str]] | None = None):
        self.values = {a: dict(v) for a, v in values.items()}
        self.n = n
        self.word_attrs = dict(word_attrs or {})

    @classmethod
    def from_records(cls, records: Iterable, names: Sequence[str] | None = None,
                     keys: Sequence[str] = FACET_KEYS) -> "Facets":
        """From ImageRecords (with .attrs), in row order or mapped to rows by `names` (an index's names);
        unknown values ("NA", "") are no facet value."""
        records = list(records)
        if names is None:
            rows_attrs = [r.attrs for r in records]
        else:
            by_name = {r.name: r.attrs for r in records}
            rows_attrs = [by_name.get(nm, {}) or {} for nm in names]
        lists: dict[str, dict[str, list[int]]] = {a: {} for a in keys}
        words: dict[str, set[str]] = {}
        for row, attrs in enumerate(rows_attrs):
            for a in set(keys) | set(WORD_KEYS):
                value = attrs.get(a, "")
                if not known(value):
                    continue
                if a in lists:
                    lists[a].setdefault(value, []).append(row)
                if a in WORD_KEYS:
                    for tok in name_words(value).values():
                        for key in word_keys(tok):
                            words.setdefault(key, set()).add(a)
        values = {a: {v: np.asarray(r, dtype=np.int64) for v, r in vs.items()} for a, vs in lists.items() if vs}
        return cls(values, len(rows_attrs), {k: frozenset(v) for k, v in words.items()})

    def __bool__(self) -> bool:
        return bool(self.values)

    @property
    def vocabulary(self) -> dict[str, list[str]]:
        return {a: sorted(v) for a, v in self.values.items()}

    def attributes_of(self, token: str) -> frozenset[str]:
        """The attributes whose values hold this caption word (normalised token), e.g. "red" -> baseColour."""
        out: set[str] = set()
        for key in word_keys(token):
            out |= self.word_attrs.get(key, frozenset())
        return frozenset(out)

    def parse(self, filters: Any) -> dict[str, tuple[str, ...]]:
        """A filter as {attribute: [values]} (a single value string is one value) checked against the
        vocabulary; FilterError names every unknown attribute and value."""
        if filters is None:
            return {}
        if not isinstance(filters, Mapping):
            raise FilterError('filters must be an object {attribute: [values]}, e.g. {"gender": ["Women"]}')
        out: dict[str, tuple[str, ...]] = {}
        unknown: list[str] = []
        for attr, vals in filters.items():
            if not isinstance(attr, str) or attr not in self.values:
                unknown.append(f"attribute {str(attr)[:40]!r}")
                continue
            vals = [vals] if isinstance(vals, str) else vals
            if not isinstance(vals, (list, tuple)) or not vals or len(vals) > MAX_VALUES:
                raise FilterError(f"filters.{attr} must be a list of 1 to {MAX_VALUES} values")
            bad = [v for v in vals if not isinstance(v, str) or v not in self.values[attr]]
            unknown += [f"{attr} value {str(v)[:40]!r}" for v in bad]
            out[attr] = tuple(dict.fromkeys(vals))
        if unknown:
            valid = ", ".join(self.values) or "none (this dataset has no attributes)"
            raise FilterError(f"unknown filter {'; '.join(unknown[:10])} (attributes: {valid}; values as "
                              "GET /api/datasets/<name> lists them in its vocabulary)")
        return out

    def select(self, filters: Any) -> RowFilter | None:
        """The rows keeping every attribute's filter (AND across attributes, OR within one); None when the
        filter is empty (no restriction)."""
        parsed = self.parse(filters)
        if not parsed:
            return None
        mask = np.ones(self.n, dtype=bool)
        for attr, vals in parsed.items():
            keep = np.zeros(self.n, dtype=bool)
            for v in vals:
                keep[self.values[attr][v]] = True
            mask &= keep
        return RowFilter(mask, parsed)
