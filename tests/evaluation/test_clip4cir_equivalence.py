"""End to end against an independent reference of the papers: a tiny random CLIP (hf: backend) on images of
many aspect ratios in a FashionIQ layout, features extracted with extract_features.py, an original-format
Combiner checkpoint ({'Combiner': state_dict}); the rankings of evaluate.py and of the server must equal
those of the reference below, which is written from the papers' formulas, not from the project's code:

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
import types

import numpy as np
import pytest
import torch
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


def ref_rankings(world, method: str) -> list[list[str]]:
    img, txt = ref_features(world)
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
