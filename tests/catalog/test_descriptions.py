"""catalog.descriptions: an item's attributes as the text people type about it."""
from __future__ import annotations

import random

from cir.catalog.descriptions import (
    article_phrase,
    article_with_a,
    colour_phrase,
    describe,
    training_descriptions,
    usage_phrase,
)


def test_descriptions_are_deterministic_and_varied():
    attrs = {"articleType": "Tshirts", "baseColour": "Navy Blue", "usage": "Casual", "gender": "Men",
             "productDisplayName": "Nike Men Navy Blue T-shirt"}
    a = training_descriptions(attrs, random.Random(1), 8)
    assert a == training_descriptions(attrs, random.Random(1), 8)
    assert a[0] == "Nike Men Navy Blue T-shirt" and len(a) == 8
    many = {describe(attrs, random.Random(s)) for s in range(50)}
    assert len(many) > 8 and all(m.strip() for m in many)
    assert article_phrase("Jeans") == "jeans" and article_phrase("Tshirts") == "t-shirt"
    assert article_with_a("Jeans") == "jeans" and article_with_a("Innerwear Vests") == "a vest"
    assert article_with_a("Tshirts") == "a t-shirt" and article_with_a("Watches") == "a watch"


def test_missing_values_have_no_phrase():
    assert colour_phrase("NA") == colour_phrase("") == usage_phrase("NA") == ""
    assert colour_phrase("Navy Blue") == "navy blue" and usage_phrase("Sports") == "sporty"
