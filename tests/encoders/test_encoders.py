"""Tests for encoders: the hf backend on a tiny random CLIP saved offline, the openai backend (skipped
when `clip` cannot be imported, plus a stand-in `clip` module), name handling in `load`, the
preprocessing geometry, the colour descriptor, and the shipped lite encoder (shapes, norms and the
ONNX Runtime / PyTorch equivalence only: no semantic checks)."""

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from cir import encoders
from cir.encoders import BASE_TEXT, OPENAI_MODELS, STAGE1_TEXT, TextSide, available_models
from cir.encoders.colour import hsv_histogram as colour_descriptor
from cir.encoders.preprocess import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def sizes(tiny_clip_sizes) -> types.SimpleNamespace:
    """The tiny CLIP's sizes (conftest.tiny_clip_sizes) as attributes."""
    return types.SimpleNamespace(**tiny_clip_sizes)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WHITE = (255, 255, 255)


def unit_norm(x: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=atol)


def sample_images() -> list[Image.Image]:
    """A few images of different sizes, aspect ratios and modes."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    return [Image.new("RGB", (64, 48), (200, 30, 30)),
            Image.new("RGB", (20, 90), (20, 40, 220)),
            noise,
            Image.new("L", (33, 33), 128),
            Image.new("RGBA", (40, 60), (0, 255, 0, 128))]


# ----------------------------------------------------------------------------------------------- hf backend

def test_hf_tokenizer_ids_fit_the_text_model(hf_encoder):
    tok, cfg = hf_encoder.tokenizer, hf_encoder.model.config.text_config
    assert len(tok) == cfg.vocab_size
    for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        assert i is not None and 0 <= i < cfg.vocab_size
    ids = tok(["the cat and dog"])["input_ids"][0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_hf_encoder_basics(hf_encoder, tiny_clip_dir, sizes):
    assert hf_encoder.dim == sizes.projection_dim
    assert hf_encoder.name == "hf:" + str(tiny_clip_dir)
    assert hf_encoder.device == torch.device("cpu")
    pp = hf_encoder.preprocess
    assert pp.mode == "targetpad" and pp.size == sizes.image_size
    np.testing.assert_allclose(pp.mean.ravel(), sizes.mean)
    np.testing.assert_allclose(pp.std.ravel(), sizes.std)
    d = hf_encoder.describe()
    assert d["dim"] == sizes.projection_dim and d["preprocess"]["size"] == sizes.image_size


def test_hf_preprocess_shape(hf_encoder, sizes):
    for im in sample_images():
        x = hf_encoder.preprocess(im)
        assert x.shape == (3, sizes.image_size, sizes.image_size) and x.dtype == torch.float32


def test_hf_encode_images(hf_encoder, sizes):
    images = sample_images()
    f = hf_encoder.encode_images(images)
    assert f.shape == (len(images), sizes.projection_dim) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and unit_norm(f)
    assert torch.allclose(f, hf_encoder.encode_images(images), atol=1e-6)
    # Batch composition does not change an image's features.
    assert torch.allclose(f[1:2], hf_encoder.encode_images(images[1:2]), atol=1e-5)
    assert hf_encoder.encode_images([]).shape == (0, sizes.projection_dim)


def test_hf_encode_texts(hf_encoder, sizes):
    texts = ["the red dress", "a blue shirt with long sleeves", "and"]
    f = hf_encoder.encode_texts(texts)
    assert f.shape == (3, sizes.projection_dim) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and unit_norm(f)
    assert torch.allclose(f, hf_encoder.encode_texts(texts), atol=1e-6)
    assert (f[0] - f[1]).abs().max() > 1e-4 and (f[0] - f[2]).abs().max() > 1e-4
    # Padding in a batch does not change a short text's features; surrounding blanks are stripped.
    assert torch.allclose(f[2:3], hf_encoder.encode_texts(["and"]), atol=1e-5)
    assert torch.allclose(f[0:1], hf_encoder.encode_texts(["  the red dress \n"]), atol=1e-5)
    assert hf_encoder.encode_texts([]).shape == (0, sizes.projection_dim)


def test_hf_long_text_is_truncated(hf_encoder, sizes):
    f = hf_encoder.encode_texts(["the cat and the dog " * 40])
    assert f.shape == (1, sizes.projection_dim) and unit_norm(f)


@pytest.mark.parametrize("texts", [[""], ["   "], ["a shirt", " \t\n"], [None]])
def test_hf_blank_text_is_refused(hf_encoder, texts):
    with pytest.raises(ValueError, match="empty"):
        hf_encoder.encode_texts(texts)


def test_hf_preprocess_override(tiny_clip_dir, sizes):
    enc = encoders.load("hf:" + str(tiny_clip_dir), "cpu", preprocess="squarepad")
    assert enc.preprocess.mode == "squarepad"
    assert enc.encode_images([Image.new("RGB", (10, 40), WHITE)]).shape == (1, sizes.projection_dim)


# ----------------------------------------------------------------------------------------------- openai backend

def import_clip_or_skip():
    """Import the OpenAI `clip` package, or skip: it fails with ImportError when absent, and with
    RuntimeError (or others) when torchvision does not match torch."""
    try:
        import clip
    except Exception as e:  # noqa: BLE001 - any failure to import means the backend is unusable here
        pytest.skip(f"openai `clip` package not importable: {type(e).__name__}: {e}")
    return clip


def test_openai_real_model():
    clip = import_clip_or_skip()
    cache = Path(os.path.expanduser("~/.cache/clip"))
    url = clip.clip._MODELS.get("RN50", "") if hasattr(clip, "clip") else ""
    if not url or not (cache / os.path.basename(url)).is_file():
        pytest.skip("RN50 weights are not cached and there is no internet")
    enc = encoders.load("openai:RN50", "cpu")
    assert enc.dim == 1024 and enc.preprocess.size == 224
    assert unit_norm(enc.encode_images(sample_images()[:2]))
    assert unit_norm(enc.encode_texts(["a red dress"]))


def test_openai_unknown_model_name():
    with pytest.raises(ValueError) as e:
        encoders.load("openai:NotAModel", "cpu")
    msg = str(e.value)
    assert "NotAModel" in msg
    for name in OPENAI_MODELS:
        assert f"openai:{name}" in msg


def test_openai_without_clip_raises_helpful_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "clip", None)  # makes `import clip` raise ImportError
    with pytest.raises(ImportError, match="clip"):
        encoders.load("openai:RN50", "cpu")


class _FakeClipModel(nn.Module):
    """Just enough of a `clip` model for OpenAIClipEncoder: visual.input_resolution, text_projection,
    dtype, encode_image and encode_text."""

    def __init__(self, res: int = 32, width: int = 12, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Linear(3, dim)
        self.visual.input_resolution = res
        self.embed = nn.Embedding(100, width)
        self.text_projection = nn.Parameter(torch.randn(width, dim))

    @property
    def dtype(self):
        return self.visual.weight.dtype

    def encode_image(self, x):
        return self.visual(x.mean((2, 3))) * 5

    def encode_text(self, tokens):
        return self.embed(tokens).mean(1) @ self.text_projection


def test_openai_encoder_wiring_with_stand_in_clip(monkeypatch):
    calls = {}

    def fake_load(name, device, jit):
        calls["load"] = (name, device, jit)
        return _FakeClipModel(), None

    def fake_tokenize(texts, truncate):
        calls["tokenize"] = (list(texts), truncate)
        return torch.tensor([[(sum(map(ord, t)) * (i + 1)) % 100 for i in range(6)] for t in texts])

    monkeypatch.setitem(sys.modules, "clip", types.SimpleNamespace(load=fake_load, tokenize=fake_tokenize))
    enc = encoders.load("openai:RN50x4", "cpu")
    assert calls["load"] == ("RN50x4", torch.device("cpu"), False)
    assert enc.name == "openai:RN50x4" and enc.dim == 8
    assert enc.preprocess.size == 32 and enc.preprocess.mode == "targetpad"
    np.testing.assert_allclose(enc.preprocess.mean.ravel(), CLIP_MEAN, rtol=1e-6)
    np.testing.assert_allclose(enc.preprocess.std.ravel(), CLIP_STD, rtol=1e-6)
    f = enc.encode_images(sample_images()[:3])
    assert f.shape == (3, 8) and unit_norm(f)
    t = enc.encode_texts([" a red dress ", "a blue shirt"])
    assert t.shape == (2, 8) and unit_norm(t)
    assert calls["tokenize"] == (["a red dress", "a blue shirt"], True)


# ----------------------------------------------------------------------------------------------- load / names

def test_unknown_encoder_name():
    with pytest.raises(ValueError) as e:
        encoders.load("nope", "cpu")
    msg = str(e.value)
    assert "lite" in msg and "openai:RN50x4" in msg and "hf:" in msg


@pytest.mark.parametrize("name", ["hf:", "openai:", "", "LITE", "clip"])
def test_malformed_encoder_names(name):
    with pytest.raises(ValueError, match="unknown encoder"):
        encoders.load(name, "cpu")


def test_unknown_preprocess_in_load():
    with pytest.raises(ValueError, match="targetpad"):
        encoders.load("lite", "cpu", preprocess="crop")


def test_available_models():
    names = available_models()
    assert "lite" in names and "openai:RN50x4" in names
    assert any(n.startswith("hf:") for n in names)


# ----------------------------------------------------------------------------------------------- colour

HUE, GREY = 12, 5


def square_on_white(colour, size: int = 224) -> torch.Tensor:
    x = torch.ones(3, size, size)
    q = size // 4
    x[:, q:-q, q:-q] = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return x


def test_colour_descriptor_shape_and_norm():
    x = torch.stack([square_on_white((1, 0, 0)), square_on_white((0, 0, 1)),
                     torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0)),
                     torch.zeros(3, 224, 224), torch.ones(3, 224, 224)])
    d = colour_descriptor(x, HUE, GREY)
    assert d.shape == (5, HUE * 6 + GREY)
    assert torch.isfinite(d).all() and (d >= 0).all()
    assert torch.allclose(d.norm(dim=1), torch.ones(5), atol=1e-5)
    d8 = colour_descriptor(x[:2, :, :64, :64], hue_bins=8, grey_bins=3)
    assert d8.shape == (2, 8 * 6 + 3) and torch.allclose(d8.norm(dim=1), torch.ones(2), atol=1e-5)


def test_colour_descriptor_separates_colours():
    red, blue, red2 = colour_descriptor(torch.stack(
        [square_on_white((1, 0, 0)), square_on_white((0, 0, 1)), square_on_white((0.9, 0.05, 0.05))]))
    assert float(red @ blue) < 0.5
    assert float(red @ red2) > 0.9


def test_colour_descriptor_white_and_black():
    white, black = colour_descriptor(torch.stack([torch.ones(3, 224, 224), torch.zeros(3, 224, 224)]))
    assert not torch.isnan(white).any() and not torch.isnan(black).any()
    # Achromatic images vote into the grey bins only: white into the brightest, black into the darkest.
    assert white[: HUE * 6].abs().sum() == 0 and black[: HUE * 6].abs().sum() == 0
    assert white[-1] == pytest.approx(1.0) and black[HUE * 6] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- lite

@pytest.fixture(scope="module")
def lite(lite_encoder):
    return lite_encoder  # the session-wide one from conftest.py


@pytest.fixture(scope="module")
def lite_torch():
    return encoders.load("lite", "cpu", runtime="torch")


def test_lite_basics(lite):
    assert lite.name == "lite" and lite.dim == 256
    assert lite.preprocess.size == 224 and lite.preprocess.fill == "edge"
    assert lite.preprocess(Image.new("RGB", (50, 90), WHITE)).shape == (3, 224, 224)
    d = lite.describe()
    assert d["dim"] == 256 and d["config"]["embed_dim"] == 256
    json.dumps(d)


def test_lite_encode_images_and_texts(lite):
    images = sample_images()
    f = lite.encode_images(images)
    assert f.shape == (len(images), 256) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and unit_norm(f)
    assert torch.allclose(f, lite.encode_images(images), atol=1e-5)
    t = lite.encode_texts(["a red t-shirt", "a long blue dress with white dots"])
    assert t.shape == (2, 256) and t.dtype == torch.float32 and unit_norm(t)
    with pytest.raises(ValueError):
        lite.encode_texts(["  "])


def test_lite_onnx_matches_torch(lite, lite_torch):
    if lite._ort is None:
        pytest.skip("onnxruntime path not active")
    assert lite_torch._ort is None
    images = sample_images()
    a, b = lite.encode_images(images), lite_torch.encode_images(images)
    assert (a - b).abs().max() < 1e-3
    pixels = torch.stack([lite.preprocess(im) for im in images])
    (pa, ca), (pb, cb) = lite.image_backbone(pixels), lite_torch.image_backbone(pixels)
    assert pa.shape == (len(images), 1280)
    assert (pa - pb).abs().max() < 1e-3 and torch.equal(ca, cb)


def test_lite_bad_runtime_and_missing_heads(tmp_path):
    with pytest.raises(ValueError, match="runtime"):
        encoders.load("lite", "cpu", runtime="tensorrt")
    with pytest.raises(FileNotFoundError):
        encoders.load("lite", "cpu", heads=tmp_path / "missing.safetensors")


def test_onnx_text_tower_equals_sentence_transformers(lite_encoder):
    """The CPU text path (ONNX Runtime) gives MiniLM's own embeddings, for one caption and for padded batches."""
    if lite_encoder._ort_text is None:
        pytest.skip("onnxruntime is not installed")
    caps = ["is navy blue instead of red", "a", "make it formal with longer sleeves " * 40, "do you have it in olive?"]
    ref = lite_encoder.text_model.encode(caps, convert_to_tensor=True).float()
    for batch in (caps[:1], caps, caps * 6):  # one caption (single-threaded session) and a large batch
        got = lite_encoder.text_backbone(batch)
        assert torch.allclose(got, ref.repeat(len(batch) // len(caps) or 1, 1)[:len(batch)], atol=1e-5)


def _stand_in_clip(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "clip", types.SimpleNamespace(
        load=lambda name, device, jit: (_FakeClipModel(), None),
        tokenize=lambda texts, truncate: torch.tensor([[(sum(map(ord, t)) * (i + 1)) % 100 for i in range(6)]
                                                       for t in texts])))


def test_a_clip4cir_fine_tuned_clip_loads_with_both_towers(monkeypatch, tmp_path, lite_encoder):
    """CLIP4Cir saves {'CLIP': clip_model.state_dict()}: its text and image weights replace ours, and the
    encoder's description names the new image side (indexes of the old one are not this encoder's)."""
    _stand_in_clip(monkeypatch)
    enc = encoders.load("openai:RN50x4", "cpu")
    tuned = _FakeClipModel()
    with torch.no_grad():
        tuned.text_projection.mul_(-2.0)
        tuned.visual.weight.add_(1.0)
    path = tmp_path / "tuned_clip_best.pt"
    torch.save({"CLIP": tuned.state_dict(), "epoch": 3}, path)
    side = enc.with_text(path)
    assert side.text_side.path == path.resolve()
    base = enc.encode_texts(["a red dress"], raw=True)
    assert torch.allclose(side.encode_texts(["a red dress"], raw=True), -2 * base)
    px = torch.rand(2, 3, 32, 32)
    want = F.normalize(tuned.encode_image(px), dim=-1).detach()
    assert torch.allclose(side.encode_pixels(px), want, atol=1e-6)
    assert not torch.allclose(side.encode_pixels(px), enc.encode_pixels(px))
    assert side.image_digest and side.describe()["image_side"] == side.image_digest
    assert "image_side" not in enc.describe() and enc.image_digest is None  # the encoder loaded from is intact
    with pytest.raises(ValueError, match="openai: encoder"):
        lite_encoder.with_text(path)
    torch.save({"model": tuned.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'CLIP' entry"):
        enc.with_text(tmp_path / "other.pt")


def test_a_clip4cir_checkpoint_of_the_text_side_only_keeps_the_image_side(monkeypatch, tmp_path):
    """CLIP4Cir's `--encoder text` saves the whole CLIP, image tower unchanged: indexes stay valid."""
    _stand_in_clip(monkeypatch)
    enc = encoders.load("openai:RN50x4", "cpu")
    tuned = _FakeClipModel()
    with torch.no_grad():
        tuned.text_projection.mul_(-2.0)
    path = tmp_path / "text_only.pt"
    torch.save({"CLIP": tuned.state_dict()}, path)
    side = enc.with_text(path)
    assert side.image_digest is None and side.describe() == enc.describe()
    assert side.model.visual is enc.model.visual or torch.equal(side.model.visual.weight, enc.model.visual.weight)
    px = torch.rand(2, 3, 32, 32)
    assert torch.equal(side.encode_pixels(px), enc.encode_pixels(px))


# ----------------------------------------------------------------------------------------------- text sides

def test_text_side_is_one_identity_per_checkpoint(tmp_path, monkeypatch):
    """"stage1", the shipped file's bare name and its path (relative or absolute) are one side; base is base."""
    shipped = STAGE1_TEXT
    if not shipped.exists():
        pytest.skip("the shipped stage-1 text checkpoint is absent")
    forms = ["stage1", shipped.name, str(shipped), str(shipped.parent / ".." / shipped.parent.name / shipped.name)]
    sides = {TextSide.of(f) for f in forms}
    assert len(sides) == 1
    side = sides.pop()
    assert (side.name, side.record, side.path is None) == ("stage1", shipped.name, False)
    assert TextSide.of(side) is side
    for base in (None, "", "base", BASE_TEXT):
        assert TextSide.of(base) == BASE_TEXT and TextSide.of(base).record == "base"
    mine = tmp_path / "mine.safetensors"
    monkeypatch.chdir(tmp_path)
    assert TextSide.of("mine.safetensors") == TextSide.of(mine) != side  # relative = absolute
    assert (TextSide.of(mine).name, TextSide.of(mine).record) == ("mine", str(mine.resolve()))
    assert not TextSide.of(mine).exists() and BASE_TEXT.exists()


def test_a_loaded_text_side_knows_which_it_is(lite_encoder):
    assert lite_encoder.text_side == BASE_TEXT and lite_encoder.with_text("base") is lite_encoder
    if not STAGE1_TEXT.exists():
        pytest.skip("the shipped stage-1 text checkpoint is absent")
    s1 = lite_encoder.with_text("stage1")
    assert s1.text_side == TextSide.of(STAGE1_TEXT.name) and s1.text_side.name == "stage1"
