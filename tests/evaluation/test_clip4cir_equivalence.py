"""End to end against an independent reference of the papers: a tiny random CLIP (hf: backend) on images of
many aspect ratios in a FashionIQ layout, features extracted with extract_features.py, an original-format
Combiner checkpoint ({'Combiner': state_dict}); the rankings of evaluate.py and of the server must equal
those of the reference below, which is written from the papers' formulas, not from the project's code. The
same holds for a CLIP fine-tuned on both towers by CLIP4Cir's stage 1 ({'CLIP': state_dict}), through the
openai: backend with a tiny stand-in for the `clip` package (the package is not installed here):

    TargetPad(1.25) -> Resize(short side) bicubic -> CenterCrop -> normalise      (CLIP4Cir, sec. 3.3)
    raw CLIP features f_I = encode_image, f_T = encode_text                      (no normalisation)
    Combiner: t = relu(W_t f_T), i = relu(W_i f_I), j = [t, i]
              λ = sigmoid(W_2 relu(W_1 j)),  fused = W_o relu(W_c j)
              q = normalize(fused + λ f_T + (1 - λ) f_I)
    sum:      q = normalize(f_I + f_T)
    ranking:  by q · normalize(f_index)
"""
from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cir import encoders
from cir.cli.evaluate import main as evaluate_main
from cir.cli.extract import main as extract_main
from cir.combiner import Combiner, CombinerConfig
from cir.index import IndexLoadError, load_index
from cir.serving.settings import Settings
from cir.utils import save_tensors, write_json
from cir.web.app import create_app


@pytest.fixture(scope="module")
def sizes(tiny_clip_sizes) -> types.SimpleNamespace:
    """The tiny CLIP's sizes (conftest.tiny_clip_sizes) as attributes."""
    return types.SimpleNamespace(**tiny_clip_sizes)


SIZES = [(40, 52), (90, 30), (32, 32), (64, 50), (30, 75), (100, 125), (52, 40), (45, 90), (70, 70),
         (120, 40), (36, 48), (80, 64)]
CAPTIONS = [("is red", "has stripes"), ("is blue and longer", "no sleeves"), ("darker", "is the same but green"),
            ("and", "the"), ("has a pattern", "is shorter")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip_dir, sizes):
    """A FashionIQ 'shirt' val layout of 12 drawn images, its features, and an original-format Combiner."""
    root = tmp_path_factory.mktemp("fiq")
    (root / "images").mkdir()
    names = [f"img{i:02d}" for i in range(len(SIZES))]
    rng = np.random.default_rng(0)
    for n, (w, h) in zip(names, SIZES):
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        ImageDraw.Draw(im).rectangle((w // 4, h // 4, w // 2, h // 2), fill=fill)
        im.save(root / "images" / f"{n}.png")
    trips = [{"candidate": names[i], "target": names[(3 * i + 5) % len(names)], "captions": list(c)}
             for i, c in enumerate(CAPTIONS)]
    for sub, payload in (("captions/cap.shirt.val.json", trips), ("image_splits/split.shirt.val.json", names)):
        (root / sub).parent.mkdir(exist_ok=True)
        (root / sub).write_text(json.dumps(payload))
    feats = root.parent / (root.name + "-features")
    assert extract_main(["--dataset", "fashioniq", "--data-root", str(root), "--split", "val",
                         "--encoder", f"hf:{tiny_clip_dir}", "--device", "cpu", "--workers", "0",
                         "--out", str(feats)]) == 0
    torch.manual_seed(1)
    comb = Combiner(CombinerConfig(feature_dim=sizes.projection_dim, projection_dim=24, hidden_dim=40))
    ckpt = root.parent / (root.name + "-combiner.pt")
    torch.save({"Combiner": comb.state_dict()}, ckpt)
    return {"root": root, "names": names, "trips": trips, "features": feats, "ckpt": ckpt, "clip": tiny_clip_dir}


# ----------------------------------------------------------------------------------------------- the reference

def ref_targetpad(img: Image.Image, ratio: float = 1.25) -> Image.Image:
    w, h = img.size
    if max(w, h) / min(w, h) < ratio:
        return img
    target_short = max(w, h) / ratio
    hp, vp = max(int((target_short - w) / 2), 0), max(int((target_short - h) / 2), 0)
    canvas = Image.new("RGB", (w + 2 * hp, h + 2 * vp))
    canvas.paste(img, (hp, vp))
    return canvas


def ref_pixels(path, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    img = ref_targetpad(Image.open(path).convert("RGB"))
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def ref_features(world) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Raw CLIP image features of every image and raw text features of every joined caption."""
    from transformers import AutoTokenizer, CLIPModel
    model = CLIPModel.from_pretrained(str(world["clip"])).eval()
    tok = AutoTokenizer.from_pretrained(str(world["clip"]))
    size = model.config.vision_config.image_size
    pp = json.loads((world["clip"] / "preprocessor_config.json").read_text())   # the model folder's normalisation
    with torch.no_grad():
        px = torch.stack([ref_pixels(world["root"] / "images" / f"{n}.png", size, pp["image_mean"], pp["image_std"])
                          for n in world["names"]])
        img = model.get_image_features(pixel_values=px)
        img = img if torch.is_tensor(img) else img.pooler_output
        caps = [f"{a.strip('.?, ').capitalize()} and {b.strip('.?, ')}"
                for a, b in (t["captions"] for t in world["trips"])]
        t = tok(caps, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                return_tensors="pt")
        txt = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        txt = txt if torch.is_tensor(txt) else txt.pooler_output
    return dict(zip(world["names"], img)), dict(zip(caps, txt))


def ref_combiner(sd: dict, f_img: torch.Tensor, f_txt: torch.Tensor) -> torch.Tensor:
    lin = lambda x, name: x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]  # noqa: E731
    j = torch.cat([F.relu(lin(f_txt, "text_projection_layer")), F.relu(lin(f_img, "image_projection_layer"))], -1)
    fused = lin(F.relu(lin(j, "combiner_layer")), "output_layer")
    lam = torch.sigmoid(lin(F.relu(lin(j, "dynamic_scalar.0")), "dynamic_scalar.3"))
    return F.normalize(fused + lam * f_txt + (1 - lam) * f_img, dim=-1)


def ref_rankings(world, method: str, features: tuple[dict, dict] | None = None) -> list[list[str]]:
    img, txt = features or ref_features(world)
    sd = torch.load(world["ckpt"], weights_only=True)["Combiner"]
    gallery = F.normalize(torch.stack([img[n] for n in world["names"]]), dim=-1)
    out = []
    for t, cap in zip(world["trips"], txt):
        f_i, f_t = img[t["candidate"]][None], txt[cap][None]
        q = ref_combiner(sd, f_i, f_t) if method == "combiner" else F.normalize(f_i + f_t, dim=-1)
        out.append([world["names"][j] for j in torch.argsort(q[0] @ gallery.T, descending=True).tolist()])
    return out


# ----------------------------------------------------------------------------------------------- the checks

def test_the_raw_features_are_stored_and_differ_in_norm(world):
    img, txt = ref_features(world)
    index = load_index(world["features"] / "fashioniq-shirt-val")
    raw = index.raw_matrix()
    want = torch.stack([img[n] for n in index.names])
    assert torch.allclose(raw, want, rtol=2e-3, atol=2e-3)  # float16 rows x float32 norms
    norms = torch.stack(list(img.values())).norm(dim=1).mean() / torch.stack(list(txt.values())).norm(dim=1).mean()
    assert not math.isclose(float(norms), 1.0, rel_tol=0.05), "raw image and text norms must differ for this test"


def test_normalising_the_inputs_would_change_the_ranking(world):
    """The check below can fail: the same Combiner on normalised inputs ranks differently."""
    img, txt = ref_features(world)
    sd = torch.load(world["ckpt"], weights_only=True)["Combiner"]
    f_i = torch.stack([img[t["candidate"]] for t in world["trips"]])
    f_t = torch.stack(list(txt.values()))
    raw, unit = ref_combiner(sd, f_i, f_t), ref_combiner(sd, F.normalize(f_i, dim=-1), F.normalize(f_t, dim=-1))
    assert (raw * unit).sum(1).mean() < 0.999


@pytest.mark.parametrize("method", ["combiner", "sum"])
def test_evaluate_ranks_as_the_papers(world, method, tmp_path):
    out = tmp_path / "rankings.json"
    assert evaluate_main(["--task", "composed", "--dataset", "fashioniq", "--data-root", str(world["root"]),
                          "--split", "val", "--encoder", f"hf:{world['clip']}", "--device", "cpu", "--workers", "0",
                          "--features", str(world["features"]),
                          "--combiner", str(world["ckpt"]) if method == "combiner" else "sum",
                          "--save-rankings", str(out)]) == 0
    assert json.loads(out.read_text()) == ref_rankings(world, method)


@pytest.mark.parametrize("method", ["combiner", "sum"])
def test_the_server_ranks_as_the_papers(world, method, tmp_path):
    enc = encoders.load(f"hf:{world['clip']}", "cpu")
    app = create_app(Settings(features_root=world["features"], encoder_obj=enc, combiners={"orig": str(world["ckpt"])},
                               text_checkpoints={}, upload_dir=tmp_path, data_root=str(world["root"])))
    client = app.test_client()
    for t, want in zip(world["trips"], ref_rankings(world, method)):
        r = client.post("/api/search", json={"mode": "composed" if method == "combiner" else "sum",
                                             "dataset": "fashioniq-shirt-val", "reference": t["candidate"],
                                             "caption": f"{t['captions'][0].capitalize()} and {t['captions'][1]}",
                                             "k": len(world["names"]) - 1, "combiner": "orig"})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["ids"] == [n for n in want if n != t["candidate"]]  # the server drops the reference


# ----------------------------------------------------------------------------------------------- CLIP4Cir's stage 1

OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CONTEXT, VOCAB = 16, 300


class StandInVisual(nn.Module):
    """A patch embedding, mean-pooled and projected: the image tower of the stand-in CLIP."""

    def __init__(self, res: int, width: int, dim: int):
        super().__init__()
        self.input_resolution = res
        self.conv1 = nn.Conv2d(3, width, 8, stride=8)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, dim) / width ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.conv1(x).flatten(2).mean(-1)) @ self.proj


class StandInClip(nn.Module):
    """OpenAI CLIP's interface and state-dict names (visual.*, token_embedding, positional_embedding,
    transformer, ln_final, text_projection, logit_scale), tiny and random (seeded)."""

    def __init__(self, res: int = 32, width: int = 24, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.visual = StandInVisual(res, width, dim)
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, width) * 0.1)
        self.transformer = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, 2, 48, dropout=0.0, batch_first=True), 1, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, dim) / width ** 0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x.type(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(self.transformer(self.token_embedding(tokens) + self.positional_embedding))
        return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ self.text_projection


def stand_in_tokenize(texts, truncate: bool = True) -> torch.Tensor:
    """Characters as tokens between start (1) and end (VOCAB - 1, the largest id: CLIP pools at argmax)."""
    out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [1] + [3 + ord(c) % (VOCAB - 4) for c in t][:CONTEXT - 2] + [VOCAB - 1]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture()
def stand_in_clip(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "clip", types.SimpleNamespace(
        load=lambda name, device, jit: (StandInClip().to(device), None), tokenize=stand_in_tokenize))


@pytest.fixture(scope="module")
def tuned_clip(tmp_path_factory) -> tuple[StandInClip, object]:
    """The stand-in CLIP with both towers changed, and its CLIP4Cir checkpoint {'CLIP': state_dict}."""
    tuned = StandInClip()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for name, p in tuned.named_parameters():
            if name.startswith(("visual.", "text_projection", "token_embedding")):
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("clip4cir") / "tuned_clip_best.pt"
    torch.save({"CLIP": tuned.state_dict()}, path)
    return tuned.eval(), path


def stand_in_features(world, model: StandInClip) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reference's raw features, from `model` (the stand-in with the checkpoint's weights)."""
    res = model.visual.input_resolution
    caps = [f"{a.strip('.?, ').capitalize()} and {b.strip('.?, ')}" for a, b in (t["captions"] for t in world["trips"])]
    with torch.no_grad():
        px = torch.stack([ref_pixels(world["root"] / "images" / f"{n}.png", res, OPENAI_MEAN, OPENAI_STD)
                          for n in world["names"]])
        img, txt = model.encode_image(px), model.encode_text(stand_in_tokenize(caps))
    return dict(zip(world["names"], img)), dict(zip(caps, txt))


def _extract(world, out, *extra: str) -> None:
    assert extract_main(["--dataset", "fashioniq", "--data-root", str(world["root"]), "--split", "val",
                         "--encoder", "openai:RN50", "--device", "cpu", "--workers", "0", "--out", str(out),
                         *extra]) == 0


@pytest.mark.parametrize("method", ["combiner", "sum"])
def test_a_clip4cir_stage1_clip_ranks_as_the_papers(world, stand_in_clip, tuned_clip, method, tmp_path):
    """Both towers of {'CLIP': state_dict} are taken; the index extracted with the old image tower is
    extracted again, and evaluate.py ranks as the reference on the tuned CLIP (not on the base one)."""
    tuned, ckpt = tuned_clip
    _extract(world, tmp_path / "features")  # the base image tower's index
    out = tmp_path / "rankings.json"
    assert evaluate_main(["--task", "composed", "--dataset", "fashioniq", "--data-root", str(world["root"]),
                          "--split", "val", "--encoder", "openai:RN50", "--text-encoder", str(ckpt), "--device",
                          "cpu", "--workers", "0", "--features", str(tmp_path / "features"),
                          "--combiner", str(world["ckpt"]) if method == "combiner" else "sum",
                          "--save-rankings", str(out)]) == 0
    want = ref_rankings(world, method, stand_in_features(world, tuned))
    assert json.loads(out.read_text()) == want
    assert ref_rankings(world, method, stand_in_features(world, StandInClip().eval())) != want  # it can fail
    manifest = json.loads((tmp_path / "features" / "fashioniq-shirt-val" / "manifest.json").read_text())
    assert manifest["image_side"] == encoders.load("openai:RN50", "cpu", text=ckpt).image_digest


def test_an_index_of_the_old_image_tower_is_refused_then_extracted_again(world, stand_in_clip, tuned_clip,
                                                                          tmp_path):
    """The demo serving the checkpoint as its encoder's (--stage1) refuses the base tower's index, then serves
    the one extracted with `extract_features.py --stage1`, ranking as the reference."""
    tuned, ckpt = tuned_clip
    features = tmp_path / "features"
    _extract(world, features)

    def app():
        return create_app(Settings(features_root=features, encoder="openai:RN50", stage1=str(ckpt), device="cpu",
                                   combiners={}, text_checkpoints={}, upload_dir=tmp_path / "u",
                                   data_root=str(world["root"]), warm_up=False))

    with pytest.raises(ValueError, match="fashioniq-shirt-val: extracted with another image tower .*--stage1"):
        app()
    _extract(world, features, "--stage1", str(ckpt))
    client = app().test_client()
    want = ref_rankings(world, "sum", stand_in_features(world, tuned))
    for t, ranked in zip(world["trips"], want):
        r = client.post("/api/search", json={"mode": "sum", "dataset": "fashioniq-shirt-val", "k": 11,
                                             "reference": t["candidate"],
                                             "caption": f"{t['captions'][0].capitalize()} and {t['captions'][1]}"})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["ids"] == [n for n in ranked if n != t["candidate"]]


def _legacy_folder(path, encoder: str) -> None:
    """A feature folder as format 1 wrote it: normalised rows only, no norms."""
    x = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1).half()
    save_tensors(path / "features.safetensors", {"features": x})
    write_json(path / "names.json", list("abcd"))
    write_json(path / "manifest.json", {"encoder": encoder, "dim": 8, "count": 4, "normalized": True,
                                        "format_version": 1})


def test_old_feature_folders_are_read_correctly_or_refused(tmp_path):
    _legacy_folder(tmp_path / "lite", "lite")
    lite = load_index(tmp_path / "lite")
    assert torch.equal(lite.raw([1, 2]), lite.features[[1, 2]].float())  # lite's raw outputs are unit vectors
    _legacy_folder(tmp_path / "clip", "hf:some/clip")
    clip = load_index(tmp_path / "clip")
    assert len(clip) == 4  # image-to-image and text search still work on it
    with pytest.raises(IndexLoadError, match="extract it again"):
        clip.raw([0])


def test_damaged_norms_are_refused(tmp_path):
    _legacy_folder(tmp_path, "hf:x")
    x = F.normalize(torch.randn(4, 8), dim=-1).half()
    save_tensors(tmp_path / "features.safetensors", {"features": x, "norms": torch.tensor([1.0, float("nan"), 2, 3])})
    with pytest.raises(IndexLoadError, match="norms"):
        load_index(tmp_path)
    save_tensors(tmp_path / "features.safetensors", {"features": x, "norms": torch.ones(3)})
    with pytest.raises(IndexLoadError, match="norms"):
        load_index(tmp_path)
