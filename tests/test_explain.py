"""Explanations (cir.explain, explain.py): the map's shape and range, that it follows the query, that a colour
query heats that colour's pixels, the CLI, and POST /api/explain over the demo world of tests/conftest.py."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cir import encoders, explain
from cir.cli import explain as explain_cli
from cir.serving.settings import Settings
from cir.web.app import create_app

RED, BLUE = (200, 20, 20), (20, 40, 200)


@pytest.fixture(scope="module")
def explainer(lite_encoder):
    return explain.Explainer(lite_encoder)


def _two_colours(left, right, size=(224, 224)) -> Image.Image:
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    w, h = size
    d.rectangle((8, h // 5, w // 2 - 4, h - h // 5), fill=left)
    d.rectangle((w // 2 + 4, h // 5, w - 8, h - h // 5), fill=right)
    return im


def _mask(im: Image.Image, colour) -> np.ndarray:
    return np.abs(np.asarray(im).astype(int) - np.array(colour)).sum(-1) < 10


def test_map_shape_and_range(explainer, lite_encoder, catalog_root):
    im = Image.open(next((catalog_root / "images").glob("*.jpg"))).convert("RGB").resize((150, 200))
    exp = explainer.explain(im, explain.query_vector(lite_encoder, "a shirt"))
    assert exp.heat.shape == (200, 150) and exp.grid.shape == explain.GRID and exp.cnn.shape == (7, 7)
    for a in (exp.heat, exp.grid, exp.cnn):
        assert a.min() >= 0 and abs(a.max() - 1) < 1e-6
    assert -1 <= exp.score <= 1
    assert Image.open(io.BytesIO(exp.png())).size == (150, 200)
    out = exp.to_json()
    assert out["grid_size"] == list(explain.GRID) and len(out["grad_cam"]) == 7


def test_score_is_the_search_score(explainer, lite_encoder):
    im = _two_colours(RED, BLUE)
    q = explain.query_vector(lite_encoder, "a red t-shirt")
    exp = explainer.explain(im, q)
    # ONNX feature maps vs the encoder's own path: the same cosine to float tolerance
    assert exp.score == pytest.approx(float(lite_encoder.encode_images([im]) @ q[0]), abs=2e-3)


def test_map_changes_with_the_query(explainer, lite_encoder):
    im = _two_colours(RED, BLUE)
    a = explainer.explain(im, explain.query_vector(lite_encoder, "red")).heat
    b = explainer.explain(im, explain.query_vector(lite_encoder, "blue")).heat
    assert np.abs(a - b).mean() > 0.1


@pytest.mark.parametrize("left,right,word", [(RED, BLUE, "red"), (RED, BLUE, "blue"), (BLUE, RED, "red")])
def test_colour_query_heats_that_colour(explainer, lite_encoder, left, right, word):
    im = _two_colours(left, right)
    mask = _mask(im, RED if word == "red" else BLUE)
    heat = explainer.explain(im, explain.query_vector(lite_encoder, f"a {word} t-shirt")).heat
    share, uniform = heat[mask].sum() / heat.sum(), mask.mean()
    assert share > 2 * uniform, (share, uniform)


def test_other_backends_are_refused():
    class Stand:
        name = "openai:RN50"
    with pytest.raises(NotImplementedError, match="lite and hf: .ViT. encoders only"):
        explain.Explainer(Stand())


def test_a_vit_backend_is_explained_on_its_patch_grid(hf_encoder):  # noqa: F811 (the fixture imported above)
    """hf: CLIP (a tiny random ViT): the map is over its patch grid, and the score is the search's cosine."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    gen = torch.Generator().manual_seed(0)
    q1, q2 = torch.randn(hf_encoder.dim, generator=gen), torch.randn(hf_encoder.dim, generator=gen)
    ex = explain.Explainer(hf_encoder)
    e1, e2 = ex.explain(im, q1), ex.explain(im, q2)
    side = hf_encoder.preprocess.size // hf_encoder.model.config.vision_config.patch_size
    assert e1.heat.shape == (40, 56) and e1.cnn.shape == (side, side) and e1.grid.shape == explain.GRID
    assert 0 <= e1.heat.min() and e1.heat.max() <= 1
    cosine = float(hf_encoder.encode_images([im])[0] @ torch.nn.functional.normalize(q1, dim=0))
    assert e1.score == pytest.approx(cosine, abs=1e-4)
    assert not np.allclose(e1.grid, e2.grid)  # another query, another map


def test_image_frame_inverts_the_padding(lite_encoder):
    pre = lite_encoder.preprocess
    cam = torch.ones(7, 7)
    # 300x100: padded to 300x240, resized to 280x224, centre-cropped: 10% of each side is never seen
    wide = explain.to_image_frame(cam, pre, 300, 100)
    assert wide.shape == (100, 300) and wide[:, 40:260].min() > 0.99
    assert wide[:, :25].max() == 0 and wide[:, -25:].max() == 0


def test_cli_writes_png_and_json(tmp_path, monkeypatch, lite_encoder, catalog_root):
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder)
    path = next((catalog_root / "images").glob("*.jpg"))
    rc = explain_cli.main(["--image", str(path), "--text", "a red shirt", "--out", str(tmp_path / "h.png"),
                       "--json", str(tmp_path / "h.json")])
    assert rc == 0
    assert Image.open(tmp_path / "h.png").size == Image.open(path).size
    assert len(json.loads((tmp_path / "h.json").read_text())["grid"]) == explain.GRID[0]
    with pytest.raises(SystemExit):
        explain_cli.main(["--image", str(path), "--out", str(tmp_path / "x.png")])   # no query


# ----------------------------------------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def client(demo_world, tmp_path_factory):
    threads = torch.get_num_threads()
    app = create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads")))
    yield app.test_client()
    torch.set_num_threads(threads)


def test_api_explain_png_and_json(client):
    # the learned score, which explanations explain (the metadata path's boost is not part of it)
    first = client.post("/api/search", json={"dataset": "catalog-test", "mode": "text", "caption": "red top",
                                             "metadata": False})
    hit = first.get_json()["results"][0]["id"]
    body = {"dataset": "catalog-test", "mode": "text", "caption": "red top", "result": hit}
    r = client.post("/api/explain", json=body)
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert Image.open(io.BytesIO(r.data)).format == "PNG"
    j = client.post("/api/explain?format=json", json=body).get_json()
    assert j["grid_size"] == list(explain.GRID)
    assert j["score"] == pytest.approx(first.get_json()["results"][0]["score"], abs=2e-3)


def test_api_explain_composed_and_errors(client):
    refs = client.get("/api/datasets/catalog-test/images?per_page=2").get_json()["images"]
    body = {"dataset": "catalog-test", "mode": "composed", "reference": refs[0]["id"], "caption": "is blue"}
    assert client.post("/api/explain", json={**body, "result": refs[1]["id"]}).status_code == 200
    r = client.post("/api/explain", json=body)
    assert r.status_code == 400 and "result" in r.get_json()["message"]
    assert client.post("/api/explain", json={**body, "result": "no-such-image"}).status_code == 404
    assert client.post("/api/explain", json={"mode": "text", "result": refs[1]["id"]}).status_code == 400
