"""The whole wish of a catalogue triplet typed as text: what a shopper without the reference photo would type
into a text search to find the target ("red casual t-shirt for men", "handbag for women, not brown").

It is the text-typed baseline of benchmarks/bench_generalisation.py: a composed query has to beat it to be
worth the photo. The wanted condition's attributes are worded as descriptions.py words them; an unwanted one
becomes "not <value>"; a tuple ("any of these") becomes the reference's own value where it is one of them (the
matching kind's "same wearer"), "patterned" for every pattern but plain, the category word of a matching
target ("cap" for caps or hats), else one value drawn. A matching wish is thus the target category in the
reference's colour ("charcoal bottoms for men").
"""
from __future__ import annotations

import random
from typing import Mapping

from cir.catalog.descriptions import GENDER_PHRASES, article_phrase, colour_phrase, usage_phrase
from cir.catalog.phrasings import PATTERN_ADJ
from cir.catalog.triplets import MATCH_TARGETS, CatalogTriplet
from cir.data import PATTERNS

# A matching target's condition -> its category word ("shoes", "cap"), as its caption says it.
CATEGORY_WORDS: dict[tuple, str] = {next(iter(cond.items())): noun for noun, _, cond in MATCH_TARGETS.values()}
PATTERNED = tuple(sorted(p for p in PATTERNS if p != "Solid"))


def _value(attr: str, value: str | tuple[str, ...], ref: Mapping[str, str], rng: random.Random) -> str:
    """One value of a wanted attribute: a tuple's value the reference has, else one drawn from it."""
    if not isinstance(value, tuple):
        return value
    return ref.get(attr, "") if ref.get(attr, "") in value else rng.choice(sorted(value))


def _pattern(value: str | tuple[str, ...], ref: Mapping[str, str], rng: random.Random) -> str:
    if isinstance(value, tuple) and tuple(sorted(value)) == PATTERNED:
        return "patterned"
    return PATTERN_ADJ.get(_value("pattern", value, ref, rng), "")


def _noun(wanted: Mapping, ref: Mapping[str, str], rng: random.Random) -> str:
    """What is wanted, by its type or else its category ("t-shirt", "shoes", "cap")."""
    for attr in ("articleType", "subCategory"):
        if attr not in wanted:
            continue
        value = wanted[attr]
        key = (attr, tuple(value) if isinstance(value, tuple) else value)
        if key in CATEGORY_WORDS and (attr == "subCategory" or isinstance(value, tuple)):
            return CATEGORY_WORDS[key]
        value = _value(attr, value, ref, rng)
        return article_phrase(value) if attr == "articleType" else value.lower()
    return "item"


def _unwanted_phrase(attr: str, value: str) -> str:
    if attr == "baseColour":
        return colour_phrase(value)
    if attr == "usage":
        return usage_phrase(value)
    return PATTERN_ADJ.get(value, value.lower())


def wish_text(triplet: CatalogTriplet, ref_attrs: Mapping[str, str], rng: random.Random) -> str:
    """What a shopper would type to find the triplet's target without its reference (ref_attrs: the reference's
    catalogue attributes, which settle "any of" values such as the matching kind's wearer)."""
    wanted = triplet.wanted
    words = [_pattern(wanted["pattern"], ref_attrs, rng) if "pattern" in wanted else "",
             colour_phrase(_value("baseColour", wanted.get("baseColour", ""), ref_attrs, rng)),
             usage_phrase(_value("usage", wanted.get("usage", ""), ref_attrs, rng)),
             _noun(wanted, ref_attrs, rng)]
    noun = " ".join(w for w in words if w)
    gender = _value("gender", wanted.get("gender", ""), ref_attrs, rng)
    if gender == "Unisex":
        text = f"unisex {noun}"
    elif gender in GENDER_PHRASES:
        g_noun, g_adj = GENDER_PHRASES[gender]
        text = rng.choice([f"{noun} for {g_noun}", f"{g_adj} {noun}"])
    else:
        text = noun
    nots = [_unwanted_phrase(attr, v) for attr, values in triplet.unwanted.items() for v in values]
    nots = [n for n in nots if n]
    if nots:
        text += rng.choice([", not ", " but not "]) + " or ".join(nots)
    return text
