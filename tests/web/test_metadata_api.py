"""The search API's `metadata` field (the metadata path, cir.index.metadata) through Flask's test client: the
understood words reported, scores moved by exactly the boost, nothing changed without the field, on a
dataset without metadata, or for a caption with no understood word; a bad value is a 400.

The app runs over the session's small demo world (tests/conftest.py `demo_world`: 60 catalogue test images,
a tiny CIRR val set, tiny random Combiners).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cir.index.metadata import DEFAULT_WEIGHT, STOP_WORDS
from cir.serving.settings import Settings
from cir.web.app import create_app


@pytest.fixture(scope="module")
def client(demo_world, tmp_path_factory):
    threads = torch.get_num_threads()  # the app sets this process's thread count; other modules get theirs back
    app = create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads")))
    yield app.test_client(), app.extensions["cir"].datasets["catalog-test"]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def word(client) -> tuple[str, set[str]]:
    """A word a few of the 60 items' names or attributes hold (3-9 of them), and the ids of those items."""
    ds = client[1]
    meta = ds.metadata
    w = next(k for k in sorted(meta.postings) if k.isalpha() and k not in STOP_WORDS and 3 <= len(meta.rows(k)) <= 9
             and len(meta.terms(k).boost) == 1)
    return w, {ds.index.names[i] for i in meta.terms(w).boost[0].rows}


def _search(client, **body) -> dict:
    r = client[0].post("/api/search", json={"dataset": "catalog-test", "k": 60, **body})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_metadata_boosts_the_understood_words(client, word):
    w, having = word
    ref = client[1].index.names[0]
    body = {"mode": "composed", "reference": ref, "caption": f"the same, but {w}", "combiner": "tiny"}
    plain, boosted = _search(client, **body, metadata=False), _search(client, **body, metadata=True)
    assert plain["understood"] is None
    assert boosted["understood"] == {"boost": [w], "avoid": [], "available": True}
    assert _search(client, **body)["ids"] == boosted["ids"]  # on by default (Settings.metadata)
    before = dict(zip(plain["ids"], plain["scores"]))
    for hit in boosted["results"]:   # every score moved by exactly the weight when the item has the word
        assert hit["score"] == pytest.approx(before[hit["id"]] + DEFAULT_WEIGHT * (hit["id"] in having), abs=2e-4)
    assert set(boosted["ids"]) == set(plain["ids"]) and ref not in boosted["ids"]   # all 59 others, reranked

    def first(ids: list[str]) -> int:
        return sum(i in having for i in ids[:len(having)])
    assert first(boosted["ids"]) >= first(plain["ids"]) and first(boosted["ids"]) > 0


def test_negated_words_sink_and_the_target_rank_follows(client, word):
    w, having = word
    body = {"mode": "text", "caption": f"anything but {w}"}
    plain = _search(client, **body, metadata=False)
    avoided = _search(client, **body, metadata="true")   # as a query string or a form writes it
    assert avoided["understood"] == {"boost": [], "avoid": [w], "available": True}
    before = dict(zip(plain["ids"], plain["scores"]))
    for hit in avoided["results"]:
        assert hit["score"] == pytest.approx(before[hit["id"]] - DEFAULT_WEIGHT * (hit["id"] in having), abs=2e-4)
    for name in having:   # only the avoided items lost score: none of them rose
        assert avoided["ids"].index(name) >= plain["ids"].index(name)
    # the rank of a target below the shown results counts the changed scores too
    last = avoided["ids"][-1]
    t = _search(client, **body, metadata=True, k=3, target=last)["target"]
    assert t["rank"] == 60 and not t["shown"]


def test_no_understood_word_or_no_metadata_changes_nothing(client):
    body = {"mode": "text", "caption": "show me the same style please"}
    plain, meta = _search(client, **body, metadata=False), _search(client, **body, metadata=True)
    assert meta["understood"] == {"boost": [], "avoid": [], "available": True} and meta["ids"] == plain["ids"]
    assert meta["scores"] == plain["scores"]
    cirr = {"dataset": "cirr-val", "mode": "text", "caption": "a red dog, not a cat", "k": 5}
    plain, meta = _search(client, **cirr), _search(client, **cirr, metadata=True)
    assert meta["understood"] == {"boost": [], "avoid": [], "available": False} and meta["ids"] == plain["ids"]
    # image and tags modes have no typed caption to read: the field is accepted and changes nothing
    ref = client[1].index.names[0]
    assert _search(client, mode="image", reference=ref, metadata=True)["understood"] is None
    d = client[0].get("/api/datasets").get_json()["datasets"]
    assert {x["name"]: x["has_metadata"] for x in d} == {"catalog-test": True, "cirr-val": False}


@pytest.mark.parametrize("value", ["yes", 1, [True], {"on": True}])
def test_metadata_must_be_a_boolean(client, value):
    r = client[0].post("/api/search", json={"dataset": "catalog-test", "mode": "text", "caption": "red",
                                            "metadata": value})
    assert r.status_code == 400 and "metadata must be a boolean" in r.get_json()["message"], r.get_json()


def test_scores_are_the_boosted_ones_in_rank_order(client, word):
    scores = np.array(_search(client, mode="text", caption=f"{word[0]} please", metadata=True)["scores"])
    assert np.all(scores[:-1] >= scores[1:])
