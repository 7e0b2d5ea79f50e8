"""The caption picker's API: a reference's annotated captions and targets, and the target's rank in a search.

Over the real annotation files: CIRR val (demo_world's tiny layout holds the first img_set groups of the real
cap.rc2.val.json), FashionIQ dress val (a tiny layout below with the first real entries of
cap.dress.val.json, placeholder PNGs for their images), and the catalogue's generated triplets (60 test
images, as evaluate.py would generate them).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cir.catalog.triplets import generate
from cir.data import AnnotationError, catalog_images, fashioniq_images, load_triplets
from cir.data.fashioniq import fiq_caption
from cir.extraction.local import ensure_index
from cir.index import search
from cir.paths import DEFAULT_DATA_ROOT
from cir.serving.annotations import Annotations, annotations_for
from cir.serving.errors import ServiceUnavailable
from cir.serving.settings import Settings
from cir.web.app import create_app

FIQ_FORMATS = DEFAULT_DATA_ROOT / "formats" / "fashionIQ_dataset"
FIQ_ENTRIES = 8     # the first real dress val entries: their candidates and targets become the index


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    threads = torch.get_num_threads()
    yield create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads")))
    torch.set_num_threads(threads)


@pytest.fixture()
def client(app):
    return app.test_client()


def _captions(client, dataset: str, reference: str):
    return client.get(f"/api/datasets/{dataset}/captions", query_string={"reference": reference})


def _full_ranking(app, body: dict, scores: bool = False):
    """Every image ranked by the same query (the reference excluded), through the API with k = the index."""
    ds = app.extensions["cir"].datasets[body["dataset"]]
    d = app.test_client().post("/api/search", json={**body, "k": len(ds.index) - 1}).get_json()
    return (d["ids"], d["scores"]) if scores else d["ids"]


def test_cirr_captions_are_the_real_annotations(app, client):
    ds = app.extensions["cir"].datasets["cirr-val"]
    triplets = load_triplets("cirr", ds.source.data_root, "val")
    ref = triplets[0].reference
    d = _captions(client, "cirr-val", ref).get_json()
    want = [(t.captions[0], t.target) for t in triplets if t.reference == ref]
    assert d["available"] is True and d["reference"] == ref
    assert [(c["caption"], c["target"]) for c in d["captions"]] == want and want
    assert d["captions"][0]["target_image"]["thumb"].startswith("/thumb/cirr-val/")
    assert app.test_client().get("/api/datasets/cirr-val").get_json()["has_captions"] is True


def test_cirr_target_rank_and_group_rank(app, client):
    ds = app.extensions["cir"].datasets["cirr-val"]
    ref = next(n for n in ds.index.names if ds.annotations.of(n))
    ann = ds.annotations.of(ref)[0]
    body = {"dataset": "cirr-val", "mode": "sum", "reference": ref, "caption": ann.caption, "target": ann.target}
    full = _full_ranking(app, body)
    d = client.post("/api/search", json={**body, "k": 1}).get_json()
    t = d["target"]
    assert t["id"] == ann.target and t["rank"] == full.index(ann.target) + 1
    assert t["shown"] is (t["rank"] == 1)
    group = [g["id"] for g in d["group"]]
    assert t["group_rank"] == group.index(ann.target) + 1   # CIRR targets are members of the reference's set


def test_catalog_captions_are_evaluates_triplets(app, client, catalog_root):
    ds = app.extensions["cir"].datasets["catalog-test"]
    records = [r for r in catalog_images(catalog_root, "test") if r.name in ds.index]
    trips = generate(records, seed=0, per_kind=500)   # evaluate.py's defaults
    assert trips
    ref = trips[0].reference
    d = _captions(client, "catalog-test", ref).get_json()
    assert [(c["caption"], c["target"], c["kind"]) for c in d["captions"]] == \
        [(t.caption, t.target, t.kind) for t in trips if t.reference == ref]


def test_target_rank_below_the_shown_results(app, client):
    """A target far down the ranking: not shown, its rank is its place in the full ranking."""
    ds = app.extensions["cir"].datasets["catalog-test"]
    ref = ds.index.names[0]
    body = {"dataset": "catalog-test", "mode": "composed", "reference": ref, "caption": "is blue"}
    full, scores = _full_ranking(app, body, scores=True)
    for target in (full[0], full[4], full[5], full[len(full) // 2], full[-1]):
        t = client.post("/api/search", json={**body, "k": 5, "target": target}).get_json()["target"]
        assert t["rank"] == full.index(target) + 1 and t["shown"] is (t["rank"] <= 5)
        assert t["group_rank"] is None and t["id"] == target
        # the score is the query's cosine with the target, as in the full ranking
        assert t["score"] == pytest.approx(scores[full.index(target)], abs=1e-3)
    assert client.post("/api/search", json=body).get_json()["target"] is None   # not asked: not computed


def test_caption_endpoint_errors(client, demo_world):
    assert client.get("/api/datasets/catalog-test/captions").status_code == 400
    r = _captions(client, "catalog-test", "no-such-image")
    assert r.status_code == 404 and "no-such-image" in r.get_json()["message"]
    assert _captions(client, "nope", "x").status_code == 404
    r = client.post("/api/search", json={"dataset": "catalog-test", "mode": "text", "caption": "shoes",
                                         "target": "no-such-image"})
    assert r.status_code == 404 and "no-such-image" in r.get_json()["message"]
    r = client.post("/api/search", json={"dataset": "catalog-test", "mode": "text", "caption": "shoes", "target": 3})
    assert r.status_code == 400 and "target" in r.get_json()["message"]


def test_a_malformed_annotation_file_is_an_error_not_no_captions():
    def broken():
        raise AnnotationError("cap.rc2.val.json: entry 3: missing key 'pairid'")
    ann = Annotations(broken, "dataset 'x'")
    assert ann.available
    for _ in range(2):   # the failure is kept: the file is not re-read on every request
        with pytest.raises(ServiceUnavailable, match="pairid") as e:
            ann.of("a")
        assert not e.value.retry_after_s   # it stays broken until fixed: no Retry-After
    assert Annotations(None, "dataset 'y'").of("a") == []


# ----------------------------------------------------------------------------------------------- FashionIQ

def _fake_fashioniq(root: Path) -> list[dict]:
    """A FashionIQ layout with the first real dress val entries and placeholder PNGs for their images."""
    from PIL import Image
    entries = json.loads((FIQ_FORMATS / "captions" / "cap.dress.val.json").read_text())[:FIQ_ENTRIES]
    names = sorted({e["candidate"] for e in entries} | {e["target"] for e in entries})
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True)
    for i, n in enumerate(names):
        Image.new("RGB", (64, 80), ((i * 53) % 256, (i * 97) % 256, 120)).save(root / "images" / f"{n}.png")
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(entries))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(names))
    return entries


@pytest.fixture(scope="module")
def fiq_app(demo_world, lite_encoder, tmp_path_factory):
    if not FIQ_FORMATS.exists():
        pytest.skip("FashionIQ annotation files not available")
    base = tmp_path_factory.mktemp("fiq")
    root = base / "fashionIQ_dataset"
    entries = _fake_fashioniq(root)
    ensure_index(fashioniq_images(root, "val", ["dress"]), lite_encoder, base / "features" /
                 "fashioniq-dress-val", workers=0,
                 info={"dataset": "fashioniq", "split": "val", "category": "dress", "data_root": str(root)})
    threads = torch.get_num_threads()
    settings = Settings(**{**demo_world, "features_root": base / "features", "default_dataset": None},
                        upload_dir=base / "uploads")
    yield create_app(settings), entries
    torch.set_num_threads(threads)


def test_fashioniq_captions_are_the_real_annotations(fiq_app):
    app, entries = fiq_app
    client = app.test_client()
    ref = entries[0]["candidate"]
    d = _captions(client, "fashioniq-dress-val", ref).get_json()
    want = [e for e in entries if e["candidate"] == ref]
    assert [c["captions"] for c in d["captions"]] == [[c.strip() for c in e["captions"]] for e in want]
    assert [c["caption"] for c in d["captions"]] == [fiq_caption(e["captions"]) for e in want]
    assert [c["target"] for c in d["captions"]] == [e["target"] for e in want]
    assert {c["kind"] for c in d["captions"]} == {"dress"}
    # picking it: the search carries the target and gets its rank back
    c = d["captions"][0]
    s = client.post("/api/search", json={"dataset": "fashioniq-dress-val", "mode": "composed", "reference": ref,
                                         "caption": c["caption"], "target": c["target"], "k": 3}).get_json()
    t = s["target"]
    assert t["id"] == c["target"] and t["rank"] >= 1 and t["shown"] is (c["target"] in s["ids"])
    if t["shown"]:
        assert s["ids"].index(c["target"]) + 1 == t["rank"]


def test_datasets_without_annotations_offer_none(tmp_path):
    """A folder dataset has no annotations: available False, an empty list, never an error."""
    ann = annotations_for("folder", None, None, tmp_path, [], ["a.jpg"], "dataset 'f'")
    assert not ann.available and ann.of("a.jpg") == [] and ann.count() == 0
    ann = annotations_for("cirr", "val", None, tmp_path, [], ["a"], "dataset 'c'")   # no caption file
    assert not ann.available


def test_ranks_agree_with_index_search(app):
    """_target_rank's count equals the target's place in index.search's full ranking (reference excluded)."""
    eng = app.extensions["cir"]
    ds = eng.datasets["catalog-test"]
    req = eng.parse({"dataset": "catalog-test", "mode": "image", "reference": ds.index.names[3], "k": 2,
                     "target": ds.index.names[10]})
    res = eng.run(req)
    q = ds.index.raw([3])
    q = q / q.norm(dim=1, keepdim=True)
    _, ids = search(q, ds.index, len(ds.index) - 1, exclude=[[3]])
    assert res.target.rank == ids[0].tolist().index(10) + 1
