"""Name edits mined from product names: deterministic, split by word and by wording, every edit's target
fulfils it and its reference does not, captions and wishes say the new words, families come from the data."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from cir.catalog import name_edits
from cir.catalog.descriptions import article_phrase
from cir.catalog.name_edits import NameEdit, mine, name_words, satisfies, satisfying
from cir.data import ImageRecord, catalog_images, known, pattern_of


@pytest.fixture(scope="module")
def records(catalog_root):
    return catalog_images(catalog_root, "test")


@pytest.fixture(scope="module")
def edits(records):
    return mine(records, seed=0)


def _attrs(records) -> dict[str, dict]:
    return {r.name: r.attrs for r in records}


def test_deterministic_for_a_seed(records, edits):
    again = mine(records, seed=0)
    assert edits == again and [(e.caption, e.wish, e.wanted) for e in edits] == \
        [(e.caption, e.wish, e.wanted) for e in again]
    assert mine(records, seed=1) != edits
    assert len(edits) > 300 and len(mine(records, per_word=1)) == len({e.words for e in edits})
    assert len(mine(records, limit=50)) == 50


def test_word_partition_is_stable_and_a_quarter(records):
    words = sorted({w for r in records for w in name_words(r.attrs["productDisplayName"])})
    held = [w for w in words if name_edits.word_partition(w) == "heldout"]
    assert 0.18 < len(held) / len(words) < 0.32
    assert [name_edits.word_partition(w) for w in words] == [name_edits.word_partition(w) for w in words]
    assert name_edits.edit_partition(("x", held[0])) == "heldout"


def test_word_and_phrasing_partitions_are_disjoint(records, edits):
    train, held = mine(records, words="train"), mine(records, words="heldout")
    assert train and held
    assert not {w for e in train for w in e.words} & {w for e in held for w in e.words if
                                                      name_edits.word_partition(w) == "heldout"}
    assert all(name_edits.word_partition(w) == "train" for e in train for w in e.words)
    assert all(any(name_edits.word_partition(w) == "heldout" for w in e.words) for e in held)
    assert {e.words for e in train} | {e.words for e in held} == {e.words for e in edits}
    by = {p: mine(records, phrasings=p) for p in ("train", "heldout")}
    assert not {e.caption for e in by["train"]} & {e.caption for e in by["heldout"]}
    assert len({e.caption for e in by["heldout"]}) > 100
    with pytest.raises(ValueError, match="unknown words"):
        mine(records, words="some")
    with pytest.raises(ValueError, match="unknown phrasings"):
        mine(records, phrasings="some")


def test_targets_satisfy_and_references_do_not(records, edits):
    attrs = _attrs(records)
    for e in edits:
        ref, tgt = attrs[e.reference], attrs[e.target]
        assert satisfies(tgt, e) and not satisfies(ref, e), e
        assert e.wanted == {"articleType": ref["articleType"], "gender": ref["gender"]}
        rw, tw = name_words(ref["productDisplayName"]), name_words(tgt["productDisplayName"])
        assert 1 <= len(e.words) <= 2 and e.words == tuple(w for w in tw if w not in rw)
        assert sum(w not in tw for w in rw) <= 2


def test_the_matrix_is_the_rule(records, edits):
    gallery = [r.attrs for r in records]
    sample = random.Random(0).sample(edits, 150)
    sat = satisfying(sample, gallery)
    assert sat.shape == (150, len(gallery))
    for e, row in zip(sample, sat):
        assert row.tolist() == [satisfies(a, e) for a in gallery]
    assert satisfying([], gallery).shape == (0, len(gallery))


def test_captions_and_wishes_say_the_new_words(edits):
    for e in edits:
        assert set(e.words) <= set(name_words(e.caption)), e
        assert set(e.words) <= set(name_words(e.wish)), e
        assert article_phrase(e.wanted["articleType"]) in e.wish, e
    assert len({e.caption for e in edits}) > 0.7 * len(edits)   # 20 edits a word at most, 28 templates


def test_families_come_from_the_data(records, edits):
    values = {k: {w for r in records for w in name_words(r.attrs.get(k, "")) if known(r.attrs.get(k, ""))}
              for k in ("baseColour", "gender", "usage", "articleType", "subCategory")}
    counts = Counter(e.family for e in edits)
    assert set(counts) <= set(name_edits.FAMILIES) and counts["colour"] and counts["name"] and counts["pattern"]
    for e in edits:
        if e.family == "colour":
            assert set(e.words) <= values["baseColour"], e
        elif e.family == "pattern":
            assert all(pattern_of(w) for w in e.words), e
        elif e.family == "type":
            assert set(e.words) <= values["articleType"] | values["subCategory"], e
    # A colour nobody ever listed is a colour once the catalogue has it: no hand list decides.
    recs = [ImageRecord(str(i), Path(f"{i}.jpg"), {"gender": "Men", "articleType": "Tshirts", "baseColour": c,
                                                   "usage": "Casual", "productDisplayName": f"Acme Men {c} Tshirt"})
            for i, c in enumerate(["Zorblue", "Zorblue", "Black", "Black"])]
    found = {e.words: e.family for e in mine(recs)}
    assert found == {("zorblue",): "colour", ("black",): "colour"}
    recs[0].attrs["baseColour"] = recs[1].attrs["baseColour"] = "Blue"
    assert {e.words: e.family for e in mine(recs)}[("zorblue",)] == "name"


def test_a_brand_of_two_words_is_said_whole():
    vocab = name_edits.Vocabulary([{"gender": "Men", "productDisplayName": n, "baseColour": "Navy Blue"}
                                   for n in ("Red Tape Men Black Shoes", "Red Tape Men Brown Shoes")])
    assert vocab.edit_family(("red", "tape")) == "name" and vocab.edit_family(("navy", "tape")) == "name"
    words = list(name_words("Red Tape Men Navy Blue Shoes"))
    assert words[vocab.said(words, ("tape",))] == ["red", "tape"]
    assert words[vocab.said(words, ("navy",))] == ["navy", "blue"]
    assert vocab.edit_family(("navy", "shoe")) is None
    assert isinstance(NameEdit("a", "b", "c", ("x",), "name", "x shoes").kind, str)
