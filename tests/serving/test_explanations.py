"""serving.explanations: an explanation is computed off the model lock on a low-priority thread of its own,
rendered once, and answered from the cache when asked again (the page's "why?" switch asks for every result)."""
from __future__ import annotations

import io
import json
import os
import threading

import pytest
from PIL import Image

from cir.explain import Explainer
from cir.serving.settings import Settings
from cir.web.app import create_app


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    return create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("u"), warm_up=False))


def _body(app, caption: str) -> dict:
    ids = app.test_client().get("/api/datasets/catalog-test/random?n=2&seed=1").get_json()["images"]
    return {"dataset": "catalog-test", "mode": "composed", "reference": ids[0]["id"], "caption": caption,
            "result": ids[1]["id"]}


def test_a_repeated_explanation_comes_from_the_cache(app):
    client = app.test_client()
    body = _body(app, "in dark green please")
    first = client.post("/api/explain", json=body)
    again = client.post("/api/explain", json=body)
    assert first.status_code == again.status_code == 200
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert again.data == first.data and again.mimetype == "image/png"
    with Image.open(io.BytesIO(again.data)) as im:
        assert im.format == "PNG"
    as_json = client.post("/api/explain?format=json", json=body)   # another format: rendered apart
    assert as_json.headers["X-Cache"] == "miss" and as_json.mimetype == "application/json"
    assert json.loads(as_json.data)["grid_size"] == [28, 28]
    other = client.post("/api/explain", json={**body, "caption": "in dark blue please"})
    assert other.headers["X-Cache"] == "miss" and other.data != first.data
    stats = client.get("/api/metrics").get_json()["explanation_cache"]
    assert stats["hits"] >= 1 and stats["entries"] >= 3 and stats["bytes"] >= len(first.data)


def test_the_grad_cam_runs_off_the_model_lock_on_a_niced_thread(app, monkeypatch):
    """Searches wait for the model lock: an explanation holds it only while its query is composed."""
    eng = app.extensions["cir"]
    seen = {}
    real = Explainer.explain

    def spy(self, image, query):
        seen["lock_held"] = eng.model_lock.locked()
        seen["thread"] = threading.get_ident()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(self, image, query)

    monkeypatch.setattr(Explainer, "explain", spy)
    r = app.test_client().post("/api/explain", json=_body(app, "with short sleeves, not long"))
    assert r.status_code == 200, r.get_json()
    assert seen["lock_held"] is False and seen["thread"] != threading.get_ident()
    assert seen["nice"] > os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) or seen["nice"] == 19


def test_a_damaged_score_is_not_cached(app, monkeypatch):
    real = Explainer.explain

    def nan_score(self, image, query):
        exp = real(self, image, query)
        exp.score = float("nan")
        return exp

    body = _body(app, "a plainer one in beige")
    monkeypatch.setattr(Explainer, "explain", nan_score)
    bad = app.test_client().post("/api/explain", json=body)
    assert bad.status_code == 500 and "NaN" in bad.get_json()["message"]
    monkeypatch.undo()
    good = app.test_client().post("/api/explain", json=body)
    assert good.status_code == 200 and good.headers["X-Cache"] == "miss"
