"""catalog.families: holding out a family leaves no kind in training that teaches its change, holds out only
kinds that do, and the families together cover every kind. What a triplet teaches is read here from real
test-split triplets (whose reference value its condition rules out), not from the kinds' names."""
from __future__ import annotations

import pytest

from cir.catalog import triplets
from cir.catalog.conditions import satisfies
from cir.catalog.families import FAMILIES, FAMILY_NAMES, held_out
from cir.data import catalog_images

G, A, C, U, P, S = "gender", "articleType", "baseColour", "usage", "pattern", "subCategory"
ATTRIBUTES = {"colour": {C}, "type": {A, S}, "usage": {U}, "gender": {G}, "pattern": {P}}


@pytest.fixture(scope="module")
def split(catalog_root):
    """The test split's triplets of every kind, and its attributes by name."""
    records = catalog_images(catalog_root, "test")
    return triplets.generate(records, seed=0, per_kind=150), {r.name: r.attrs for r in records}


def ruled_out(t: triplets.CatalogTriplet, ref: dict) -> set[str]:
    """The attributes whose reference value the triplet's condition rules out (what it asks to change)."""
    out = set()
    for a in (G, A, C, U, P, S):
        wanted = {k: v for k, v in t.wanted.items() if k == a}
        unwanted = {k: v for k, v in t.unwanted.items() if k == a}
        if not satisfies({a: ref.get(a, "")}, wanted, unwanted):
            out.add(a)
    return out


def teaches(family: str, t: triplets.CatalogTriplet, attrs: dict) -> bool:
    """Whether the triplet teaches the family's change."""
    ref, changed = attrs[t.reference], ruled_out(t, attrs[t.reference])
    if family in ATTRIBUTES:
        return bool(changed & ATTRIBUTES[family])
    if family == "matching":  # another category: the target's sub-category is not the reference's
        return attrs[t.target][S] != ref[S]
    if family == "negation":
        return bool(t.unwanted)
    if family == "pairs":
        return len(changed) >= 2
    assert family == "same_but_different"
    return not changed


def test_the_families_cover_every_kind():
    assert set(FAMILIES) == set(FAMILY_NAMES)
    assert {k for kinds in FAMILIES.values() for k in kinds} == set(triplets.KINDS)
    assert all(kinds and len(set(kinds)) == len(kinds) for kinds in FAMILIES.values())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_held_out_family_leaves_no_kind_teaching_its_change(split, family):
    trips, attrs = split
    for kind in triplets.KINDS:
        taught = [teaches(family, t, attrs) for t in trips if t.kind == kind]
        assert taught, kind
        if kind in FAMILIES[family]:  # held out: it does teach the change (nothing is left out for nothing)
            assert any(taught), (family, kind)
        else:  # still trained on: none of its triplets teaches the change
            assert not any(taught), (family, kind, sum(taught))


def test_held_out_kinds_of_several_families():
    assert held_out(["matching", "gender"]) == ("gender", "matching", "colour+gender", "gender+usage", "gender+type",
                                                "pattern+gender")
    assert held_out([]) == ()
    with pytest.raises(ValueError, match="unknown kind family 'red'; valid: colour, type"):
        held_out(["red"])
