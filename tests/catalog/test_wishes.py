"""catalog.wishes: the whole wish typed as text names what the target must be, for every kind, on real
catalogue triplets: each wanted attribute in words, each unwanted one as "not ...", "any of" values sensibly."""
from __future__ import annotations

import random
import re

import pytest

from cir.catalog import triplets
from cir.catalog.descriptions import article_phrase, colour_phrase, usage_phrase
from cir.catalog.phrasings import PATTERN_ADJ
from cir.catalog.wishes import wish_text
from cir.data import catalog_images

GENDER_WORDS = {"Men": r"\bmen('s)?\b", "Women": r"\bwomen('s)?\b", "Boys": r"\bboys'?", "Girls": r"\bgirls'?",
                "Unisex": r"\bunisex\b"}
CATEGORY = {"Shoes": "shoes", "Bags": "bag", "Watches": "watch", "Belts": "belt", "Wallets": "wallet",
            "Bottomwear": "bottoms", "Sandal": "sandals", "Flip Flops": "flip flops", "Socks": "socks",
            "Topwear": "top"}


@pytest.fixture(scope="module")
def split(catalog_root):
    records = catalog_images(catalog_root, "test")
    return triplets.generate(records, seed=0, per_kind=60), {r.name: r.attrs for r in records}


def expected_words(t: triplets.CatalogTriplet, ref: dict) -> list[str]:
    """Regexes the wish must match: one per wanted attribute, one per unwanted value."""
    out = []
    for attr, value in t.wanted.items():
        if attr == "gender":
            out.append(GENDER_WORDS[ref["gender"] if ref["gender"] in value else value])
        elif attr == "pattern":
            out.append(r"\bpatterned\b" if isinstance(value, tuple) else rf"\b{PATTERN_ADJ[value]}\b")
        elif attr == "articleType":
            out.append(r"\bcaps?\b" if value == ("Caps", "Hat") else re.escape(article_phrase(value)))
        elif attr == "subCategory":
            out.append(rf"\b{CATEGORY[value]}\b")
        else:
            out.append(re.escape(colour_phrase(value) if attr == "baseColour" else usage_phrase(value)))
    for attr, values in t.unwanted.items():
        for v in values:
            word = colour_phrase(v) if attr == "baseColour" else usage_phrase(v) if attr == "usage" else PATTERN_ADJ[v]
            out.append(rf"\bnot (\w+ or )*{re.escape(word)}\b")
    return out


def test_the_wish_names_every_wanted_and_unwanted_attribute_for_every_kind(split):
    trips, attrs = split
    rng = random.Random(0)
    seen = set()
    for t in trips:
        wish = wish_text(t, attrs[t.reference], rng)
        assert wish == wish.strip() and "  " not in wish, wish
        for pattern in expected_words(t, attrs[t.reference]):
            assert re.search(pattern, wish), (t.kind, t.wanted, t.unwanted, wish, pattern)
        seen.add(t.kind)
    assert seen == set(triplets.KINDS)


def test_wishes_read_as_searches():
    men_red = triplets.CatalogTriplet("r", "c", "t", "colour", {"gender": "Men", "articleType": "Tshirts",
                                                                 "baseColour": "Red", "usage": "Casual"})
    wishes = {wish_text(men_red, {}, random.Random(s)) for s in range(20)}
    assert wishes == {"red casual t-shirt for men", "men's red casual t-shirt"}
    match = triplets.CatalogTriplet("r", "c", "t", "matching", {"gender": ("Men", "Unisex"), "baseColour": "Navy Blue",
                                                                 "subCategory": "Shoes"})
    assert wish_text(match, {"gender": "Men"}, random.Random(0)) in {"navy blue shoes for men", "men's navy blue shoes"}
    assert wish_text(match, {"gender": "Unisex"}, random.Random(0)) == "unisex navy blue shoes"
    negated = triplets.CatalogTriplet("r", "c", "t", "negation", {"gender": "Women", "articleType": "Handbags"},
                                      {"baseColour": ("Brown",)})
    assert {wish_text(negated, {}, random.Random(s)) for s in range(30)} == {
        f"{what}{but} not brown" for what in ("handbag for women", "women's handbag") for but in (",", " but")}
