"""The classical bof encoder (bof.py) through the project's normal path, and the two-stage label retrieval."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cir import encoders
from cir.data import ImageRecord, catalog_images
from cir.encoders import available_models
from cir.encoders.bof import BofConfig, TextUnsupported, fit
from cir.evaluation.label_retrieval import LabelClusters, label_precision
from cir.extraction.local import ensure_index
from cir.index import search
from cir.paths import WEIGHTS_DIR
from cir.serving.settings import Settings
from cir.web.app import create_app

TYPES = ("Watches", "Tshirts", "Casual Shoes")


def _records(root, split: str, per_type: int) -> list[ImageRecord]:
    """The first `per_type` images of each of TYPES in `split`, in file order (deterministic)."""
    out = []
    for t in TYPES:
        out += [r for r in catalog_images(root, split) if r.attrs["articleType"] == t][:per_type]
    return out


@pytest.fixture(scope="module")
def small_model(catalog_root, tmp_path_factory):
    """A small vocabulary/PCA fitted on 60 real train images, saved and loaded back through encoders.load."""
    model, summary = fit(_records(catalog_root, "train", 20), BofConfig(words=24, dim=16),
                             vocab_images=30, per_image=32, pca_images=60)
    assert summary["pca_images"] == 60 and summary["input_dim"] == 24 + 1764 + 128 + 18
    path = tmp_path_factory.mktemp("bof") / "bof.safetensors"
    model.save(path)
    return encoders.load("bof", heads=path)


def test_fit_save_load_round_trip(small_model, catalog_root):
    assert small_model.name == "bof" and small_model.dim == 16
    im = Image.open(_records(catalog_root, "test", 1)[0].path)
    a, b = small_model.encode_images([im]), small_model.encode_images([im.convert("RGBA")])
    assert a.shape == (1, 16) and torch.allclose(a.norm(dim=1), torch.ones(1), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)  # transparency is composited the project's way, same pixels here
    raw = small_model.encode_images([im], raw=True)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), a, atol=1e-6)
    assert small_model.describe()["image_weights"] == small_model.model.fingerprint()


def test_extract_index_and_search(small_model, catalog_root, tmp_path):
    """extract_features builds a bof index; index.search ranks it: each image finds itself first, and its
    nearest other image is mostly of its own type (three very different types)."""
    recs = _records(catalog_root, "test", 8)
    idx = ensure_index(recs, small_model, tmp_path / "catalog-test-bof", workers=0)
    assert len(idx) == len(recs) and idx.dim == 16
    assert idx.manifest["encoder"] == "bof"
    q = small_model.encode_images([Image.open(r.path) for r in recs])
    _, ids = search(q, idx, 2)
    assert ids[:, 0].tolist() == list(range(len(recs)))  # itself, first
    types = [r.attrs["articleType"] for r in recs]
    same = np.mean([types[j] == types[i] for i, j in enumerate(ids[:, 1].tolist())])
    assert same > 0.6, same  # chance is 1/3
    # A second run finds the index up to date; a refitted model (other fingerprint) would not.
    assert len(ensure_index(recs, small_model, tmp_path / "catalog-test-bof", workers=0)) == len(recs)


def test_text_is_refused(small_model):
    with pytest.raises(TextUnsupported, match="image-only"):
        small_model.encode_texts(["a red shirt"])
    with pytest.raises(TextUnsupported, match="image-only"):
        small_model.with_text("stage1")
    assert small_model.with_text("base") is small_model and small_model.with_text(None) is small_model


def test_shipped_weights_load():
    enc = encoders.load("bof")
    meta = enc.describe()
    assert enc.dim == meta["dim"] == meta["config"]["dim"] and len(meta["image_weights"]) == 16
    assert (WEIGHTS_DIR / "bof.train.json").exists()  # how it was fitted, on which split


def test_demo_serves_bof_for_image_search_only(small_model, catalog_root, tmp_path):
    """The demo on a bof index: image search (by id and by upload) works, text and composed modes are refused
    with a message naming the encoder, the default mode is image and only it is offered."""
    recs = _records(catalog_root, "test", 8)
    ensure_index(recs, small_model, tmp_path / "features" / "catalog-test", workers=0,
                 info={"dataset": "catalog", "split": "test", "data_root": str(catalog_root)})
    app = create_app(Settings(features_root=tmp_path / "features", encoder_obj=small_model, combiners={},
                              text_checkpoints={}, default_dataset="catalog-test", data_root=None,
                              upload_dir=tmp_path / "up"))
    client = app.test_client()
    info = client.get("/api/datasets").get_json()
    assert [m["name"] for m in info["modes"] if m["available"]] == ["image"]
    assert info["models"]["image_only"] and info["models"]["default_mode"] == "image"
    ref = recs[3].name
    d = client.post("/api/search", json={"dataset": "catalog-test", "reference": ref}).get_json()
    assert d["mode"] == "image" and ref not in d["ids"] and len(d["ids"]) == len(recs) - 1
    for mode in ("text", "sum", "composed", "tags"):
        r = client.post("/api/search", json={"mode": mode, "reference": ref, "caption": "is red", "tags": ["red"]})
        assert r.status_code == 400 and "image-only" in r.get_json()["message"], (mode, r.get_json())
    up = client.post("/api/upload", data={"file": (recs[3].path.open("rb"), "a.jpg")},
                     content_type="multipart/form-data")
    assert up.status_code == 201, up.get_json()
    d = client.post("/api/search", json={"mode": "image", "upload": up.get_json()["id"]}).get_json()
    assert d["ids"][0] == ref and d["scores"][0] > 0.99


def test_missing_weights_say_how_to_fit(tmp_path):
    with pytest.raises(FileNotFoundError, match="bof.py fit"):
        encoders.load("bof", heads=tmp_path / "none.safetensors")


# ----------------------------------------------------------------------------------------------- two-stage

def test_label_clusters_on_synthetic_blobs():
    """Three separated blobs, labelled with 10% noise: clusters are named by the majority, a label query
    returns its blob ranked by distance to the centre, an unknown label says which labels exist."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32) * 3
    x = np.concatenate([c + 0.1 * rng.standard_normal((30, 8)).astype(np.float32) for c in centres])
    labels = [lab for lab in "abc" for _ in range(30)]
    noisy = [("c" if i % 10 == 0 else lab) for i, lab in enumerate(labels)]
    lc = LabelClusters.fit(x, noisy, seed=0)
    assert sorted(n for n in lc.names) == ["a", "b", "c"]
    rows = lc.query("b", x)
    assert sorted(rows.tolist()) == list(range(30, 60))
    dist = np.linalg.norm(x[rows] - lc.centres[lc.names.index("b")], axis=1)
    assert np.all(np.diff(dist) >= 0)
    assert len(lc.query("b", x, k=5)) == 5
    with pytest.raises(ValueError, match="known labels: a, b, c"):
        lc.query("z", x)
    m = label_precision(lc, x, labels, ["a", "b", "c", "z"], k=10)
    assert m["P@10"] == 75.0 and m["precision"] == 75.0  # three perfect answers, "z" counts 0
    assert m["labels_findable"] == 3 and m["queries"] == 4


def test_label_clusters_on_real_bof_features(catalog_root):
    """Stage 1 on shipped-bof features of 60 real train images, stage 2 on 24 test images: well above chance."""
    enc = encoders.load("bof")
    train, test = _records(catalog_root, "train", 20), _records(catalog_root, "test", 8)

    def feats(recs):
        return enc.encode_images([Image.open(r.path) for r in recs]).numpy()

    lc = LabelClusters.fit(feats(train), [r.attrs["articleType"] for r in train], seed=0)
    assert len(lc.names) == 3
    m = label_precision(lc, feats(test), [r.attrs["articleType"] for r in test], list(TYPES), k=5)
    assert m["precision"] > 60, m


def test_registry_names_bof_and_refuses_its_misuse():
    assert "bof" in available_models()
    with pytest.raises(ValueError, match="own preprocessing"):
        encoders.load("bof", preprocess="targetpad")
    with pytest.raises(TextUnsupported, match="image-only"):
        encoders.load("bof", text="stage1")
