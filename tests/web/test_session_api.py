"""/api/search's session fields (cir.serving.session, cir.index.session): `filters` (facet filters) and
`history` (earlier turns); single-turn requests answer exactly as before; every malformed field is a 400
naming it. Over the session's small demo world (tests/conftest.py `demo_world`: 60 catalogue test images)."""
from __future__ import annotations

import pytest
import torch

from cir.index.session import SEEN_PENALTY
from cir.serving.settings import Settings
from cir.web.app import create_app


@pytest.fixture(scope="module")
def client(demo_world, tmp_path_factory):
    threads = torch.get_num_threads()
    app = create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads")))
    yield app.test_client(), app.extensions["cir"].datasets["catalog-test"]
    torch.set_num_threads(threads)


def _post(client, **body):
    return client[0].post("/api/search", json={"dataset": "catalog-test", "k": 59, **body})


def _ok(client, **body) -> dict:
    r = _post(client, **body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _drop_timing(out: dict) -> dict:
    return {k: v for k, v in out.items() if k not in ("timings", "latency_ms")}


def test_single_turn_requests_answer_as_before(client):
    names = client[1].index.names
    body = {"mode": "composed", "reference": names[0], "caption": "make it for women", "combiner": "tiny"}
    before = _ok(client, **body)
    assert "filters" not in before and "history" not in before
    for extra in ({"history": []}, {"filters": {}}, {"history": None, "filters": None}):
        assert _drop_timing(_ok(client, **body, **extra)) == _drop_timing(before)


def test_filters_keep_only_matching_rows(client):
    ds = client[1]
    body = {"mode": "composed", "reference": ds.index.names[0], "caption": "in red", "combiner": "tiny"}
    values = [v for v, _ in ds.vocabulary["gender"]][:1] + [v for v, _ in ds.vocabulary["baseColour"]][:2]
    out = _ok(client, **body, filters={"gender": values[:1], "baseColour": values[1:]})
    want = {n for n, r in ds.records.items() if r.attrs["gender"] == values[0] and r.attrs["baseColour"] in values[1:]}
    want.discard(ds.index.names[0])
    assert set(out["ids"]) == want and out["filters"] == {"gender": values[:1], "baseColour": values[1:]}
    for mode in ("image", "text", "sum"):
        extra = {"caption": "a shirt"} if mode != "image" else {}
        got = _ok(client, mode=mode, reference=ds.index.names[0], **extra, filters={"gender": values[:1]})
        assert all(ds.records[i].attrs["gender"] == values[0] for i in got["ids"])


@pytest.mark.parametrize("filters, message", [
    ({"colour": ["Red"]}, "unknown filter attribute 'colour'"),
    ({"baseColour": ["Reddish"]}, "baseColour value 'Reddish'"),
    ({"gender": []}, "filters.gender must be a list"),
    (["gender"], "filters must be an object"),
    ("{not json", "filters must be JSON"),
])
def test_bad_filters_are_400(client, filters, message):
    r = _post(client, mode="image", reference=client[1].index.names[0], filters=filters)
    assert r.status_code == 400 and message in r.get_json()["message"], r.get_json()


def test_history_demotes_seen_excludes_not_and_carries_words(client):
    ds = client[1]
    names = ds.index.names
    body = {"mode": "composed", "reference": names[1], "caption": "the same", "combiner": "tiny", "metadata": True}
    plain = _ok(client, **body)
    seen, nots = plain["ids"][:3], plain["ids"][3:5]
    turns = [{"reference": names[0], "caption": "in red", "feedback": {"not": nots, "seen": seen}}]
    out = _ok(client, **body, history=turns)
    assert out["history"] == {"turns": 1}
    assert not set(nots) & set(out["ids"]) and names[1] not in out["ids"]
    assert out["understood"]["boost"] == ["red"]          # "in red" carried from the earlier turn
    red = {n for n, r in ds.records.items() if r.attrs.get("baseColour") == "Red"}
    scores = dict(zip(out["ids"], out["scores"]))
    # a seen result lost SEEN_PENALTY (Rocchio moved the query too: compared loosely)
    assert all(scores[s] < dict(zip(plain["ids"], plain["scores"]))[s] - SEEN_PENALTY / 2 for s in seen
               if s not in red)
    overridden = _ok(client, **{**body, "caption": "in blue"}, history=turns)
    assert "red" not in overridden["understood"]["boost"]  # the same attribute named again: blue wins


@pytest.mark.parametrize("history, message", [
    ("x" * 3, "history must be JSON"),
    ({"reference": "1"}, "history must be a list"),
    ([{"reference": "nope", "caption": "red"}], "history[0].reference: image 'nope' is not in dataset"),
    ([{"caption": 3}], "history[0].caption must be a string"),
    ([{"caption": "red", "colour": "x"}], "history[0] has unknown field(s) 'colour'"),
    ([{"caption": "red", "feedback": {"not": ["nope"]}}], "history[0].feedback.not[0]: image 'nope'"),
    ([{"caption": "red", "feedback": {"like": []}}], "history[0].feedback has unknown field(s) 'like'"),
    ([{"caption": "red", "feedback": {"not": "x"}}], "history[0].feedback.not must be a list"),
    ([{"caption": "red", "upload": "0" * 32}], "history[0].upload: upload"),
    ([{"caption": "red"}] * 21, "history has 21 turns; at most 20"),
    (["red"], "history[0] must be an object"),
])
def test_bad_history_is_400(client, history, message):
    r = _post(client, mode="composed", reference=client[1].index.names[0], caption="red", combiner="tiny",
              history=history)
    assert r.status_code == 400 and message in r.get_json()["message"], r.get_json()
