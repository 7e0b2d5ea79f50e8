"""serving.engine with damaged weights and data (issue 20): a truncated, garbage or NaN Combiner or stage-1 text
head is skipped with a warning naming its file and the server boots; a model that computes NaN anyway answers a
500 that says so, and no answer ever carries NaN. A features file truncated while serving changes no answer and
is reported; folders without checksums are "unverified", duplicate ids and a manifest that is a symlink loop
are damaged, with their reason."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cir.combiner import Combiner
from cir.data import folder_images
from cir.extraction import ensure_index
from cir.serving import explanations as explanations_module
from cir.serving.engine import PairedCombiner
from cir.serving.settings import Settings
from cir.utils import save_tensors, sha256_file
from cir.web.app import create_app


def _copy_checkpoint(src: str, dst_dir: Path, name: str) -> Path:
    """A copy of a checkpoint and its JSON beside it, under `name`."""
    src_path = Path(src)
    dst = dst_dir / f"{name}.safetensors"
    shutil.copy(src_path, dst)
    shutil.copy(src_path.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all" * 10)
    elif how == "nan":   # the header stays valid: only the numbers are wrong
        tensors = load_file(path)
        first = sorted(tensors)[0]
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_tensors(path, tensors, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def damaged_weights(demo_world, tmp_path_factory):
    """Combiners and text heads damaged each way, beside a good one of each."""
    root = tmp_path_factory.mktemp("weights")
    combiners = {"good": demo_world["combiners"]["tiny"]}
    texts = {"stage1": demo_world["text_checkpoints"]["stage1"]}
    for how in ("truncated", "garbage", "nan"):
        c = _copy_checkpoint(demo_world["combiners"]["tiny"], root, f"comb-{how}")
        t = _copy_checkpoint(demo_world["text_checkpoints"]["stage1"], root, f"text-{how}")
        _damage(c, how)
        _damage(t, how)
        combiners[how], texts[how] = str(c), str(t)
    bad_json = _copy_checkpoint(demo_world["combiners"]["tiny"], root, "comb-bad-json")
    bad_json.with_suffix(".json").write_text("{not json")
    combiners["bad-json"] = str(bad_json)
    return combiners, texts


@pytest.fixture(scope="module")
def app(demo_world, damaged_weights, tmp_path_factory):
    combiners, texts = damaged_weights
    threads = torch.get_num_threads()
    yield create_app(Settings(**{**demo_world, "combiners": combiners, "text_checkpoints": texts},
                              upload_dir=tmp_path_factory.mktemp("uploads"), warm_up=False))
    torch.set_num_threads(threads)


def test_damaged_weights_are_skipped_and_named(demo_world, damaged_weights, tmp_path, caplog):
    combiners, texts = damaged_weights
    with caplog.at_level("WARNING", logger="engine"):
        app = create_app(Settings(**{**demo_world, "combiners": combiners, "text_checkpoints": texts},
                                  upload_dir=tmp_path / "u", warm_up=False))
    h = app.test_client().get("/api/health").get_json()
    assert h["combiners"] == ["good"] and h["text_encoders"] == ["base", "stage1"]
    for how in ("truncated", "garbage", "nan"):
        assert any(combiners[how] in r.getMessage() and r.name == "engine" for r in caplog.records), how
        assert any(texts[how] in r.getMessage() for r in caplog.records), how
    assert any(combiners["bad-json"].replace(".safetensors", ".json") in r.getMessage() for r in caplog.records)
    assert "holds NaN or infinite values" in caplog.text and "not a readable safetensors file" in caplog.text


def test_a_model_computing_nan_answers_500_without_nan(app):
    """A Combiner that loaded finite but computes NaN (here: poisoned after loading) is never written out."""
    eng = app.extensions["cir"]
    poisoned = Combiner(eng.combiners["good"].combiner.cfg).eval()
    with torch.no_grad():
        for p in poisoned.parameters():
            p.fill_(float("nan"))
    eng.combiners["poisoned"] = PairedCombiner(poisoned, "base")
    try:
        ref = eng.datasets["catalog-test"].index.names[0]
        client = app.test_client()
        for route in ("/api/search", "/api/explain"):
            r = client.post(route + "?format=json", json={"dataset": "catalog-test", "mode": "composed",
                                                            "combiner": "poisoned", "reference": ref,
                                                            "caption": "is red", "result": ref})
            body = r.get_json()
            assert r.status_code == 500 and body["error"] == "DamagedModel", (route, body)
            assert "NaN or infinity" in body["message"] and b"NaN," not in r.data
            json.loads(r.data)   # valid JSON
        ok = client.post("/api/search", json={"dataset": "catalog-test", "mode": "composed", "combiner": "good",
                                              "reference": ref, "caption": "is red"})
        assert ok.status_code == 200 and all(isinstance(s, float) for s in ok.get_json()["scores"])
    finally:
        del eng.combiners["poisoned"]


# ----------------------------------------------------------------------------------------------- feature folders

def _served_copy(demo_world, root: Path) -> Path:
    for name in ("catalog-test", "cirr-val"):
        shutil.copytree(demo_world["features_root"] / name, root / name)
    return root


def test_a_feature_file_truncated_while_serving(demo_world, tmp_path):
    """`truncate -s 50%` on a served features file: searches go on with the same results (the verified copy in
    memory), and health reports the folder as changed, still serving."""
    root = _served_copy(demo_world, tmp_path / "features")
    app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False))
    client = app.test_client()
    assert client.get("/api/health").get_json()["status"] == "ok"
    body = {"dataset": "catalog-test", "mode": "text", "caption": "a red shirt", "k": 10}
    before = client.post("/api/search", json=body).get_json()
    f = root / "catalog-test" / "features.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    after = client.post("/api/search", json=body).get_json()
    assert after["ids"] == before["ids"] and after["scores"] == before["scores"]
    h = client.get("/api/health").get_json()
    assert h["status"] == "degraded" and h["datasets"] == ["catalog-test", "cirr-val"]
    bad = h["damaged"]["catalog-test"]
    assert bad["serving"] is True and bad["folder"] == str(root / "catalog-test")
    assert "features.safetensors changed on disk since it was loaded" in bad["reason"]


def test_folders_without_checksums_are_unverified_not_ok(demo_world, tmp_path):
    root = _served_copy(demo_world, tmp_path / "features")
    mf = root / "cirr-val" / "manifest.json"
    mf.write_text(json.dumps({k: v for k, v in json.loads(mf.read_text()).items() if k != "checksums"}))
    app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False))
    h = app.test_client().get("/api/health").get_json()
    assert h["status"] == "unverified" and list(h["unverified"]) == ["cirr-val"] and not h["damaged"]
    assert h["unverified"]["cirr-val"]["folder"] == str(root / "cirr-val")
    assert "records no checksums" in h["unverified"]["cirr-val"]["reason"]
    # with the command that extracts exactly this folder again, from what its manifest recorded
    assert (f"python3 extract_features.py --dataset cirr --split val --data-root {demo_world['features_root'].parent}"
            f"/cirr_dataset --out {root} --overwrite" in h["unverified"]["cirr-val"]["reason"])


def test_duplicate_ids_are_damaged_even_with_a_recomputed_checksum(demo_world, tmp_path):
    root = _served_copy(demo_world, tmp_path / "features")
    folder = root / "catalog-test"
    names = json.loads((folder / "names.json").read_text())
    names[1] = names[0]
    (folder / "names.json").write_text(json.dumps(names))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checksums"]["names.json"] = sha256_file(folder / "names.json")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    app = create_app(Settings(**{**demo_world, "features_root": root, "default_dataset": None},
                              upload_dir=tmp_path / "u", warm_up=False))
    h = app.test_client().get("/api/health").get_json()
    assert h["status"] == "degraded" and h["datasets"] == ["cirr-val"]
    assert f"lists image {names[0]!r} 2 times" in h["damaged"]["catalog-test"]["reason"]


def test_a_manifest_that_is_a_symlink_loop_is_damaged_with_its_reason(demo_world, tmp_path):
    root = _served_copy(demo_world, tmp_path / "features")
    mf = root / "cirr-val" / "manifest.json"
    mf.unlink()
    os.symlink("manifest.json", mf)
    app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False))
    h = app.test_client().get("/api/health").get_json()
    assert h["status"] == "degraded" and h["datasets"] == ["catalog-test"]
    assert "Too many levels of symbolic links" in h["damaged"]["cirr-val"]["reason"]


# ----------------------------------------------------------------------------------------------- explanations

def test_explanations_decode_at_the_size_they_need_and_are_bounded(demo_world, tmp_path, lite_encoder,
                                                                     monkeypatch):
    """A 12 MP photo of a folder dataset is explained at 1,024 px (it was decoded whole, then every pixel went
    through the overlay); when every explanation slot is taken, the next one waits, then gets 503."""
    photos, root = tmp_path / "photos", _served_copy(demo_world, tmp_path / "features")
    photos.mkdir()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(photos / "big.jpg", quality=90)
    Image.new("RGB", (300, 200), (30, 30, 200)).save(photos / "small.jpg")
    ensure_index(folder_images(photos), lite_encoder, root / "folder-photos", workers=0,
                 info={"dataset": "folder", "data_root": str(photos)})
    app = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u", warm_up=False,
                              explain_concurrency=1))
    client = app.test_client()
    body = {"dataset": "folder-photos", "mode": "text", "caption": "a red shirt", "result": "big.jpg"}
    r = client.post("/api/explain?format=json", json=body)
    assert r.status_code == 200 and r.get_json()["image_size"] == [1024, 768], r.get_json()
    with Image.open(io.BytesIO(client.post("/api/explain", json=body).data)) as png:
        assert png.size == (1024, 768)
    eng = app.extensions["cir"]
    monkeypatch.setattr(explanations_module, "EXPLAIN_WAIT_S", 0.05)
    body["caption"] = "a blue shirt"   # not rendered yet: the cache cannot answer it
    assert eng.explanations._slots.acquire(timeout=1)
    try:
        busy = client.post("/api/explain?format=json", json=body)
        assert busy.status_code == 503 and "busy explaining" in busy.get_json()["message"]
        assert busy.headers["Retry-After"] == "5"
        assert client.post("/api/search", json=body).status_code == 200   # searches are not held
    finally:
        eng.explanations._slots.release()
    assert client.post("/api/explain?format=json", json=body).status_code == 200


@pytest.mark.parametrize("size", [(6000, 5000), (15000, 15000)])   # over --max-pixels; over PIL's bomb limit too
def test_a_served_image_swapped_for_a_huge_one_is_refused_not_decoded(demo_world, tmp_path, lite_encoder, size):
    """A folder image replaced on disk after extraction by a 30 or 225 MP PNG: explaining it and its thumbnail
    answer 413 before any pixel is decoded (they were a 500 and seconds of decoding)."""
    photos, root = tmp_path / "photos", _served_copy(demo_world, tmp_path / "features")
    photos.mkdir()
    Image.new("RGB", (300, 200), (30, 30, 200)).save(photos / "small.png")
    Image.new("RGB", (300, 200), (200, 30, 30)).save(photos / "other.png")
    ensure_index(folder_images(photos), lite_encoder, root / "folder-photos", workers=0,
                 info={"dataset": "folder", "data_root": str(photos)})
    client = create_app(Settings(**{**demo_world, "features_root": root}, upload_dir=tmp_path / "u",
                                 warm_up=False)).test_client()
    Image.new("1", size).save(photos / "small.png")
    body = {"dataset": "folder-photos", "mode": "text", "caption": "a red shirt", "result": "small.png"}
    for r in (client.post("/api/explain", json=body), client.post("/api/explain?format=json", json=body),
              client.get("/thumb/folder-photos/small.png")):
        assert r.status_code == 413 and "too large" in r.get_json()["message"], r.data[:200]
    assert client.get("/thumb/folder-photos/other.png").status_code == 200
