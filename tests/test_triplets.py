"""Catalogue triplet generation: deterministic, split-safe, and the wanted attributes are right."""
from __future__ import annotations

import pytest

import data_utils
import triplets


@pytest.fixture(scope="module")
def splits(catalog_root):
    return {s: data_utils.catalog_images(catalog_root, s) for s in ("train", "val", "test")}


def test_deterministic_for_a_seed(splits):
    a = triplets.generate(splits["val"], seed=3, per_kind=200)
    b = triplets.generate(splits["val"], seed=3, per_kind=200)
    assert a == b and [t.caption for t in a] == [t.caption for t in b]
    c = triplets.generate(splits["val"], seed=4, per_kind=200)
    assert a != c


def test_never_mixes_splits(splits):
    test_names = {r.name for r in splits["test"]}
    train = triplets.generate(splits["train"], seed=0, per_kind=2000)
    assert train and not any(t.reference in test_names or t.target in test_names for t in train)
    train_names = {r.name for r in splits["train"]}
    assert all(t.reference in train_names and t.target in train_names for t in train)


def test_wanted_attributes_describe_the_target_and_differ_from_the_reference(splits):
    attrs = {r.name: r.attrs for r in splits["test"]}
    tr = triplets.generate(splits["test"], seed=0, per_kind=300)
    assert {t.kind for t in tr} == set(triplets.KINDS)
    for t in tr:
        assert t.caption.strip() and t.reference != t.target
        assert all(attrs[t.target][k] == v for k, v in t.wanted.items())
        changed = {k for k in triplets.WANTED_KEYS if attrs[t.reference][k] != t.wanted[k]}
        expected = {"same_product_colour": {"baseColour"}, "colour": {"baseColour"}, "type": {"articleType"},
                    "usage": {"usage"}, "colour+type": {"baseColour", "articleType"},
                    "colour+usage": {"baseColour", "usage"}}[t.kind]
        assert changed == expected, t


def test_captions_are_varied_and_unknown_kind_fails(splits):
    tr = triplets.generate(splits["val"], seed=0, per_kind=300, kinds=["colour"])
    assert len({t.caption for t in tr}) > 50
    with pytest.raises(ValueError, match="valid: same_product_colour"):
        triplets.generate(splits["val"], kinds=["shape"])
