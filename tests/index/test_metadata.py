"""The metadata path of search (cir.index.metadata): caption words found in the dataset's own names and
attributes, negation scopes, the df threshold, the no-op without metadata, and search()'s `boost` (the
ranking unchanged without one; boosted rows up; exclude and subset kept; every backend).

Data: the real catalogue's test split (catalog_root), and small hand-made galleries whose ranking is known.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir.data import ImageRecord, catalog_images
from cir.data.words import name_words
from cir.index import Metadata, Terms, load_index, search
from cir.index.metadata import Term, read_caption


@pytest.fixture(scope="module")
def catalog(catalog_root) -> tuple[list[ImageRecord], Metadata]:
    records = catalog_images(catalog_root, "test")
    return records, Metadata.from_records(records)


def _rows_named(records: list[ImageRecord], word: str) -> set[int]:
    return {i for i, r in enumerate(records) if word in name_words(r.attrs["productDisplayName"])}


def _gallery(names: list[str], colours: list[str] | None = None) -> list[ImageRecord]:
    colours = colours or ["Black"] * len(names)
    return [ImageRecord(str(i), Path(f"{i}.jpg"), {"productDisplayName": n, "baseColour": c, "gender": "Men"})
            for i, (n, c) in enumerate(zip(names, colours))]


def _ranked(n: int) -> torch.Tensor:
    """Row i = e0 + 0.05*i*e_i, normalised: a query e0 ranks the rows 0, 1, 2, ... (scores falling)."""
    eye = torch.eye(n)
    return F.normalize(torch.stack([eye[0] + 0.05 * i * eye[i] for i in range(n)]), dim=-1)


# ----------------------------------------------------------------------------------------------- reading captions

def test_brand_and_colour_words_on_the_catalogue(catalog):
    records, meta = catalog
    terms = meta.terms("the same from Nike, in red please")
    assert terms.words == {"boost": ["nike", "red"], "avoid": []}
    nike, red = terms.boost
    assert set(nike.rows.tolist()) == _rows_named(records, "nike") and len(nike.rows) > 5
    assert {int(r) for r in red.rows} == {i for i, r in enumerate(records) if "red" in name_words(r.attrs["baseColour"])
                                          or "red" in name_words(r.attrs["productDisplayName"])}
    # one tokeniser: a type word however written, and a pattern's inflections joined to it
    spellings = [meta.terms(c).boost[0].rows for c in ("a t-shirt", "tshirts", "T-Shirt")]
    assert all(np.array_equal(spellings[0], s) for s in spellings)
    striped = {i for i, r in enumerate(records) if r.attrs["pattern"] == "Striped"}
    assert striped <= set(meta.terms("with stripes").boost[0].rows.tolist())


def test_common_and_grammar_words_are_no_terms(catalog):
    _, meta = catalog
    # "men" and "casual" are in most of the catalogue's rows: a boost would lift nearly everything
    assert meta.terms("a casual one for men").words == {"boost": [], "avoid": []}
    assert meta.with_settings(max_df=1.0).terms("a casual one for men").words["boost"] == ["casual", "men"]
    # request words and "colour" (United Colors of Benetton's "color" is a name word) never are
    assert meta.terms("show me the same style in another colour").words == {"boost": [], "avoid": []}
    assert not meta.terms("zzyzx qwerty")   # unknown words: nothing understood, a falsy Terms


@pytest.mark.parametrize("caption, boost, avoid", [
    ("not red, but checked", ["checked"], ["red"]),
    ("no stripes", [], ["stripes"]),
    ("without the print", [], ["print"]),
    ("anything but black", [], ["black"]),
    ("I don't want brown", [], ["brown"]),
    ("it isn't red", [], ["red"]),
    ("red is not for me, blue", ["blue"], ["red"]),
    ("nike instead of puma", ["nike"], ["puma"]),
    ("red and not blue", ["red"], ["blue"]),
    ("blue, no, not blue", [], ["blue"]),   # said both ways: the negation wins
])
def test_negation_scope(catalog, caption, boost, avoid):
    assert catalog[1].terms(caption).words == {"boost": boost, "avoid": avoid}


def test_read_caption_keeps_order_and_scope():
    assert read_caption("Not red, but a checked shirt") == [("red", True), ("checked", False), ("shirt", False)]
    assert read_caption("the same, without any stripes and in navy") == [("stripes", True), ("navy", False)]


def test_no_metadata_is_a_no_op(tmp_path):
    plain = [ImageRecord(str(i), tmp_path / f"{i}.jpg") for i in range(5)]   # FashionIQ, CIRR, folders
    meta = Metadata.from_records(plain)
    assert not meta and len(meta) == 5
    terms = meta.terms("the same from nike, not red")
    assert not terms and terms.words == {"boost": [], "avoid": []}
    x = _ranked(5)
    assert all(torch.equal(a, b) for a, b in zip(search(x[:1], x, 3, boost=terms), search(x[:1], x, 3)))


def test_rows_mapped_by_names_and_adjust_shares():
    records = _gallery(["Nike Red Tee", "Puma Tee", "Nike Tee"], ["Red", "Blue", "Black"])
    meta = Metadata.from_records(records, names=["2", "1", "0", "9"], max_df=1.0)   # "9" has no record
    assert meta.rows("nike").tolist() == [0, 2] and meta.rows("red").tolist() == [2] and len(meta) == 4
    t = Terms((Term("nike", np.array([0, 2])), Term("red", np.array([2]))), (Term("puma", np.array([1])),), 0.2)
    assert np.allclose(t.adjust(np.array([0, 1, 2, 3])), [0.1, -0.2, 0.2, 0.0])


# ----------------------------------------------------------------------------------------------- search(boost=...)

def test_search_without_boost_is_unchanged():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    q = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    before = search(q, x, 10, exclude=[[0], None, [5, 6], None])
    for boost in (None, Terms(), [None, Terms(), None, None]):
        after = search(q, x, 10, exclude=[[0], None, [5, 6], None], boost=boost)
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_boosted_rows_move_up_and_avoided_rows_down():
    x = _ranked(20)
    up = Terms((Term("nike", np.array([7, 12])),), (), 0.5)
    scores, ids = search(x[:1], x, 5, boost=up)
    assert ids[0].tolist() == [7, 12, 0, 1, 2]
    assert torch.all(scores[0][:-1] >= scores[0][1:])   # the boosted scores, best first
    down = Terms((), (Term("red", np.array([0, 1])),), 0.5)
    assert search(x[:1], x, 3, boost=down)[1][0].tolist() == [2, 3, 4]
    # one Boost per query, None for a query without one
    both = search(x[[0, 0]], x, 2, boost=[up, None])[1]
    assert both.tolist() == [[7, 12], [0, 1]]
    with pytest.raises(ValueError, match="2 entries for 1 queries"):
        search(x[:1], x, 2, boost=[up, None])


def test_boost_keeps_exclude_subset_and_k():
    x = _ranked(20)
    up = Terms((Term("nike", np.array([7, 12, 15])),), (), 1.0)
    assert 7 not in search(x[:1], x, 5, exclude=[[7]], boost=up)[1][0].tolist()
    assert search(x[:1], x, 5, exclude=[[7]], boost=up)[1][0].tolist()[:2] == [12, 15]
    assert search(x[:1], x, 3, subset=[1, 2, 3, 12], boost=up)[1][0].tolist() == [12, 1, 2]
    assert search(x[:1], x, 50, subset=[1, 15], exclude=[[15]], boost=up)[1][0].tolist() == [1]
    # a pool smaller than the index: only its rows are boosted (row 15 is not among the top 10)
    assert search(x[:1], x, 3, boost=up, candidates=10)[1][0].tolist() == [7, 0, 1]


@pytest.mark.parametrize("backend", ["exact", "faiss:hnsw"])
def test_boost_through_a_backend(tmp_path, write_folder, backend):
    if backend.startswith("faiss"):
        pytest.importorskip("faiss")
    x = write_folder(tmp_path / "f", n=600, dim=32)
    index = load_index(tmp_path / "f", backend)
    q = x[:2].float()
    _, plain = search(q, index, 10, exclude=[[0], [1]])
    wanted = np.array(sorted({int(plain[0, -1]), 599}))   # the 10th, and a row far down
    _, ids = search(q, index, 10, exclude=[[0], [1]], boost=[Terms((Term("w", wanted),), (), 2.0), None])
    assert set(ids[0, :2].tolist()) == set(wanted.tolist()) and 0 not in ids[0].tolist()
    assert ids[1].tolist() == plain[1].tolist()
