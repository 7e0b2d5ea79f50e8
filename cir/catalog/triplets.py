"""Composed-retrieval triplets generated from the catalogue's attributes: no annotators needed.

A triplet is (reference, relative caption, target) plus its condition: the *wanted* attributes (a tuple value
means "any of these") and the *unwanted* ones (a result must have none of them), so every catalogue item
satisfying it counts as correct (attribute-match@K), not only the one target. `satisfies` (conditions.py)
is the one rule deciding that, for evaluation, ceilings, training positives and benchmarks alike. Kinds:
  same_product_colour  the same product in another colour (names equal but for the colour word)
  colour               another colour, same gender, type and usage
  type                 another type of the same family (topwear, shoes, ...), colour, gender and usage kept
  usage                another usage (casual/formal/sports/ethnic), same gender, type and colour
  gender               men <-> women, boys <-> girls, adult <-> kid: same type and colour (usage may differ)
  pattern              striped / checked / printed / plain instead (cir.data.pattern_of): same type, gender
  matching             an item of another category in the reference's colour ("shoes to match")
  negation             not the reference's colour, usage or pattern, the rest of "the same item" kept
  same_but_different   another item of the same type, gender and colour ("show me more like this")
  a+b                  two changes at once (colour+type, colour+usage, colour+gender, ...): each change
                       keeps what both keep, the caption joins the two single-change phrasings
Generation is deterministic from a seed and works within one split's records only, so splits never mix;
a candidate is kept only when items other than the reference satisfy its condition. Captions come from
phrasings.py. The first six kinds draw exactly what they drew before the other kinds existed.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from cir.catalog import phrasings as ph
from cir.catalog.conditions import (  # noqa: F401 (public here)
    ConditionMasks,
    condition_key,
    from_key,
    make_key,
    satisfies,
)
from cir.data import PATTERNS, known

WANTED_KEYS = ("gender", "articleType", "baseColour", "usage")
CONDITION_KEYS = WANTED_KEYS + ("pattern", "subCategory")   # every attribute a condition may name
LEGACY_KINDS = ("same_product_colour", "colour", "type", "usage", "colour+type", "colour+usage")
KINDS = LEGACY_KINDS + ("gender", "pattern", "matching", "negation", "same_but_different",
                        "colour+gender", "colour+pattern", "type+usage", "gender+usage", "gender+type",
                        "pattern+gender", "pattern+type", "pattern+usage")
PHRASINGS = ph.PHRASINGS

CHANGED = {"colour": "baseColour", "type": "articleType", "usage": "usage", "gender": "gender", "pattern": "pattern"}
# What stays the reference's when only this changes: "the same item" is type, gender, colour and usage,
# but a gender's version may be for another usage, and a pattern change rarely keeps the colour.
KEPT = {"colour": WANTED_KEYS, "type": WANTED_KEYS, "usage": WANTED_KEYS,
        "gender": ("gender", "articleType", "baseColour"), "pattern": ("gender", "articleType", "pattern")}
GENDER_SWAPS = {"Men": ("Women", "Boys"), "Women": ("Men", "Girls"), "Boys": ("Girls", "Men"),
                "Girls": ("Boys", "Women")}

# matching: caption noun, whether it is plural (no article), and the category condition.
MATCH_TARGETS: dict[str, tuple[str, bool, dict]] = {
    "shoes": ("shoes", True, {"subCategory": "Shoes"}), "bag": ("bag", False, {"subCategory": "Bags"}),
    "watch": ("watch", False, {"subCategory": "Watches"}), "belt": ("belt", False, {"subCategory": "Belts"}),
    "cap": ("cap", False, {"articleType": ("Caps", "Hat")}), "wallet": ("wallet", False, {"subCategory": "Wallets"}),
    "bottoms": ("bottoms", True, {"subCategory": "Bottomwear"}),
    "sandals": ("sandals", True, {"subCategory": "Sandal"}),
    "flip flops": ("flip flops", True, {"subCategory": "Flip Flops"}),
    "socks": ("socks", True, {"subCategory": "Socks"}),
    "top": ("top", False, {"subCategory": "Topwear"}), "shirt": ("shirt", False, {"articleType": "Shirts"}),
    "t-shirt": ("t-shirt", False, {"articleType": "Tshirts"}),
}
_TOPWEAR = ("shoes", "bag", "watch", "belt", "cap", "wallet", "bottoms", "sandals", "flip flops")
_BOTTOMWEAR = ("shoes", "belt", "top", "shirt", "t-shirt", "sandals", "flip flops")
_FOOTWEAR = ("bag", "belt", "socks", "top", "t-shirt", "bottoms", "wallet", "watch")
_ACCESSORY = ("top", "shirt", "t-shirt", "shoes", "belt", "bag", "wallet")
MATCH_FROM: dict[str, tuple[str, ...]] = {  # reference subCategory -> what may be asked to match it
    "Topwear": _TOPWEAR, "Dress": _TOPWEAR, "Bottomwear": _BOTTOMWEAR,
    "Shoes": _FOOTWEAR, "Sandal": _FOOTWEAR, "Flip Flops": _FOOTWEAR,
    "Bags": _ACCESSORY, "Watches": _ACCESSORY, "Belts": _ACCESSORY, "Wallets": _ACCESSORY, "Headwear": _ACCESSORY,
}
# negation: what stays the reference's. Usage is kept where pools stay large (colour, pattern: median pool
# ~20 on a 1k split either way); not for usage negation, whose pools would shrink to ~2 if colour were kept.
NEGATION_KEEP = {"baseColour": ("gender", "articleType", "usage"), "usage": ("gender", "articleType"),
                 "pattern": ("gender", "articleType", "usage")}
NEGATED_USAGES = ("Casual", "Formal", "Sports", "Ethnic")  # "not so travel" does not read


@dataclass(frozen=True)
class CatalogTriplet:
    reference: str
    caption: str
    target: str
    kind: str
    wanted: dict[str, str | tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)
    unwanted: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)


def wanted_keys(change: Sequence[str]) -> tuple[str, ...]:
    """The attributes a change kind's condition names: what every change keeps, plus what changes."""
    kept = set(CONDITION_KEYS)
    for c in change:
        kept &= set(KEPT[c])
    return tuple(k for k in CONDITION_KEYS if k in kept or k in {CHANGED[c] for c in change})


class _Catalog:
    """One split's usable records (colour and usage known), indexed for drawing triplets."""

    def __init__(self, records: Sequence):
        items = sorted(records, key=lambda r: r.name)
        self.records = [r for r in items if known(r.attrs.get("baseColour")) and known(r.attrs.get("usage"))]
        self.names = [r.name for r in self.records]
        self.attrs = [{k: r.attrs.get(k, "") for k in CONDITION_KEYS} for r in self.records]
        self.masks = ConditionMasks(self.attrs)
        self.values = {k: sorted({a[k] for a in self.attrs}) for k in WANTED_KEYS}
        self.family_types: dict[str, set[str]] = defaultdict(set)  # subCategory -> its article types
        for a in self.attrs:
            self.family_types[a["subCategory"]].add(a["articleType"])
        self._options: dict[tuple, dict[tuple, list[tuple]]] = {}
        self._allowed: dict[tuple, list[tuple]] = {}
        self._exact: dict[tuple, dict[tuple, np.ndarray]] = {}

    def refs(self, rng: random.Random) -> list[int]:
        rows = list(range(len(self.names)))
        rng.shuffle(rows)
        return rows

    def pool(self, wanted: Mapping, unwanted: Mapping | None = None, ref: int | None = None) -> np.ndarray:
        """Rows satisfying the condition (ascending), the reference left out."""
        if unwanted or any(isinstance(v, tuple) for v in wanted.values()):
            rows = self.masks.rows(make_key(wanted, unwanted))
        else:  # plain equalities (most draws, many one-off): a dict lookup instead of a mask per condition
            keys = tuple(sorted(wanted))
            if keys not in self._exact:
                found: dict[tuple, list[int]] = defaultdict(list)
                for row, a in enumerate(self.attrs):
                    found[tuple(a[k] for k in keys)].append(row)
                self._exact[keys] = {k: np.array(v) for k, v in found.items()}
            rows = self._exact[keys].get(tuple(wanted[k] for k in keys), np.zeros(0, dtype=int))
        return rows if ref is None else rows[rows != ref]

    def options(self, fixed: tuple[str, ...], changed: tuple[str, ...], values: tuple) -> list[tuple]:
        """The distinct values of `changed` among items whose `fixed` attributes equal `values`, sorted."""
        if (fixed, changed) not in self._options:
            found: dict[tuple, set] = defaultdict(set)
            for a in self.attrs:
                found[tuple(a[k] for k in fixed)].add(tuple(a[k] for k in changed))
            self._options[(fixed, changed)] = {k: sorted(v) for k, v in found.items()}
        return self._options[(fixed, changed)].get(values, [])

    def changes(self, fixed: tuple[str, ...], changed: tuple[str, ...], ref: Mapping[str, str]) -> list[tuple]:
        """The values of `changed` other items with the reference's `fixed` attributes have, each an allowed
        change (`allowed`) of the reference; sorted."""
        values = tuple(ref[k] for k in fixed)
        # What is allowed depends only on the reference's old values and family: filter once per such reference.
        memo = (fixed, changed, values, tuple(ref[a] for a in changed), ref["subCategory"])
        if memo not in self._allowed:
            self._allowed[memo] = [o for o in self.options(fixed, changed, values)
                                   if all(self.allowed(a, ref, v) for a, v in zip(changed, o))]
        return self._allowed[memo]

    def allowed(self, attr: str, ref: Mapping[str, str], value: str) -> bool:
        """Whether `value` of `attr` is a change of the reference a shopper could ask for."""
        old = ref[attr]
        if attr == "articleType":
            return value != old and value in self.family_types[ref["subCategory"]]
        if attr == "gender":
            return value in GENDER_SWAPS.get(old, ())
        if attr == "pattern":
            return old != "" and value not in ("", old)
        return value != old and known(value)


# ----------------------------------------------------------------------------------------------- change kinds

def _draws(cat: _Catalog, rng: random.Random, cands: list, per_kind: int) -> Iterator[int]:
    """References in a shuffled order until `cands` holds 3 x per_kind candidates (the kind then keeps a random
    per_kind of them)."""
    for ref in cat.refs(rng):
        if len(cands) >= per_kind * 3:
            return
        yield ref


def _propose_any(cat: _Catalog, rng: random.Random, ref: Mapping[str, str], attrs: Sequence[str]) -> dict | None:
    """The first kinds' draw: any other value of each attribute (the pool may turn out empty)."""
    opts = {}
    for attr in attrs:
        if attr == "articleType":
            opts[attr] = sorted(cat.family_types[ref["subCategory"]] - {ref[attr]})
        else:
            opts[attr] = [v for v in cat.values[attr] if v != ref[attr]]
    if any(not v for v in opts.values()):
        return None
    return {attr: rng.choice(choices) for attr, choices in opts.items()}


def _propose_existing(cat: _Catalog, rng: random.Random, ref: Mapping[str, str], attrs: tuple[str, ...],
                      keys: tuple[str, ...]) -> dict | None:
    """One of the value combinations some other item has (with the kept attributes): never an empty pool."""
    opts = cat.changes(tuple(k for k in keys if k not in attrs), attrs, ref)
    return dict(zip(attrs, rng.choice(opts))) if opts else None


def _change_phrase(rng: random.Random, change: str, ref: Mapping[str, str], wanted: Mapping, phrasings: str) -> str:
    new, old = wanted[CHANGED[change]], ref[CHANGED[change]]
    if change == "colour":
        return ph.colour_caption(rng, new, old, phrasings)
    if change == "type":
        colour_kept = wanted.get("baseColour") == ref["baseColour"]
        return ph.type_caption(rng, new, old, colour_kept, phrasings)
    if change == "usage":
        return ph.usage_caption(rng, new, phrasings)
    if change == "gender":
        return ph.gender_caption(rng, new, old, phrasings)
    return ph.pattern_caption(rng, new, old, phrasings)


def _change_kind(cat: _Catalog, kind: str, rng: random.Random, per_kind: int, phrasings: str) -> list[CatalogTriplet]:
    change = kind.split("+")
    attrs = tuple(CHANGED[c] for c in change)
    keys = WANTED_KEYS if kind in LEGACY_KINDS else wanted_keys(change)
    cands: list[CatalogTriplet] = []
    for ref in _draws(cat, rng, cands, per_kind):
        ra = cat.attrs[ref]
        chosen = (_propose_any(cat, rng, ra, attrs) if kind in LEGACY_KINDS
                  else _propose_existing(cat, rng, ra, attrs, keys))
        if chosen is None:
            continue
        wanted = {k: chosen.get(k, ra[k]) for k in keys}
        pool = cat.pool(wanted, ref=ref)
        if not len(pool):
            continue
        parts = [_change_phrase(rng, c, ra, wanted, phrasings) for c in change]
        caption = parts[0] if len(parts) == 1 else ph.join(rng, parts[0], parts[1], phrasings)
        cands.append(CatalogTriplet(cat.names[ref], caption, cat.names[rng.choice(pool)], kind, wanted))
    return cands


def _strip_colour(name: str, colour: str) -> str:
    words = re.sub(re.escape(colour), " ", name, flags=re.IGNORECASE) if colour else name
    return " ".join(words.lower().split())


def _same_product_colour(cat: _Catalog, rng: random.Random, phrasings: str) -> list[CatalogTriplet]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for row, (r, a) in enumerate(zip(cat.records, cat.attrs)):
        # Usage is in the key too: only the colour may differ, or the caption would be incomplete.
        groups[(_strip_colour(r.attrs.get("productDisplayName", ""), a["baseColour"]), a["gender"],
                a["articleType"], a["usage"])].append(row)
    cands = []
    for rows in groups.values():
        for ref in rows:
            for tgt in rows:
                ra, ta = cat.attrs[ref], cat.attrs[tgt]
                if ra["baseColour"] != ta["baseColour"]:
                    cands.append(CatalogTriplet(cat.names[ref],
                                                ph.colour_caption(rng, ta["baseColour"], ra["baseColour"], phrasings),
                                                cat.names[tgt], "same_product_colour",
                                                {k: ta[k] for k in WANTED_KEYS}))
    return cands


# ----------------------------------------------------------------------------------------------- other kinds

def _matching(cat: _Catalog, rng: random.Random, per_kind: int, phrasings: str) -> list[CatalogTriplet]:
    """Another category in the reference's colour, for the same wearer (adults: or unisex)."""
    cands: list[CatalogTriplet] = []
    for ref in _draws(cat, rng, cands, per_kind):
        ra = cat.attrs[ref]
        g = ra["gender"]
        gender = g if g in ph.KIDS else ("Men", "Unisex", "Women") if g == "Unisex" else (g, "Unisex")
        opts = []
        for name in MATCH_FROM.get(ra["subCategory"], ()):
            wanted = {"gender": gender, "baseColour": ra["baseColour"], **MATCH_TARGETS[name][2]}
            if satisfies(ra, wanted):  # a bag is no match for a bag
                continue
            pool = cat.pool(wanted, ref=ref)
            if len(pool):
                opts.append((name, wanted, pool))
        if not opts:
            continue
        name, wanted, pool = rng.choice(opts)
        noun, plural, _ = MATCH_TARGETS[name]
        cands.append(CatalogTriplet(cat.names[ref], ph.matching_caption(rng, noun, plural, phrasings),
                                    cat.names[rng.choice(pool)], "matching", wanted))
    return cands


def _negation_condition(ref: Mapping[str, str], attr: str) -> tuple[dict, dict] | None:
    """(wanted, unwanted) of "not <the reference's attr>", or None where it does not apply."""
    old = ref[attr]
    if (attr == "usage" and old not in NEGATED_USAGES) or (attr == "pattern" and not old):
        return None
    wanted: dict = {k: ref[k] for k in NEGATION_KEEP[attr]}
    if attr == "pattern" and old == "Solid":  # "not plain" asks for a pattern, not merely an unknown one
        wanted["pattern"] = tuple(p for p in PATTERNS if p != "Solid")
    return wanted, {attr: (old,)}


def _negation(cat: _Catalog, rng: random.Random, per_kind: int, phrasings: str) -> list[CatalogTriplet]:
    say = {"baseColour": ph.negate_colour_caption, "usage": ph.negate_usage_caption,
           "pattern": ph.negate_pattern_caption}
    cands: list[CatalogTriplet] = []
    for ref in _draws(cat, rng, cands, per_kind):
        ra = cat.attrs[ref]
        opts = []
        for attr in ("baseColour", "usage", "pattern"):
            cond = _negation_condition(ra, attr)
            pool = cat.pool(*cond, ref=ref) if cond else ()
            if len(pool):
                opts.append((attr, cond, pool))
        if not opts:
            continue
        attr, (wanted, unwanted), pool = rng.choice(opts)
        cands.append(CatalogTriplet(cat.names[ref], say[attr](rng, ra[attr], phrasings), cat.names[rng.choice(pool)],
                                    "negation", wanted, unwanted))
    return cands


def _same_but_different(cat: _Catalog, rng: random.Random, per_kind: int, phrasings: str) -> list[CatalogTriplet]:
    cands: list[CatalogTriplet] = []
    for ref in _draws(cat, rng, cands, per_kind):
        wanted = {k: cat.attrs[ref][k] for k in ("gender", "articleType", "baseColour")}
        pool = cat.pool(wanted, ref=ref)
        if len(pool):
            cands.append(CatalogTriplet(cat.names[ref], ph.similar_caption(rng, phrasings),
                                        cat.names[rng.choice(pool)], "same_but_different", wanted))
    return cands


def generate(records: Sequence, seed: int = 0, per_kind: int = 1000,
             kinds: Sequence[str] = KINDS, phrasings: str = "all") -> list[CatalogTriplet]:
    """Triplets among `records` (one split's catalogue ImageRecords), `per_kind` at most of each kind.

    phrasings: "all" templates, or the "train" / "heldout" partition (training on "train" and testing on
    "heldout" measures how well a model generalises to wordings it never saw).
    """
    if phrasings not in PHRASINGS:
        raise ValueError(f"unknown phrasings {phrasings!r}; valid: {', '.join(PHRASINGS)}")
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown triplet kind {k!r}; valid: {', '.join(KINDS)}")
    rng = random.Random(seed)
    cat = _Catalog(records)
    others = {"matching": _matching, "negation": _negation, "same_but_different": _same_but_different}
    out: list[CatalogTriplet] = []
    for kind in kinds:
        if kind == "same_product_colour":
            cands = _same_product_colour(cat, rng, phrasings)
        elif kind in others:
            cands = others[kind](cat, rng, per_kind, phrasings)
        else:
            cands = _change_kind(cat, kind, rng, per_kind, phrasings)
        rng.shuffle(cands)
        out.extend(cands[:per_kind])
    return out
