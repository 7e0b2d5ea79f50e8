"""Catalogue triplet generation: deterministic, split-safe, and every triplet's condition is right (the target
satisfies it, the reference does not where something changes); the wording partition holds for every kind."""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from cir.catalog import phrasings, triplets
from cir.catalog.conditions import satisfies
from cir.data import PATTERNS, catalog_images

G, A, C, U, P = "gender", "articleType", "baseColour", "usage", "pattern"
# What each kind's wanted dict names, and which of those the change edits (written out, not derived).
CHANGE_KINDS = {
    "same_product_colour": ({G, A, C, U}, {C}), "colour": ({G, A, C, U}, {C}), "type": ({G, A, C, U}, {A}),
    "usage": ({G, A, C, U}, {U}), "colour+type": ({G, A, C, U}, {C, A}), "colour+usage": ({G, A, C, U}, {C, U}),
    "gender": ({G, A, C}, {G}), "pattern": ({G, A, P}, {P}), "colour+gender": ({G, A, C}, {C, G}),
    "colour+pattern": ({G, A, C, P}, {C, P}), "type+usage": ({G, A, C, U}, {A, U}),
    "gender+usage": ({G, A, C, U}, {G, U}), "gender+type": ({G, A, C}, {G, A}),
    "pattern+gender": ({G, A, P}, {P, G}), "pattern+type": ({G, A, P}, {P, A}), "pattern+usage": ({G, A, U, P}, {P, U}),
}


@pytest.fixture(scope="module")
def splits(catalog_root):
    return {s: catalog_images(catalog_root, s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def test_triplets(splits):
    return triplets.generate(splits["test"], seed=0, per_kind=500)


def test_deterministic_for_a_seed(splits):
    a = triplets.generate(splits["val"], seed=3, per_kind=200)
    b = triplets.generate(splits["val"], seed=3, per_kind=200)
    assert a == b and [t.caption for t in a] == [t.caption for t in b]
    assert [(t.wanted, t.unwanted) for t in a] == [(t.wanted, t.unwanted) for t in b]
    c = triplets.generate(splits["val"], seed=4, per_kind=200)
    assert a != c


def test_never_mixes_splits(splits):
    test_names = {r.name for r in splits["test"]}
    train = triplets.generate(splits["train"], seed=0, per_kind=2000)
    assert train and not any(t.reference in test_names or t.target in test_names for t in train)
    train_names = {r.name for r in splits["train"]}
    assert all(t.reference in train_names and t.target in train_names for t in train)


def test_every_kind_generates_with_a_pool_the_target_is_in(splits, test_triplets):
    attrs = {r.name: r.attrs for r in splits["test"]}
    counts = Counter(t.kind for t in test_triplets)
    assert set(counts) == set(triplets.KINDS) and all(counts[k] >= 20 for k in triplets.KINDS), counts
    for t in test_triplets:
        assert t.caption.strip() and t.reference != t.target
        assert satisfies(attrs[t.target], t.wanted, t.unwanted), t
        pool = [n for n in attrs if n != t.reference and satisfies(attrs[n], t.wanted, t.unwanted)]
        assert t.target in pool


def test_change_kinds_name_the_kept_attributes_and_change_only_theirs(splits, test_triplets):
    attrs = {r.name: r.attrs for r in splits["test"]}
    for t in (t for t in test_triplets if t.kind in CHANGE_KINDS):
        keys, changes = CHANGE_KINDS[t.kind]
        ref = attrs[t.reference]
        assert set(t.wanted) == keys and not t.unwanted, t
        assert all(isinstance(v, str) for v in t.wanted.values())
        assert {k for k in keys if ref[k] != t.wanted[k]} == changes, t
        assert not satisfies(ref, t.wanted)
        if G in changes:
            assert t.wanted[G] in triplets.GENDER_SWAPS[ref[G]]
        if P in changes:
            assert ref[P] and t.wanted[P] in PATTERNS
        if A in changes:  # another type of the same family
            assert any(a[A] == t.wanted[A] and a["subCategory"] == ref["subCategory"] for a in attrs.values())


def test_matching_asks_for_another_category_in_the_reference_colour(splits, test_triplets):
    attrs = {r.name: r.attrs for r in splits["test"]}
    matching = [t for t in test_triplets if t.kind == "matching"]
    categories = {triplets.make_key({k: v for k, v in t.wanted.items() if k in ("subCategory", A)}) for t in matching}
    assert len(categories) >= 6  # shoes, bags, belts, tops, ...: not one category only
    for t in matching:
        ref, tgt = attrs[t.reference], attrs[t.target]
        assert t.wanted[C] == ref[C] == tgt[C] and not satisfies(ref, t.wanted)
        assert tgt["subCategory"] != ref["subCategory"] or tgt[A] != ref[A]
        if ref[G] in ("Men", "Women"):
            assert set(t.wanted[G]) == {ref[G], "Unisex"}
        elif ref[G] in ("Boys", "Girls"):
            assert t.wanted[G] == ref[G]
        assert not re.search(rf"\b{re.escape(ref[C].lower())}\b", t.caption.lower())  # the colour goes unsaid


def test_negation_rules_out_the_reference_value_and_keeps_the_rest(splits, test_triplets):
    attrs = {r.name: r.attrs for r in splits["test"]}
    negated = Counter()
    for t in (t for t in test_triplets if t.kind == "negation"):
        ref = attrs[t.reference]
        (key, values), = t.unwanted.items()
        negated[key] += 1
        assert values == (ref[key],) and attrs[t.target][key] != ref[key]
        assert not satisfies(ref, t.wanted, t.unwanted)
        assert {k: v for k, v in t.wanted.items() if k != P} == {k: ref[k] for k in triplets.NEGATION_KEEP[key]}
        if key == P and ref[P] == "Solid":  # "not plain" asks for a pattern
            assert t.wanted[P] == ("Striped", "Checked", "Printed")
    assert set(negated) == {C, U, P}, negated


def test_same_but_different_keeps_type_gender_and_colour(splits, test_triplets):
    attrs = {r.name: r.attrs for r in splits["test"]}
    for t in (t for t in test_triplets if t.kind == "same_but_different"):
        assert t.wanted == {k: attrs[t.reference][k] for k in (G, A, C)}
        assert satisfies(attrs[t.reference], t.wanted)  # the reference is alike; it is never ranked


def test_train_and_heldout_wordings_are_disjoint_and_varied(splits):
    by = {p: triplets.generate(splits["test"], seed=0, per_kind=300, phrasings=p) for p in ("train", "heldout")}
    for kind in triplets.KINDS:
        train = {t.caption for t in by["train"] if t.kind == kind}
        held = {t.caption for t in by["heldout"] if t.kind == kind}
        assert train and held and not train & held, (kind, sorted(train & held)[:5])
        assert len(held) >= 5, (kind, held)  # a quarter of 16-30 templates, more where values vary
    with pytest.raises(ValueError, match="unknown phrasings"):
        triplets.generate(splits["test"], phrasings="some")


GENDER_PEOPLE = {"Men": {"husband", "boyfriend", "dad", "brother", "him", "gents", "male", "man", "men", "mens"},
                 "Women": {"wife", "girlfriend", "mum", "sister", "her", "ladies", "female", "woman", "women",
                           "womens"},
                 "Boys": {"son", "nephew", "boy", "boys"}, "Girls": {"daughter", "niece", "girl", "girls"}}


def test_gender_captions_name_the_new_gender_only():
    for old, news in triplets.GENDER_SWAPS.items():
        for new in news:
            for seed in range(200):
                cap = phrasings.gender_caption(random.Random(seed), new, old)
                words = set(re.findall(r"[a-z]+", cap.lower().replace("'", "")))
                others = set().union(*(GENDER_PEOPLE[g] for g in GENDER_PEOPLE if g not in (new, old)))
                assert not words & others, (new, old, cap)
                if words & GENDER_PEOPLE[old]:  # the old gender only as what is replaced
                    assert "instead of" in cap or "not for" in cap, (new, old, cap)


def test_captions_are_varied_and_unknown_kind_fails(splits):
    tr = triplets.generate(splits["val"], seed=0, per_kind=300, kinds=["colour"])
    assert len({t.caption for t in tr}) > 50
    for kind in ("gender", "pattern", "matching", "negation", "same_but_different"):
        assert len({t.caption for t in triplets.generate(splits["val"], seed=0, per_kind=300, kinds=[kind])}) > 20
    with pytest.raises(ValueError, match="valid: same_product_colour"):
        triplets.generate(splits["val"], kinds=["shape"])


def test_satisfies_tuples_and_unwanted():
    item = {"gender": "Men", "articleType": "Shirts", "baseColour": "Black", "pattern": ""}
    assert satisfies(item, {"gender": ("Men", "Unisex"), "articleType": "Shirts"})
    assert not satisfies(item, {"gender": ("Women", "Unisex")})
    assert satisfies(item, {"articleType": "Shirts"}, {"baseColour": ("Red", "Blue")})
    assert not satisfies(item, {"articleType": "Shirts"}, {"baseColour": ("Black",)})
    assert satisfies(item, {}, {"pattern": ("Striped",)})       # an unknown pattern is not stripes
    assert not satisfies(item, {"usage": "Casual"})              # a missing attribute matches nothing named
    assert not satisfies(item, {"pattern": ("Striped", "Checked")})


def test_condition_key_is_canonical():
    key = triplets.make_key({"gender": ("Unisex", "Men"), "baseColour": "Black"}, {"usage": ("Formal",)})
    assert key == triplets.make_key({"baseColour": "Black", "gender": ("Men", "Unisex", "Men")},
                                    {"usage": ("Formal",), "pattern": ()})
    assert triplets.make_key({"gender": ("Men",)}) == triplets.make_key({"gender": "Men"})
    assert key != triplets.make_key({"gender": ("Unisex", "Men"), "baseColour": "Black"})
    assert triplets.from_key(key) == ({"baseColour": "Black", "gender": ("Men", "Unisex")}, {"usage": ("Formal",)})
    t = triplets.CatalogTriplet("a", "c", "b", "negation", {"baseColour": "Black"}, {"usage": ("Formal",)})
    assert triplets.condition_key(t) == triplets.make_key(t.wanted, t.unwanted) and hash(triplets.condition_key(t))


def test_condition_masks_agree_with_satisfies(splits, test_triplets):
    items = [r.attrs for r in splits["test"]]
    masks = triplets.ConditionMasks(items)
    for t in random.Random(0).sample(test_triplets, 400):
        got = masks.mask(triplets.condition_key(t))
        assert got.tolist() == [satisfies(a, t.wanted, t.unwanted) for a in items], t
    assert not masks.mask(triplets.make_key({"baseColour": "No Such Colour"})).any()
    assert masks.stack([]).shape == (0, len(items))
