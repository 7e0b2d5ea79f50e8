"""What counts as a correct result of a catalogue triplet: one rule, in one place.

A condition is `wanted` (attribute -> value, or a tuple of values meaning "any of these") and `unwanted`
(attribute -> values a result must not have). `satisfies` decides for one item; `ConditionMasks` decides the
same for a whole gallery at once, vectorised over per-attribute code arrays and cached per condition, for
evaluation (attr@K, ceilings) and training (every match a positive). A missing attribute reads as "".
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

Wanted = Mapping[str, "str | tuple[str, ...]"]
Unwanted = Mapping[str, "tuple[str, ...]"]
ConditionKey = tuple  # (((attr, value or sorted values), ...), ((attr, sorted values), ...))


def satisfies(attrs: Mapping[str, str], wanted: Wanted, unwanted: Unwanted | None = None) -> bool:
    """Whether an item with `attrs` has every wanted attribute (one of a tuple's values) and no unwanted one."""
    for key, want in wanted.items():
        value = attrs.get(key, "")
        if value not in want if isinstance(want, tuple) else value != want:
            return False
    return not any(attrs.get(key, "") in bad for key, bad in (unwanted or {}).items())


def make_key(wanted: Wanted, unwanted: Unwanted | None = None) -> ConditionKey:
    """The canonical, hashable form of a condition: equal conditions give equal keys (("Men",) == "Men")."""
    want = []
    for key, value in sorted(wanted.items()):
        if isinstance(value, tuple):
            values = tuple(sorted(set(value)))
            value = values[0] if len(values) == 1 else values
        want.append((key, value))
    bad = tuple((key, tuple(sorted(set(v)))) for key, v in sorted((unwanted or {}).items()) if v)
    return tuple(want), bad


def condition_key(triplet: Any) -> ConditionKey:
    """make_key of a triplet's wanted and unwanted attributes: what caches of masks are keyed by."""
    return make_key(triplet.wanted, getattr(triplet, "unwanted", None))


def from_key(key: ConditionKey) -> tuple[dict, dict]:
    """(wanted, unwanted) dicts back from a condition key."""
    want, bad = key
    return dict(want), dict(bad)


class ConditionMasks:
    """Boolean masks [N] of which of N items satisfy a condition, computed once per condition (LRU-kept).

    Agrees with `satisfies` item by item; each attribute becomes an int code array the first time it is used.
    """

    def __init__(self, attrs: Sequence[Mapping[str, str]], max_cached: int = 4096):
        self._attrs = attrs
        self._columns: dict[str, tuple[dict[str, int], np.ndarray]] = {}
        self._cache: OrderedDict[ConditionKey, np.ndarray] = OrderedDict()
        self._max = max_cached

    def __len__(self) -> int:
        return len(self._attrs)

    def _column(self, key: str) -> tuple[dict[str, int], np.ndarray]:
        if key not in self._columns:
            vocab: dict[str, int] = {}
            codes = np.fromiter((vocab.setdefault(a.get(key, ""), len(vocab)) for a in self._attrs),
                                dtype=np.int32, count=len(self._attrs))
            self._columns[key] = vocab, codes
        return self._columns[key]

    def _isin(self, key: str, values: tuple[str, ...]) -> np.ndarray:
        vocab, codes = self._column(key)
        wanted = [vocab[v] for v in values if v in vocab]  # a value nobody has matches nothing
        if len(wanted) == 1:  # the usual case, and much faster than isin
            return codes == wanted[0]
        return np.isin(codes, wanted) if wanted else np.zeros(len(codes), dtype=bool)

    def mask(self, key: ConditionKey) -> np.ndarray:
        """Which items satisfy the condition `key` (make_key / condition_key). Read-only: it is shared."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        want, bad = key
        out = np.ones(len(self._attrs), dtype=bool)
        for attr, value in want:
            out &= self._isin(attr, value if isinstance(value, tuple) else (value,))
        for attr, values in bad:
            out &= ~self._isin(attr, values)
        out.setflags(write=False)
        self._cache[key] = out
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return out

    def rows(self, key: ConditionKey) -> np.ndarray:
        """Indices of the items satisfying `key`, ascending."""
        return np.flatnonzero(self.mask(key))

    def stack(self, keys: Sequence[ConditionKey]) -> np.ndarray:
        """Masks of several conditions as one [len(keys), N] bool array."""
        if not keys:
            return np.zeros((0, len(self._attrs)), dtype=bool)
        return np.stack([self.mask(k) for k in keys])
