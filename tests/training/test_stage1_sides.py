"""Stage 1 on its sides (`train.py text --side both|text|image`) on a small slice of the catalogue, from the
command line: a tiny random CLIP fine-tuned on both towers, lite's image head alone, what each checkpoint
changes where it loads, and the indexes of the old image side never served with the new one."""
from __future__ import annotations

import copy
import json
import logging
import types

import pytest
import torch
from safetensors import safe_open

from cir import encoders
from cir.cli.train import main
from cir.encoders import TextCheckpointInfo
from cir.serving.engine import _load_text_sides
from cir.training import data as training_data
from cir.training import references
from cir.training.stages import stage1_prefixes
from cir.utils import save_checkpoint

SLICE = {"train": 32, "val": 16}


@pytest.fixture()
def small_catalog(monkeypatch, catalog_root):
    """catalog_images limited to the first images of each split, and a few real photos of each class."""
    full, photos = training_data.catalog_images, references.photo_images
    monkeypatch.setattr(training_data, "catalog_images", lambda root, split=None: full(root, split)[:SLICE[split]])
    monkeypatch.setattr(references, "photo_images", lambda root, split=None: photos(root, split)[::80])
    return catalog_root


def _args(tmp_path, *extra: str) -> list[str]:
    """A few triplets of every kind, photo-like views, real photos and name edits: every reference source."""
    return ["--features", str(tmp_path / "features"), "--cache-dir", str(tmp_path / "cache"), "--per-kind", "2",
            "--val-per-kind", "2", "--photo-triplets", "4", "--name-edits", "4", "--photo-like", "0.5",
            "--workers", "0", "--device", "cpu", "--epochs", "2", *extra]


def _keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


@pytest.mark.slow
def test_tiny_clip_fine_tunes_both_towers_from_the_command_line(small_catalog, tiny_clip_dir, tmp_path):
    enc_name = f"hf:{tiny_clip_dir}"
    out = tmp_path / "both.safetensors"
    assert main(["text", "--encoder", enc_name, "--side", "both", "--batch", "16", "--lr", "1e-3",
                 "--out", str(out), *_args(tmp_path)]) == 0
    report = json.loads(out.with_name("both.train.json").read_text())
    assert report["args"]["side"] == "both" and len(report["history"]) == 2
    keys = _keys(out)
    assert any(k.startswith("model.vision_model.") for k in keys) and any(k.startswith("model.text_model.")
                                                                        for k in keys)
    base = encoders.load(enc_name, "cpu")
    tuned = base.with_text(out)
    px, caps = torch.rand(2, 3, 32, 32), ["is red", "has stripes"]
    assert not torch.allclose(tuned.encode_pixels(px), base.encode_pixels(px))
    assert not torch.allclose(tuned.encode_texts(caps), base.encode_texts(caps))
    assert tuned.image_digest and tuned.describe()["image_side"] == tuned.image_digest
    assert "image_side" not in base.describe()


@pytest.mark.slow
def test_lite_side_image_fine_tunes_the_image_head_alone(small_catalog, lite_encoder, tmp_path, monkeypatch):
    """lite's towers are frozen: `--side image` trains its image projection head, and nothing else."""
    private = copy.copy(lite_encoder)  # train.py text fine-tunes the encoder it loads in place
    private._modules = dict(lite_encoder._modules)
    private._modules["heads"] = copy.deepcopy(lite_encoder.heads)
    monkeypatch.setattr(encoders, "load", lambda *a, **k: private)
    out = tmp_path / "image.safetensors"
    assert main(["text", "--side", "image", "--batch", "16", "--out", str(out), *_args(tmp_path)]) == 0
    assert _keys(out) and all(k.startswith("heads.image.") for k in _keys(out))
    tuned = lite_encoder.with_text(out)
    caps = ["is red instead of blue", "make it a formal shirt"]
    assert torch.equal(tuned.encode_texts(caps), lite_encoder.encode_texts(caps))
    pixels = torch.rand(2, 3, 224, 224)
    assert not torch.allclose(tuned.encode_pixels(pixels), lite_encoder.encode_pixels(pixels))
    now, before = tuned.describe(), lite_encoder.describe()
    assert now["image_side"] and now["image_weights"] != before["image_weights"]


def test_a_text_side_checkpoint_keeps_the_image_side(lite_encoder, tmp_path):
    path = tmp_path / "t.safetensors"
    lite_encoder.save_text(path, stage1_prefixes(lite_encoder, "text"))
    side = lite_encoder.with_text(path)
    assert side.image_digest is None and side.describe() == lite_encoder.describe()
    assert side.heads.image is not lite_encoder.heads.image or side.describe()["image_weights"]


def test_an_encoder_without_a_side_says_so():
    class ImageOnly:
        name = "bof"

    with pytest.raises(ValueError, match="bof cannot be fine-tuned"):
        stage1_prefixes(ImageOnly(), "image")
    with pytest.raises(SystemExit):   # argparse: one line, exit code 2
        main(["text", "--side", "captions"])


def test_the_demo_never_switches_to_a_side_with_another_image_tower(lite_encoder, tmp_path, caplog):
    """A per-query text encoder must keep the served image side: the indexes were extracted with it."""
    text_only, both = tmp_path / "text.safetensors", tmp_path / "both.safetensors"
    lite_encoder.save_text(text_only, stage1_prefixes(lite_encoder, "text"))
    tuned = copy.deepcopy(lite_encoder.heads)
    with torch.no_grad():
        tuned.image.skip.weight.mul_(1.5)
    sd = {f"heads.{k}": v.half() for k, v in tuned.state_dict().items() if k.startswith(("image.", "text."))}
    save_checkpoint(both, sd, TextCheckpointInfo("lite", ["heads.text.", "heads.image."], {}), "text-encoder")
    settings = types.SimpleNamespace(text_checkpoints={"text": str(text_only), "both": str(both)})
    with caplog.at_level(logging.WARNING):
        sides = _load_text_sides(settings, lite_encoder)
    assert sorted(sides) == ["base", "text"]
    assert "both unavailable" in caplog.text and "fine-tunes the image side too" in caplog.text
