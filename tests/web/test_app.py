"""The web demo through Flask's test client: every route, every search mode, each bad input, uploads, metrics.

The app runs over a small world built once per session (tests/conftest.py `demo_world`): 60 catalogue test
images with the real lite encoder, a tiny CIRR val set, tiny random Combiners and a stage-1 text checkpoint.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from cir.cli.serve import main, parser
from cir.combiner import compose
from cir.data import cirr_triplets
from cir.encoders import BASE_TEXT, STAGE1_TEXT, TextSide
from cir.index import FeatureIndex, search
from cir.serving.caching import LRU, Metrics
from cir.serving.datasets import Dataset, DatasetSource, cirr_groups, rank_group, tags_caption
from cir.serving.engine import Hit, ModelChoice, SearchResult, _paired_side
from cir.serving.errors import BadInput
from cir.serving.inputs import MAX_CAPTION_CHARS, validate_text
from cir.serving.settings import Settings, option
from cir.web.app import create_app


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    threads = torch.get_num_threads()  # the app sets this process's thread count; other modules get theirs back
    yield create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads"), max_image_pixels=4_000_000))
    torch.set_num_threads(threads)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def engine(app):
    return app.extensions["cir"]


@pytest.fixture(scope="module")
def ref(engine) -> str:
    return engine.datasets["catalog-test"].index.names[0]


def _jpeg(path) -> bytes:
    return path.read_bytes()


def _png(size=(80, 60), mode="RGBA", colour=(200, 30, 30, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def _upload(client, data: bytes, name: str = "photo.jpg"):
    return client.post("/api/upload", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def _search(client, **body):
    return client.post("/api/search", json={"dataset": "catalog-test", **body})


# ----------------------------------------------------------------------------------------------- pages, listing

def test_page_health_and_static(client):
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    # Bootstrap from the app itself by default (page_assets.py; tests/test_page.py covers it and the CDN option)
    assert "/vendor/bootstrap/css/bootstrap.min.css" in html and "static/app.js" in html and 'name="viewport"' in html
    assert "Fashion Product Images (Small)" in html  # the catalogue's attribution in the footer
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    h = client.get("/api/health").get_json()
    assert h["status"] == "ok" and h["encoder"] == "lite" and set(h["datasets"]) == {"catalog-test", "cirr-val"}
    assert h["damaged"] == {} and h["unverified"] == {}   # extracted with checksums, unchanged on disk


def test_datasets_modes_and_models(client):
    d = client.get("/api/datasets").get_json()
    assert d["default"] == "catalog-test"
    by_name = {x["name"]: x for x in d["datasets"]}
    assert by_name["catalog-test"]["count"] == 60 and by_name["catalog-test"]["has_tags"]
    assert by_name["cirr-val"]["has_groups"] and not by_name["cirr-val"]["has_tags"]
    assert [m["name"] for m in d["modes"]] == ["composed", "sum", "image", "text", "tags"]
    assert all(m["available"] for m in d["modes"])
    assert d["models"]["composed_available"]
    assert {c["name"]: c["text_encoder"] for c in d["models"]["combiners"]} == {"tiny": "base", "tiny-s1": "stage1"}
    assert d["models"]["text_encoders"] == ["base", "stage1"]
    assert d["limits"]["max_caption_chars"] == MAX_CAPTION_CHARS and d["limits"]["default_k"] == 24


def test_dataset_detail_has_the_catalogue_vocabulary(client, engine):
    d = client.get("/api/datasets/catalog-test").get_json()
    vocab = d["vocabulary"]
    assert set(vocab) == {"gender", "articleType", "baseColour", "usage"}
    records = engine.datasets["catalog-test"].records.values()
    assert {v["value"] for v in vocab["baseColour"]} == {r.attrs["baseColour"] for r in records} - {"", "NA"}
    assert client.get("/api/datasets/nope").status_code == 404


def test_browse_pages_filter_and_random(client, engine):
    names = engine.datasets["catalog-test"].index.names
    p1 = client.get("/api/datasets/catalog-test/images").get_json()
    assert p1["total"] == 60 and p1["pages"] == 3 and [i["id"] for i in p1["images"]] == names[:24]
    p3 = client.get("/api/datasets/catalog-test/images?page=3").get_json()
    assert [i["id"] for i in p3["images"]] == names[48:]
    first = p1["images"][0]
    assert first["url"] == f"/img/catalog-test/{first['id']}" and first["thumb"].startswith("/thumb/")
    assert first["title"] and "articleType" in first["attrs"]
    f = client.get("/api/datasets/catalog-test/images?q=men%20shirts&per_page=100").get_json()
    assert 0 < f["total"] < 60
    for im in f["images"]:
        text = " ".join([im["title"], *im["attrs"].values()]).lower()
        assert "men" in text and "shirts" in text
    assert client.get("/api/datasets/catalog-test/images?q=zzzqqq").get_json()["total"] == 0
    r1 = client.get("/api/datasets/catalog-test/random?n=5&seed=3").get_json()["images"]
    r2 = client.get("/api/datasets/catalog-test/random?n=5&seed=3").get_json()["images"]
    assert len(r1) == 5 and r1 == r2 and all(i["id"] in names for i in r1)
    for bad in ("page=0", "page=x", "per_page=1000", "q=" + "a" * 201, "q=red%00"):
        r = client.get(f"/api/datasets/catalog-test/images?{bad}")
        assert r.status_code == 400 and r.get_json()["message"], bad
    assert client.get("/api/datasets/nope/images").status_code == 404
    assert client.get("/api/datasets/catalog-test/random?n=0").status_code == 400


# ----------------------------------------------------------------------------------------------- search modes

MODE_BODIES = {
    "composed": {"caption": "is red with longer sleeves"},
    "sum": {"caption": "is red with longer sleeves"},
    "image": {},
    "text": {"caption": "a red casual t-shirt for men"},
    "tags": {"tags": {"baseColour": "Black", "gender": "Men"}},
}


@pytest.mark.parametrize("mode", list(MODE_BODIES))
def test_every_mode_answers(client, ref, mode):
    r = _search(client, mode=mode, reference=ref, **MODE_BODIES[mode])
    assert r.status_code == 200, r.get_json()
    d = r.get_json()
    assert list(d) == ["mode", "dataset", "caption", "query_text", "tags", "model", "results", "timings", "warning",
                       "reference", "ids", "scores", "urls", "group", "target", "understood",
                       "latency_ms"]  # in its order
    assert list(d["timings"]) == ["encode_text_ms", "text_cached", "fuse_ms", "wait_ms", "search_ms", "total_ms"]
    assert list(d["results"][0]) == ["rank", "id", "title", "attrs", "url", "thumb", "score"]
    assert d["mode"] == mode and len(d["results"]) == 24 == len(d["ids"]) == len(d["scores"]) == len(d["urls"])
    assert d["scores"] == sorted(d["scores"], reverse=True)
    assert all(u.startswith("/img/catalog-test/") for u in d["urls"])
    assert set(d["timings"]) >= {"encode_text_ms", "fuse_ms", "search_ms", "total_ms"}
    assert d["latency_ms"] >= d["timings"]["total_ms"] > 0
    if mode in ("composed", "sum", "image"):
        assert ref not in d["ids"]  # the reference itself is never a result
        assert d["reference"]["id"] == ref and d["reference"]["kind"] == "dataset"
    if mode == "tags":
        assert d["query_text"] == "a black item for men"
    assert d["group"] is None  # the catalogue has no CIRR groups
    assert d["target"] is None  # only computed when asked for (tests/test_captions.py)


def test_search_is_compose_then_index_search(client, engine, ref):
    """The API ranks exactly as model.compose + index.search do (no ranking code of its own), the metadata path
    (on by default) inside that search."""
    ds = engine.datasets["catalog-test"]
    row = ds.index.id_of(ref)
    caption = "in navy blue"
    for mode, method, comb in [("sum", "sum", None), ("composed", "combiner", engine.combiners["tiny"][0]),
                               ("image", "image", None)]:
        q = compose(engine.encoder, ds.index.features[row:row + 1], [caption], method, comb)
        terms = ds.metadata.terms(caption) if mode != "image" else None
        assert mode == "image" or terms.words["boost"]  # "navy blue" was read: the boost is exercised
        scores, ids = search(q, ds.index, 10, exclude=[[row]], boost=terms)
        d = _search(client, mode=mode, reference=ref, caption=caption, k=10, combiner="tiny").get_json()
        assert d["ids"] == [ds.index.names[i] for i in ids[0].tolist()], mode
        assert d["scores"] == pytest.approx(scores[0].tolist(), abs=1e-3)


def test_engine_run_answers_a_typed_result(engine, ref):
    req = engine.parse({"dataset": "catalog-test", "mode": "composed", "reference": ref, "caption": "is blue",
                        "k": 5, "text_encoder": "stage1"})
    res = engine.run(req)
    assert isinstance(res, SearchResult) and len(res.results) == 5 and all(isinstance(h, Hit) for h in res.results)
    assert res.model == ModelChoice("tiny", "stage1") and "trained with the base" in res.warning
    assert res.timings.total_ms > 0 and res.group is None and res.query_text == "is blue"
    cirr = engine.datasets["cirr-val"]
    member = next(n for n in cirr.index.names if n in cirr.groups)
    res = engine.run(engine.parse({"dataset": "cirr-val", "mode": "image", "reference": member}))
    assert res.model == ModelChoice(None, None) and res.group and all(isinstance(h, Hit) for h in res.group)


def test_torch_threads_are_set_once_not_per_request(client, engine, ref, monkeypatch):
    """Engine.load set this process's thread count; a request never sets (or restores) it, so one request
    cannot undo another's setting in the middle of its search under the threaded server."""
    assert engine.settings.query_threads == 1 and torch.get_num_threads() == 1
    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # as if something else had changed it
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    for mode, body in MODE_BODIES.items():
        assert _search(client, mode=mode, reference=ref, **body).status_code == 200
    assert calls == []


def test_k_and_query_string(client, ref):
    assert len(_search(client, mode="image", reference=ref, k=5).get_json()["results"]) == 5
    everything = _search(client, mode="image", reference=ref, k=200).get_json()
    assert len(everything["ids"]) == 59 and ref not in everything["ids"]  # all but the reference
    r = client.get("/api/search?dataset=catalog-test&mode=text&caption=black%20formal%20shoes&k=3")
    assert r.status_code == 200 and len(r.get_json()["ids"]) == 3
    r = client.get("/api/search?dataset=catalog-test&mode=tags&tags=gender:Men,usage:Casual")
    assert r.status_code == 200 and r.get_json()["query_text"] == "a casual item for men"
    r = client.post("/api/search", data={"dataset": "catalog-test", "mode": "text", "caption": "red"})
    assert r.status_code == 200  # form fields work as well


def test_model_options(client, ref):
    base = _search(client, mode="text", caption="white sports shoes", text_encoder="base").get_json()
    s1 = _search(client, mode="text", caption="white sports shoes", text_encoder="stage1").get_json()
    assert base["model"]["text_encoder"] == "base" and s1["model"]["text_encoder"] == "stage1"
    assert base["scores"] != s1["scores"]
    paired = _search(client, mode="composed", reference=ref, caption="is blue", combiner="tiny-s1").get_json()
    assert paired["model"] == {"combiner": "tiny-s1", "text_encoder": "stage1"} and paired["warning"] is None
    mixed = _search(client, mode="composed", reference=ref, caption="is blue", combiner="tiny-s1",
                    text_encoder="base").get_json()
    assert mixed["model"]["text_encoder"] == "base" and "stage1" in mixed["warning"]
    default = _search(client, mode="composed", reference=ref, caption="is blue").get_json()
    assert default["model"] == {"combiner": "tiny", "text_encoder": "base"}
    assert _search(client, mode="composed", reference=ref, caption="x", text_encoder="auto").status_code == 200


def test_text_encodings_are_cached(client, engine):
    caption = "a caption only this test uses"
    first = _search(client, mode="text", caption=caption).get_json()["timings"]
    second = _search(client, mode="text", caption=f"  {caption} ").get_json()["timings"]
    assert first["text_cached"] is False and second["text_cached"] is True
    stage1 = _search(client, mode="text", caption=caption, text_encoder="stage1").get_json()["timings"]
    assert stage1["text_cached"] is False  # cached per text encoder


# ----------------------------------------------------------------------------------------------- bad input

BAD = [
    # (description, body, status, words in the message)
    ("unknown dataset", {"dataset": "nope", "mode": "text", "caption": "red"}, 404, "unknown dataset"),
    ("unknown reference", {"mode": "image", "reference": "no-such-id"}, 404, "not in dataset"),
    ("path as reference", {"mode": "image", "reference": "../../etc/passwd"}, 404, "not in dataset"),
    ("unknown upload", {"mode": "image", "upload": "0" * 32}, 404, "does not exist"),
    ("malformed upload id", {"mode": "image", "upload": "../uploads/x"}, 404, "does not exist"),
    ("missing caption", {"mode": "text"}, 400, "missing"),
    ("empty caption", {"mode": "text", "caption": ""}, 400, "empty"),
    ("blank caption", {"mode": "sum", "reference": "REF", "caption": "   \t "}, 400, "empty"),
    ("caption of 1001 chars", {"mode": "text", "caption": "a" * 1001}, 400, "1001 characters"),
    ("caption of 5000 chars", {"mode": "composed", "reference": "REF", "caption": "b" * 5000}, 400, "at most"),
    ("control character", {"mode": "text", "caption": "red\x00shirt"}, 400, "control character"),
    ("newline inside", {"mode": "text", "caption": "red\nshirt"}, 400, "control character"),
    ("escape character", {"mode": "text", "caption": "red \x1b[31m"}, 400, "control character"),
    ("caption not a string", {"mode": "text", "caption": ["red"]}, 400, "must be a string"),
    ("unknown mode", {"mode": "magic", "caption": "red"}, 400, "unknown mode"),
    ("no reference", {"mode": "composed", "caption": "is red"}, 400, "needs a reference"),
    ("reference and upload", {"mode": "image", "reference": "REF", "upload": "0" * 32}, 400, "not both"),
    ("k zero", {"mode": "text", "caption": "red", "k": 0}, 400, "between"),
    ("k too big", {"mode": "text", "caption": "red", "k": 100000}, 400, "between"),
    ("k not a number", {"mode": "text", "caption": "red", "k": "many"}, 400, "integer"),
    ("k boolean", {"mode": "text", "caption": "red", "k": True}, 400, "integer"),
    ("no tags", {"mode": "tags"}, 400, "at least one tag"),
    ("empty tags", {"mode": "tags", "tags": {}}, 400, "at least one tag"),
    ("unknown tag attribute", {"mode": "tags", "tags": {"fabric": "Silk"}}, 400, "unknown tag attribute"),
    ("unknown tag value", {"mode": "tags", "tags": {"baseColour": "Ultraviolet"}}, 400, "unknown baseColour"),
    ("tags on CIRR", {"dataset": "cirr-val", "mode": "tags", "tags": {"gender": "Men"}}, 400, "no attributes"),
    ("unknown combiner", {"mode": "composed", "reference": "REF", "caption": "x", "combiner": "big"}, 400,
     "unknown combiner"),
    ("unknown text encoder", {"mode": "text", "caption": "x", "text_encoder": "stage9"}, 400,
     "unknown text encoder"),
    ("metadata not a boolean", {"mode": "text", "caption": "red", "metadata": "yes"}, 400, "must be a boolean"),
]


@pytest.mark.parametrize("what,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_search_input(client, ref, what, body, status, words):
    body = {k: (ref if v == "REF" else v) for k, v in body.items()}
    r = _search(client, **body)
    assert r.status_code == status, r.get_json()
    d = r.get_json()
    assert d["status"] == status and words in d["message"], d


def test_bad_bodies_and_routes(client):
    r = client.post("/api/search", data="{not json", content_type="application/json")
    assert r.status_code == 400 and "not valid JSON" in r.get_json()["message"]
    r = client.post("/api/search", json=["mode", "text"])
    assert r.status_code == 400 and "JSON object" in r.get_json()["message"]
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"] == "Not Found"
    r = client.get("/api/upload")
    assert r.status_code == 405 and r.get_json()["status"] == 405
    r = client.delete("/api/search")
    assert r.status_code == 405


def test_images_are_served_by_id_only(client, engine, ref):
    r = client.get(f"/img/catalog-test/{ref}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.data[:2] == b"\xff\xd8"
    r = client.get(f"/thumb/catalog-test/{ref}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and "max-age" in r.headers["Cache-Control"]
    cirr = engine.datasets["cirr-val"].index.names[0]
    r = client.get(f"/thumb/cirr-val/{cirr}")  # PNG source: re-encoded as a JPEG thumbnail
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).format == "JPEG"
    assert client.get(f"/img/cirr-val/{cirr}").mimetype == "image/png"
    not_indexed = "10000"  # a real catalogue id, but not among the 60 indexed test images
    assert not_indexed not in engine.datasets["catalog-test"].index
    for path in (f"/img/catalog-test/{not_indexed}", "/img/catalog-test/../../../etc/passwd",
                 "/img/catalog-test/%2e%2e/%2e%2e/etc/passwd", "/img/catalog-test/images/15970.jpg",
                 "/thumb/nope/1", "/img/nope/1", "/uploads/../app.py", "/uploads/" + "f" * 32,
                 "/uploads/not-an-id/thumb"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.is_json, path


# ----------------------------------------------------------------------------------------------- uploads

def test_upload_round_trip(client, engine, catalog_root, ref, tmp_path):
    data = _jpeg(catalog_root / "images" / f"{ref}.jpg")
    r = _upload(client, data, "anything.txt")  # the name does not matter: the bytes are sniffed
    assert r.status_code == 201, r.get_json()
    up = r.get_json()
    uid = up["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", uid) and up["format"] == "JPEG" and up["encode_ms"] > 0
    folder = engine.uploads.folder
    npy = f"{uid}.{engine.uploads.tag}.raw.npy"
    assert sorted(p.name for p in folder.glob(f"{uid}*")) == sorted([f"{uid}.jpg", npy])
    img = client.get(up["url"])
    assert img.status_code == 200 and img.mimetype == "image/jpeg"
    assert client.get(up["thumb"]).status_code == 200
    # Searching from the upload: the same photo comes first, the upload id works for every dataset.
    d = _search(client, mode="image", upload=uid).get_json()
    assert d["ids"][0] == ref and d["scores"][0] > 0.98 and d["reference"]["kind"] == "upload"
    assert d["timings"]["encode_text_ms"] == 0
    d = _search(client, mode="composed", upload=uid, caption="is blue").get_json()
    assert len(d["ids"]) == 24 and ref in d["ids"]  # an upload is not in the index: nothing to exclude
    assert _search(client, dataset="cirr-val", mode="image", upload=uid).status_code == 200
    # Features are kept on disk: a cold cache reads the .npy instead of re-encoding.
    engine.uploads.cache = LRU(8)
    feats = engine.uploads.features(uid)
    assert feats.shape == (1, engine.encoder.dim)
    assert torch.allclose(feats, torch.from_numpy(__import__("numpy").load(folder / npy)))


def test_upload_formats_are_normalised(client, engine):
    r = _upload(client, _png(mode="RGBA", colour=(0, 0, 255, 0)), "x.png")  # transparent -> white, not black
    assert r.status_code == 201
    stored = Image.open(engine.uploads.path(r.get_json()["id"]))
    assert stored.format == "JPEG" and stored.mode == "RGB" and min(stored.getpixel((5, 5))) > 240
    big = io.BytesIO()
    Image.new("RGB", (1800, 1200), "green").save(big, "WEBP")
    r = _upload(client, big.getvalue())
    assert r.status_code == 201 and max(r.get_json()["width"], r.get_json()["height"]) == 1024
    exif = io.BytesIO()
    im = Image.new("RGB", (40, 20), "red")
    ex = im.getexif()
    ex[0x0112] = 6  # orientation: rotate 90 degrees
    im.save(exif, "JPEG", exif=ex)
    r = _upload(client, exif.getvalue())
    assert (r.get_json()["width"], r.get_json()["height"]) == (20, 40)  # EXIF orientation applied
    raw = client.post("/api/upload", data=_png(mode="RGB", colour=(1, 2, 3)), content_type="application/octet-stream")
    assert raw.status_code == 201  # the raw image as the body works too


def test_bad_uploads(client, engine, catalog_root, ref):
    before = len(list(engine.uploads.folder.iterdir()))
    cases = [
        (b"", 400, "empty"),
        (b"hello, I am not an image at all" * 10, 400, "not an image"),
        (b"%PDF-1.4\n" + b"0" * 500, 400, "not an image"),
        (_jpeg(catalog_root / "images" / f"{ref}.jpg")[:600], 400, "corrupt"),  # truncated JPEG
        (_png()[:60], 400, None),                                              # truncated PNG
    ]
    # A valid PNG header claiming more pixels than the limit (4,000,000 here): refused before decoding.
    bomb = io.BytesIO()
    Image.new("1", (2500, 2000)).save(bomb, "PNG")
    cases.append((bomb.getvalue(), 413, "pixels"))
    for data, status, words in cases:
        r = _upload(client, data)
        assert r.status_code == status, (data[:20], r.get_json())
        if words:
            assert words in r.get_json()["message"]
    r = client.post("/api/upload", data={"other": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "'file'" in r.get_json()["message"]
    big = b"\xff\xd8\xff" + b"0" * (10 * 1024 * 1024)
    r = _upload(client, big)
    assert r.status_code == 413 and "10 MB" in r.get_json()["message"]
    r = client.post("/api/upload", data=big, content_type="application/octet-stream")
    assert r.status_code == 413
    assert len(list(engine.uploads.folder.iterdir())) == before  # nothing stored for refused uploads


# ----------------------------------------------------------------------------------------------- CIRR groups

def test_cirr_group_row(client, engine):
    ds = engine.datasets["cirr-val"]
    refname = next(n for n in ds.index.names if n in ds.groups)
    members = set(ds.groups[refname]) - {refname}
    d = client.post("/api/search", json={"dataset": "cirr-val", "mode": "composed", "reference": refname,
                                         "caption": "show three bottles of soft drink"}).get_json()
    group = d["group"]
    assert {g["id"] for g in group} == members and refname not in d["ids"]
    assert [g["score"] for g in group] == sorted((g["score"] for g in group), reverse=True)
    # Group scores are the same query's scores as in the full ranking.
    full = dict(zip(d["ids"], d["scores"]))
    assert all(g["score"] == pytest.approx(full[g["id"]], abs=1e-4) for g in group if g["id"] in full)
    assert client.post("/api/search", json={"dataset": "cirr-val", "mode": "text", "caption": "two dogs"}
                       ).get_json()["group"] is None  # no reference, no group


def test_rank_group_with_real_cirr_groups(tmp_path, cirr_formats):
    """rank_group over the real CIRR val img_set lists, against brute force, reference excluded."""
    triplets = cirr_triplets(cirr_formats, "val")[:200]
    names = sorted({m for t in triplets for m in t.group} | {t.reference for t in triplets})
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(len(names), 16, generator=g), dim=-1).half()
    index = FeatureIndex(feats, names, {})
    groups = cirr_groups(cirr_formats, "val")  # every member of an img_set maps to (its first) set
    ds = Dataset(DatasetSource("cirr-val", tmp_path, "cirr", "val"), index, [], groups)
    for t in triplets[:50]:
        q = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=-1)
        ranked = rank_group(q, ds, t.reference)
        members = [m for m in groups[t.reference] if m != t.reference]
        assert sorted(n for n, _ in ranked) == sorted(members) and t.reference not in dict(ranked)
        brute = sorted(members, key=lambda m: -(q[0] @ feats[names.index(m)].float()).item())
        assert [n for n, _ in ranked] == brute
    assert rank_group(q, ds, "not-a-member") == []


# ----------------------------------------------------------------------------------------------- metrics, config

def test_metrics_count_queries_latency_and_errors(app, ref):
    client = app.test_client()
    before = client.get("/api/metrics").get_json()
    _search(client, mode="image", reference=ref)
    _search(client, mode="text", caption="black watch")
    _search(client, mode="text", caption="")
    client.get("/img/catalog-test/nope")
    after = client.get("/api/metrics").get_json()
    assert after["queries"] == before["queries"] + 2
    assert after["queries_by_mode"]["image"] == before["queries_by_mode"].get("image", 0) + 1
    assert after["errors"] == before["errors"] + 2
    assert after["errors_by_status"]["400"] == before["errors_by_status"].get("400", 0) + 1
    assert after["latency_ms"]["p50"] > 0 and after["latency_ms"]["p95"] >= after["latency_ms"]["p50"]
    assert {"entries", "hits", "misses"} <= set(after["text_cache"])


def test_metrics_are_per_app():
    a, b = Metrics(), Metrics()
    a.query("text", 5.0)
    a.error(400)
    assert b.snapshot()["queries"] == 0 and a.snapshot()["queries"] == 1 and a.snapshot()["errors"] == 1


def test_without_a_combiner_composed_is_unavailable(demo_world, tmp_path):
    app = create_app(Settings(**{**demo_world, "combiners": {}, "text_checkpoints": {}}, upload_dir=tmp_path,
                               warm_up=False))
    client = app.test_client()
    d = client.get("/api/datasets").get_json()
    assert not d["models"]["composed_available"]
    assert [m["available"] for m in d["modes"]] == [False, True, True, True, True]
    ref = app.extensions["cir"].datasets["catalog-test"].index.names[3]
    r = _search(client, mode="composed", reference=ref, caption="is red")
    assert r.status_code == 400 and "unavailable" in r.get_json()["message"]
    assert _search(client, mode="sum", reference=ref, caption="is red").status_code == 200
    assert _search(client, reference=ref, caption="is red").get_json()["mode"] == "sum"  # default mode


def test_datasets_file(demo_world, tmp_path):
    listing = tmp_path / "datasets.json"
    listing.write_text(json.dumps({"datasets": [
        {"name": "my-cirr", "label": "My CIRR", "features": str(demo_world["features_root"] / "cirr-val")}]}))
    app = create_app(Settings(**{**demo_world, "default_dataset": None}, datasets_file=listing,
                               upload_dir=tmp_path / "u", warm_up=False))
    d = app.test_client().get("/api/datasets").get_json()
    assert [x["name"] for x in d["datasets"]] == ["my-cirr"] and d["default"] == "my-cirr"
    assert d["datasets"][0]["label"] == "My CIRR" and d["datasets"][0]["has_groups"]


def _copy_features(demo_world, root):
    import shutil
    for name in ("catalog-test", "cirr-val"):
        shutil.copytree(demo_world["features_root"] / name, root / name)
    return root


def test_damaged_datasets_are_reported_not_dropped(demo_world, tmp_path):
    """A folder that was found but fails to load makes health "degraded", naming it and saying why."""
    root = _copy_features(demo_world, tmp_path / "features")
    feats = root / "cirr-val" / "features.safetensors"
    feats.write_bytes(feats.read_bytes()[:feats.stat().st_size // 2])  # truncated
    threads = torch.get_num_threads()
    try:
        app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False,
                                  query_threads=2))
        assert torch.get_num_threads() == 2  # set once, at start-up
    finally:
        torch.set_num_threads(threads)
    h = app.test_client().get("/api/health").get_json()
    assert h["status"] == "degraded" and h["datasets"] == ["catalog-test"] and h["backends"]["catalog-test"]["ok"]
    assert list(h["damaged"]) == ["cirr-val"]
    bad = h["damaged"]["cirr-val"]
    assert bad["status"] == "degraded" and bad["folder"] == str(root / "cirr-val")
    assert "features.safetensors is damaged or was altered" in bad["reason"]  # its checksum says so first
    assert _search(app.test_client(), mode="text", caption="red").status_code == 200  # the rest still serves


def _drop_checksums(folder: Path) -> None:
    """The folder as an older version extracted it: no checksums in its manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("checksums")
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage,checksums,words", [
    ("names", True, "names.json is damaged or was altered"), ("names", False, "invalid JSON"),
    ("manifest", True, "unreadable manifest.json"),
    ("truncate", True, "features.safetensors is damaged or was altered"), ("truncate", False, "truncated")])
def test_each_kind_of_damage_is_named(demo_world, tmp_path, damage, checksums, words):
    root = _copy_features(demo_world, tmp_path / "features")
    folder = root / "catalog-test"
    if not checksums:
        _drop_checksums(folder)
    if damage == "names":
        (folder / "names.json").write_text('["15970", ')
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{not json")
    else:
        f = folder / "features.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False))
    h = app.test_client().get("/api/health").get_json()
    assert h["status"] == "degraded" and h["datasets"] == ["cirr-val"]
    assert h["damaged"]["catalog-test"]["folder"] == str(folder) and words in h["damaged"]["catalog-test"]["reason"]


def test_all_damaged_is_a_start_up_error_naming_them(demo_world, tmp_path):
    root = _copy_features(demo_world, tmp_path / "features")
    _drop_checksums(root / "catalog-test")
    (root / "catalog-test" / "names.json").write_text("{")
    feats = root / "cirr-val" / "features.safetensors"
    feats.write_bytes(feats.read_bytes()[:64])
    with pytest.raises(ValueError, match="found but damaged") as e:
        create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u"))
    msg = str(e.value)
    assert str(root / "catalog-test") in msg and str(root / "cirr-val") in msg and "invalid JSON" in msg
    assert "features.safetensors is damaged or was altered" in msg
    assert "--out FEATURES" not in msg  # the folders are named, not the generic "extract something" hint


def test_no_index_is_a_clear_error(demo_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature index"):
        create_app(Settings(**{**demo_world, "features_root": tmp_path / "empty"}, upload_dir=tmp_path / "u"))


def test_settings_from_env(tmp_path):
    cfg = Settings.from_env({"CIR_FEATURES": str(tmp_path), "CIR_MAX_UPLOAD_MB": "2", "CIR_DEFAULT_K": "12",
                             "CIR_COMBINERS": "a=x.safetensors,y/b.safetensors", "CIR_TEXT_ENCODERS": "",
                             "CIR_DATA_ROOT": "/data", "CIR_QUERY_THREADS": "2", "CIR_UPLOAD_DIR": "~/up",
                             "CIR_DATASETS_FILE": "d.json", "CIR_MAX_PIXELS": "1000", "CIR_TEXT_CACHE": "7",
                             "CIR_ENCODER": "hf:x", "CIR_DEVICE": "cpu", "CIR_DEFAULT_DATASET": "cirr-val",
                             "CIR_INDEX_BACKEND": "faiss", "CIR_WARM_UP": "off", "CIR_MAX_K": "50"})
    assert cfg.features_root == tmp_path and cfg.max_upload_bytes == 2 * 1024 * 1024 and cfg.default_k == 12
    assert cfg.combiners == {"a": "x.safetensors", "b": "y/b.safetensors"} and cfg.text_checkpoints == {}
    assert cfg.data_root == "/data" and cfg.query_threads == 2 and cfg.upload_dir == Path("~/up").expanduser()
    assert (cfg.datasets_file, cfg.max_image_pixels, cfg.text_cache_size) == (Path("d.json"), 1000, 7)
    assert (cfg.encoder, cfg.device, cfg.default_dataset, cfg.index_backend) == ("hf:x", "cpu", "cirr-val", "faiss")
    assert cfg.warm_up is False and cfg.max_k == 50
    default = Settings.from_env({"CIR_DATA_ROOT": "", "CIR_FEATURES": ""})  # empty: unset, except name=path lists
    assert default == Settings() and default.combiners is None  # None: the shipped checkpoints that exist
    for env, words in [({"CIR_DEFAULT_K": "many"}, "CIR_DEFAULT_K"), ({"CIR_WARM_UP": "maybe"}, "CIR_WARM_UP"),
                       ({"CIR_MAX_UPLOAD_MB": "x"}, "CIR_MAX_UPLOAD_MB"), ({"CIR_DEFAULT_K": "500"}, "default_k"),
                       ({"CIR_MAX_PIXELS": "0"}, "max_image_pixels")]:
        with pytest.raises(ValueError, match=words):
            Settings.from_env(env)


def _cli_settings(argv, environ=None):
    args = parser().parse_args(argv)
    return Settings.from_args(args, Settings.from_env(environ or {}))


def test_flags_override_the_environment(tmp_path):
    env = {"CIR_DEFAULT_K": "12", "CIR_COMBINERS": "a=x.safetensors", "CIR_MAX_UPLOAD_MB": "3"}
    assert _cli_settings([], env) == Settings.from_env(env)  # no flags: the environment as it is
    s = _cli_settings(["-k", "5", "--combiner", "b=y.safetensors", "--combiner", "z/c.safetensors",
                       "--max-upload-mb", "0.5", "--features", str(tmp_path), "--text-encoder", "s=t.safetensors",
                       "--no-warm-up", "--query-threads", "0", "--data-root", "/d", "--max-pixels", "99"], env)
    assert s.default_k == 5 and s.combiners == {"b": "y.safetensors", "c": "z/c.safetensors"}
    assert s.max_upload_bytes == 512 * 1024 and s.features_root == tmp_path
    assert s.text_checkpoints == {"s": "t.safetensors"}
    assert s.warm_up is False and s.query_threads == 0 and s.data_root == "/d" and s.max_image_pixels == 99
    with pytest.raises(SystemExit):
        _cli_settings(["--max-pixels", "lots"])  # argparse: invalid value, exit 2


def test_one_declaration_adds_an_option():
    """A field declared with option(...) gets its variable and its flag, nothing else to edit."""
    import argparse
    from dataclasses import dataclass


    @dataclass
    class More(Settings):
        greeting: str = option("hello", "what the page says first", env="CIR_GREETING", flag="--greeting")

    assert More.from_env({"CIR_GREETING": "hi"}).greeting == "hi"
    p = argparse.ArgumentParser()
    More.add_arguments(p)
    assert More.from_args(p.parse_args(["--greeting", "x"]), More()).greeting == "x"
    assert "$CIR_GREETING" in p.format_help() and "default: hello" in p.format_help()


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--data-root", "--features", "--datasets-file", "--encoder", "--device",
                 "--combiner", "--text-encoder", "--upload-dir", "--max-upload-mb", "--max-pixels", "--no-extract",
                 "--prepare-only", "--query-threads", "--default-dataset", "-k", "--text-cache", "--index-backend",
                 "--reextract-unverified"):
        assert flag in out
    for name, opt in Settings.options():  # every option with a flag has one, naming its variable
        assert (opt.flag is None or opt.flag in out) and (opt.env is None or f"${opt.env}" in out), name


# ----------------------------------------------------------------------------------------------- units

def test_tags_caption_phrasing():
    assert tags_caption({"baseColour": "Red", "usage": "Casual", "articleType": "Tshirts", "gender": "Men"}) == \
        "a red casual t-shirt for men"
    assert tags_caption({"articleType": "Jeans", "baseColour": "Navy Blue"}) == "navy blue jeans"
    assert tags_caption({"gender": "Women", "usage": "Ethnic"}) == "an ethnic item for women"


def test_validate_text():
    assert validate_text("  is red  ") == "is red"
    assert validate_text("é" * MAX_CAPTION_CHARS) == "é" * MAX_CAPTION_CHARS  # the limit itself is allowed
    for bad in (None, "", " ", "a" * (MAX_CAPTION_CHARS + 1), "a\tb", "\x7f", "a\ud800", 5):
        with pytest.raises(BadInput):
            validate_text(bad)


def test_features_of_other_heads_are_never_served(demo_world, tmp_path, caplog):
    """An index extracted with other lite heads (same name and config, other weights) is skipped, not mixed
    with this encoder's text and uploads."""
    import shutil
    root = tmp_path / "features"
    for name in ("catalog-test", "cirr-val"):
        shutil.copytree(demo_world["features_root"] / name, root / name)
    mf = root / "catalog-test" / "manifest.json"
    manifest = json.loads(mf.read_text())
    assert manifest["image_weights"] == demo_world["encoder_obj"].describe()["image_weights"]
    mf.write_text(json.dumps({**manifest, "image_weights": "0" * 16}))
    with caplog.at_level("WARNING"):
        app = create_app(Settings(**{**demo_world, "features_root": root, "default_dataset": None},
                                   upload_dir=tmp_path / "u", warm_up=False))
    names = [d["name"] for d in app.test_client().get("/api/datasets").get_json()["datasets"]]
    assert names == ["cirr-val"]
    assert "catalog-test: extracted with other lite weights or settings (image_weights)" in caplog.text


def test_combiners_pair_with_the_same_side_however_it_is_written(tmp_path):
    """The engine pairs a Combiner's recorded text side with a loaded one by identity, not by string."""

    class Side:
        def __init__(self, side):
            self.text_side = side

        def with_text(self, side):
            return Side(TextSide.of(side))

    ckpt = tmp_path / "s1.safetensors"
    ckpt.write_bytes(b"")
    sides = {"base": Side(BASE_TEXT), "mine": Side(TextSide.of(ckpt)), "shipped": Side(TextSide.of(STAGE1_TEXT))}
    enc = sides["base"]
    assert _paired_side(TextSide.of("base"), enc, sides) == "base"
    assert _paired_side(TextSide.of(str(tmp_path / "." / "s1.safetensors")), enc, sides) == "mine"
    assert _paired_side(TextSide.of(STAGE1_TEXT.name), enc, sides) == "shipped"  # as combiner-stage1 records it
    assert _paired_side(TextSide.of(tmp_path / "missing.safetensors"), enc, sides) is None
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"")
    assert _paired_side(TextSide.of(other), enc, sides) == "other" and sides["other"].text_side == TextSide.of(other)
