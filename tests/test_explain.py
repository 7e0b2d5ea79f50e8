"""Explanations (cir.explain, explain.py): the map's shape and range, that it follows the query, that a colour
query heats that colour's pixels, the CLI, and POST /api/explain over the demo world of tests/conftest.py."""
from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cir import encoders, explain
from cir.cli import explain as explain_cli
from cir.encoders import BaseEncoder, OpenAIClipEncoder, Preprocess
from cir.encoders.preprocess import CLIP_MEAN, CLIP_STD
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
        name = "openai:ViT-B/32"
        model = types.SimpleNamespace(visual=torch.nn.Linear(2, 2))   # a tower without an attention pool
    with pytest.raises(NotImplementedError, match="lite, hf: .ViT. and openai: RN encoders only"):
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


# ------------------------------------------------------------- openai: RN towers (a tiny stand-in of ours)

class _Block(torch.nn.Module):
    """A residual block; a stride is an average pool, as in CLIP's modified ResNet."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        nn = torch.nn
        pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  pool, nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                                  nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class _AttnPool(torch.nn.Module):
    """Attention pooling of a [B, C, h, w] map: the mean token, with positions, attends over all cells."""

    def __init__(self, cells: int, width: int, out: int):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(cells + 1, width) / width ** 0.5)
        self.attn = torch.nn.MultiheadAttention(width, 2)
        self.proj = torch.nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).permute(2, 0, 1)
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + self.positions[:, None].to(x.dtype)
        return self.proj(self.attn(tokens[:1], tokens, tokens, need_weights=False)[0][0])


class _TinyRN(torch.nn.Module):
    """The shape of CLIP's ModifiedResNet: a stem, four residual stages (/32 in all) and `attnpool`."""

    input_resolution = 128

    def __init__(self, dim: int, width: int = 8):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, width, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(width)
        self.relu, self.avgpool = torch.nn.ReLU(), torch.nn.AvgPool2d(2)
        self.layer1, self.layer2 = _Block(width, width, 1), _Block(width, 2 * width, 2)
        self.layer3, self.layer4 = _Block(2 * width, 4 * width, 2), _Block(4 * width, 8 * width, 2)
        self.attnpool = _AttnPool((self.input_resolution // 32) ** 2, 8 * width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.relu(self.bn1(self.conv1(x.type(self.conv1.weight.dtype)))))
        return self.attnpool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class _TinyCLIP(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.visual = _TinyRN(dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels.type(self.dtype))


def _rn_encoder(dtype: torch.dtype = torch.float32) -> OpenAIClipEncoder:
    """The openai: backend around the tiny RN: its own image path (encode_image), without clip.load."""
    torch.manual_seed(0)
    enc = OpenAIClipEncoder.__new__(OpenAIClipEncoder)
    BaseEncoder.__init__(enc)   # nn.Module's; the backend's own would download CLIP through the clip package
    enc.name, enc._device, enc.dim = "openai:RN-tiny", torch.device("cpu"), 16
    enc.model = _TinyCLIP(16).to(dtype).eval()
    enc.preprocess = Preprocess("targetpad", _TinyRN.input_resolution, CLIP_MEAN, CLIP_STD)
    return enc


def _object(left: bool, size=(96, 72)) -> Image.Image:
    im = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    x = 6 if left else w // 2 + 6
    ImageDraw.Draw(im).ellipse((x, h // 4, x + w // 2 - 12, 3 * h // 4), fill=RED)
    return im


def test_an_openai_rn_tower_is_explained_before_its_attention_pool():
    enc = _rn_encoder()
    pool = enc.model.visual.attnpool
    ex = explain.Explainer(enc)
    assert enc.model.visual.attnpool is pool   # the tower the search runs is untouched
    im = _object(left=True)
    q = torch.randn(enc.dim, generator=torch.Generator().manual_seed(1))
    e = ex.explain(im, q)
    side = _TinyRN.input_resolution // 32
    assert e.heat.shape == (72, 96) and e.cnn.shape == (side, side) and e.grid.shape == explain.GRID
    assert np.isfinite(e.heat).all() and 0 <= e.heat.min() and abs(e.heat.max() - 1) < 1e-6
    assert e.cnn.std() > 0.05 and e.heat.std() > 0.05     # not uniform
    cosine = float(enc.encode_images([im])[0] @ torch.nn.functional.normalize(q, dim=0))
    assert e.score == pytest.approx(cosine, abs=1e-5)     # the search's own score
    for left in (True, False):   # even random weights see the one distinct object: its pixels get more heat
        moved = _object(left)
        mask, heat = _mask(moved, RED), ex.explain(moved, q).heat
        assert heat[mask].sum() / heat.sum() > 1.5 * mask.mean()
    assert not np.allclose(e.cnn, ex.explain(im, -q).cnn)                    # another query, another map


def test_a_half_precision_rn_tower_is_differentiated_in_float32():
    enc = _rn_encoder(torch.bfloat16)   # as openai: towers on CUDA are float16; bfloat16 runs on any CPU
    ex = explain.Explainer(enc)
    assert next(ex._rn.pool.parameters()).dtype == torch.float32
    assert next(enc.model.visual.attnpool.parameters()).dtype == torch.bfloat16
    im = _object(left=True)
    q = torch.randn(enc.dim, generator=torch.Generator().manual_seed(2))
    e = ex.explain(im, q)
    assert np.isfinite(e.cnn).all() and e.cnn.max() == pytest.approx(1)
    cosine = float(enc.encode_images([im])[0] @ torch.nn.functional.normalize(q, dim=0))
    assert e.score == pytest.approx(cosine, abs=3e-2)     # the pool in float32 vs bfloat16


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
