"""Composed-retrieval triplets generated from the catalogue's attributes: no annotators needed.

A triplet is (reference, relative caption, target) plus the *wanted* attributes, so every catalogue item
that has them counts as correct (attribute-match@K), not only the one target. Kinds:
  same_product_colour  the same product in another colour (names equal but for the colour word)
  colour               another colour, same gender and type
  type                 another type of the same family (topwear, shoes, ...), colour and gender kept
  usage                another usage (casual/formal/sports/ethnic), same gender and type
  colour+type, colour+usage   both changes at once
Generation is deterministic from a seed and works within one split's records only, so splits never mix.
Captions are drawn from many phrasings, as people write them.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from captions import article_phrase, article_with_a, colour_phrase, usage_phrase, with_a

WANTED_KEYS = ("gender", "articleType", "baseColour", "usage")
KINDS = ("same_product_colour", "colour", "type", "usage", "colour+type", "colour+usage")


@dataclass(frozen=True)
class CatalogTriplet:
    reference: str
    caption: str
    target: str
    kind: str
    wanted: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


PHRASINGS = ("all", "train", "heldout")


def _pick(rng: random.Random, shapes: list[str], phrasings: str) -> str:
    """One phrasing; every 4th template is held out, so training can be checked on wordings it never saw."""
    if phrasings == "train":
        shapes = [x for i, x in enumerate(shapes) if i % 4 != 3]
    elif phrasings == "heldout":
        shapes = [x for i, x in enumerate(shapes) if i % 4 == 3]
    return rng.choice(shapes)


def _colour_caption(rng: random.Random, new: str, old: str, phrasings: str = "all") -> str:
    c, o = colour_phrase(new), colour_phrase(old)
    return _pick(rng, [
        f"is {c} instead of {o}", f"in {c}", f"make it {c}", f"the same but in {c}", f"change the colour to {c}",
        f"{c} rather than {o}", f"I want it in {c}", f"is {c}", f"same style, {c} colour", f"{with_a(c)} one",
        f"not {o}, {c}", f"switch to {c}", f"has {with_a(c)} colour", f"{c} version please",
        f"do you have this in {c}?", f"looking for {with_a(c)} one", f"similar but {c}", f"prefer {c} over {o}",
        f"{c} colour", f"swap the {o} for {c}", f"it should be {c}", f"less {o}, more {c}",
        f"want the {c} one", f"shows {with_a(c)} item",
    ], phrasings)


def _type_caption(rng: random.Random, new_type: str, old_type: str, colour_kept: bool,
                  phrasings: str = "all") -> str:
    n, o = article_phrase(new_type), article_phrase(old_type)
    an, ao = article_with_a(new_type), article_with_a(old_type)
    shapes = [f"make it {an}", f"{an} instead of {ao}", f"is {an}", f"change it to {an}",
              f"I'd like {an} instead", f"turn it into {an}", f"{n}, not {o}", f"show me {article_phrase(new_type, plural=True)}",
              f"looking for {an}", f"swap the {o} for {an}", f"would rather have {an}", f"{an} please"]
    if colour_kept:  # only true when the colour does not change as well
        shapes += [f"same colour but {an}", f"show {n} in this colour", f"{an} in the same colour",
                   f"keep the colour, make it {an}"]
    return _pick(rng, shapes, phrasings)


def _usage_caption(rng: random.Random, new: str, phrasings: str = "all") -> str:
    u = usage_phrase(new)
    return _pick(rng, [
        f"more {u}", f"make it {u}", f"{with_a(u)} one", f"is {u}", f"for {u} wear" if new != "Sports" else "for sports",
        f"something {u}", f"{with_a(u)} version", f"I need it {u}", f"should look {u}", f"{with_a(u)} style",
        f"suitable for {u} occasions" if new != "Sports" else "good for working out", f"less casual, more {u}"
        if new != "Casual" else "more relaxed and casual",
    ], phrasings)


def _join(rng: random.Random, a: str, b: str, phrasings: str = "all") -> str:
    return _pick(rng, [f"{a} and {b}", f"{a}, {b}", f"{b} and {a}", f"{a}; also {b}",
                       f"{a}, and {b}", f"{b}, {a}", f"{a} plus {b}", f"{a} - {b}"], phrasings)


def _strip_colour(name: str, colour: str) -> str:
    words = re.sub(re.escape(colour), " ", name, flags=re.IGNORECASE) if colour else name
    return " ".join(words.lower().split())


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
    items = sorted(records, key=lambda r: r.name)
    usable = [r for r in items if r.attrs.get("baseColour") not in ("", "NA") and r.attrs.get("usage") not in ("", "NA")]
    attrs_of = {r.name: {k: r.attrs.get(k, "") for k in WANTED_KEYS} for r in usable}
    family = {r.name: r.attrs.get("subCategory", "") for r in usable}
    family_types: dict[str, set[str]] = defaultdict(set)  # subCategory -> its article types
    for n, a in attrs_of.items():
        family_types[family[n]].add(a["articleType"])
    by_attrs: dict[tuple, list[str]] = defaultdict(list)
    for r in usable:
        by_attrs[tuple(attrs_of[r.name][k] for k in WANTED_KEYS)].append(r.name)

    def targets_for(wanted: Mapping[str, str]) -> list[str]:
        return by_attrs.get(tuple(wanted[k] for k in WANTED_KEYS), [])

    out: list[CatalogTriplet] = []
    for kind in kinds:
        cands: list[CatalogTriplet] = []
        if kind == "same_product_colour":
            groups: dict[tuple, list] = defaultdict(list)
            for r in usable:
                a = attrs_of[r.name]
                # Usage is in the key too: only the colour may differ, or the caption would be incomplete.
                groups[(_strip_colour(r.attrs.get("productDisplayName", ""), a["baseColour"]), a["gender"],
                        a["articleType"], a["usage"])].append(r.name)
            for names in groups.values():
                for ref in names:
                    for tgt in names:
                        ra, ta = attrs_of[ref], attrs_of[tgt]
                        if ra["baseColour"] != ta["baseColour"]:
                            cands.append(CatalogTriplet(ref, _colour_caption(rng, ta["baseColour"], ra["baseColour"], phrasings),
                                                        tgt, kind, dict(ta)))
        else:
            values = {k: sorted({a[k] for a in attrs_of.values()}) for k in WANTED_KEYS}
            refs = list(attrs_of)
            rng.shuffle(refs)
            for ref in refs:
                if len(cands) >= per_kind * 3:
                    break
                ra = attrs_of[ref]
                change = kind.split("+")
                wanted = dict(ra)
                opts = {}
                if "colour" in change:
                    opts["baseColour"] = [c for c in values["baseColour"] if c != ra["baseColour"]]
                if "type" in change:
                    opts["articleType"] = sorted(family_types[family[ref]] - {ra["articleType"]})
                if "usage" in change:
                    opts["usage"] = [u for u in values["usage"] if u != ra["usage"]]
                if any(not v for v in opts.values()):
                    continue
                for key, choices in opts.items():
                    wanted[key] = rng.choice(choices)
                pool = targets_for(wanted)
                if not pool:
                    continue
                parts = []
                if "colour" in change:
                    parts.append(_colour_caption(rng, wanted["baseColour"], ra["baseColour"], phrasings))
                if "type" in change:
                    parts.append(_type_caption(rng, wanted["articleType"], ra["articleType"], "colour" not in change,
                                              phrasings))
                if "usage" in change:
                    parts.append(_usage_caption(rng, wanted["usage"], phrasings))
                caption = parts[0] if len(parts) == 1 else _join(rng, parts[0], parts[1], phrasings)
                cands.append(CatalogTriplet(ref, caption, rng.choice(pool), kind, wanted))
        rng.shuffle(cands)
        out.extend(cands[:per_kind])
    return out
