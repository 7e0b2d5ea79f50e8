"""Composed training (train.py text / combiner) on a small slice of the catalogue: the loss goes down, the
checkpoints load where encoders and combiners are chosen, and an interrupted run resumes."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from cir import encoders
from cir.catalog import families, triplets
from cir.cli.train import main
from cir.combiner import Combiner
from cir.data import catalog_images
from cir.encoders import BASE_TEXT
from cir.encoders.texts import CachedTexts
from cir.training import data as training_data
from cir.training import references
from cir.training.config import CombinerStageConfig, TextStageConfig
from cir.training.data import CatalogData, Item
from cir.training.stages import composed_loss

SLICE = {"train": 240, "val": 90}


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    """Shared by the tests here, so the small slice is extracted once."""
    return tmp_path_factory.mktemp("train-features")


@pytest.fixture()
def small_catalog(monkeypatch, catalog_root, lite_encoder):
    """catalog_images limited to the first images of each split, and the session's lite encoder."""
    full = catalog_images

    def sliced(root, split=None):
        return full(root, split)[:SLICE.get(split, 10 ** 9)]

    monkeypatch.setattr(training_data, "catalog_images", sliced)
    photos = references.photo_images
    # every 40th photo: a few of each class (labels.csv lists them class by class)
    monkeypatch.setattr(references, "photo_images", lambda root, split=None: photos(root, split)[::40])
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder.with_text(k.get("text")))
    return catalog_root


def _args(tmp_path, features_dir, *extra: str) -> list[str]:
    return ["--features", str(features_dir), "--cache-dir", str(tmp_path / "cache"), "--per-kind", "80",
            "--val-per-kind", "40", "--batch", "64", "--workers", "0", *extra]


@pytest.mark.slow
def test_combiner_training_lowers_the_loss_and_saves_a_loadable_checkpoint(small_catalog, features_dir, tmp_path,
                                                                           capsys):
    out = tmp_path / "c.safetensors"
    assert main(["combiner", *_args(tmp_path, features_dir, "--epochs", "4", "--out", str(out),
                                          "--projection-dim", "64", "--hidden-dim", "128")]) == 0
    report = json.loads(out.with_name("c.train.json").read_text())
    losses = [h["loss"] for h in report["history"]]
    assert losses[-1] < losses[0]
    assert {"R@1", "R@10", "R@50", "attr@10"} <= set(report["best"])
    c = Combiner.load(out)
    assert (c.cfg.encoder, c.cfg.text_encoder, c.cfg.projection_dim) == ("lite", "base", 64)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["saved"] == str(out)
    assert not list((tmp_path / "cache").glob("*.resume.pt"))  # finished runs leave no resume state
    with Image.open(out.with_name("c.train.png")) as im:  # the history's curve, beside it
        assert im.format == "PNG" and im.size == (1000, 450)


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(small_catalog, features_dir, tmp_path, monkeypatch):
    out = tmp_path / "c.safetensors"
    real, calls = CatalogData.validate, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(CatalogData, "validate", flaky)
    argv = ["combiner", *_args(tmp_path, features_dir, "--epochs", "2", "--out", str(out), "--projection-dim", "32",
                               "--hidden-dim", "64")]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert not out.exists() and len(list((tmp_path / "cache").glob("combiner-*.resume.pt"))) == 1
    monkeypatch.setattr(CatalogData, "validate", real)
    assert main(argv) == 0
    history = json.loads(out.with_name("c.train.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 came from the saved state, not a rerun


@pytest.mark.slow
def test_stage1_text_checkpoint_changes_only_the_text_side(small_catalog, features_dir, tmp_path, lite_encoder,
                                                           monkeypatch):
    out = tmp_path / "text.safetensors"
    # train.py text fine-tunes the encoder it loads in place: give it a private copy of the heads.
    private = copy.copy(lite_encoder)
    private._modules = dict(lite_encoder._modules)
    private._modules["heads"] = copy.deepcopy(lite_encoder.heads)
    monkeypatch.setattr(encoders, "load", lambda *a, **k: private)
    assert main(["text", "--side", "text", *_args(tmp_path, features_dir, "--epochs", "2", "--out", str(out))]) == 0
    history = json.loads(out.with_name("text.train.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    tuned = lite_encoder.with_text(out)
    assert tuned.text_side.path == out.resolve() and lite_encoder.text_side == BASE_TEXT
    caps = ["is red instead of blue", "make it a formal shirt"]
    assert not torch.allclose(tuned.encode_texts(caps), lite_encoder.encode_texts(caps))
    pixels = torch.rand(2, 3, 224, 224)
    assert torch.equal(tuned.encode_pixels(pixels), lite_encoder.encode_pixels(pixels))


def test_text_checkpoints_are_checked(lite_encoder, tmp_path):
    assert lite_encoder.with_text("base") is lite_encoder
    with pytest.raises(FileNotFoundError, match="train.py text"):
        lite_encoder.with_text(tmp_path / "missing.safetensors")
    path = tmp_path / "t.safetensors"
    lite_encoder.save_text(path, ["heads.text."])
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "encoder": "hf:other"}))
    with pytest.raises(ValueError, match="trained for encoder 'hf:other'"):
        lite_encoder.with_text(path)


def test_soft_targets_reward_the_target_and_every_attribute_match():
    data = CatalogData.__new__(CatalogData)
    data.train = list(range(5))  # only its length is used
    attrs = [{"gender": "Men", "articleType": "Tshirts", "baseColour": c, "usage": "Casual"}
             for c in ("Red", "Red", "Red", "Blue")] + [{"gender": "Unisex", "articleType": "Tshirts",
                                                          "baseColour": "Red", "usage": "Casual"}]
    data._masks = triplets.ConditionMasks(attrs)
    red = triplets.make_key({"gender": "Men", "articleType": "Tshirts", "baseColour": "Red", "usage": "Casual"})
    blue = triplets.make_key({"gender": "Men", "articleType": "Tshirts", "baseColour": "Blue", "usage": "Casual"})
    not_red = triplets.make_key({"gender": ("Men", "Unisex"), "articleType": "Tshirts"}, {"baseColour": ("Red",)})
    anyone_red = triplets.make_key({"gender": ("Men", "Unisex"), "baseColour": "Red"})
    items = [Item(5, 0, "c", red), Item(6, 3, "c", blue), Item(7, 3, "c", not_red),
             Item(8, 4, "c", anyone_red)]
    gallery = data.positives(items, torch.tensor([0, 3, 3, 4]))
    assert torch.allclose(gallery.sum(1), torch.ones(4))
    assert torch.allclose(gallery[0], torch.tensor([0.5 + 0.5 / 3, 0.5 / 3, 0.5 / 3, 0.0, 0.0]))
    assert torch.allclose(gallery[1], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(gallery[2], gallery[1])  # the unwanted colour rules out every red one
    assert torch.allclose(gallery[3], torch.tensor([0.5 / 4, 0.5 / 4, 0.5 / 4, 0.0, 0.5 + 0.5 / 4]))


def test_batch_negatives_are_the_papers_one_hot_classification():
    """--negatives batch: cross-entropy against arange over the batch's targets, whatever the attributes."""
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    items = [Item(0, i, "c", ("same",)) for i in range(3)]  # identical wanted attributes
    got = composed_loss(logits, None, items, torch.arange(3), "batch")
    ref = -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert torch.allclose(got, ref)


def test_presets_fill_only_what_is_unset():
    cfg = CombinerStageConfig(preset="clip4cir", dataset="fashioniq", hidden_dim=64).with_preset(640)
    assert (cfg.lr, cfg.batch, cfg.projection_dim, cfg.hidden_dim, cfg.dropout, cfg.negatives) == \
        (2e-5, 4096, 2560, 64, 0.5, "batch")
    cfg = TextStageConfig(preset="clip4cir", dataset="catalog").with_preset(640)
    assert (cfg.lr, cfg.batch, cfg.optimizer, cfg.negatives) == (2e-6, 128, "adamw", "batch")
    cfg = TextStageConfig(preset="project", dataset="catalog", negatives="batch").with_preset(256)
    assert (cfg.lr, cfg.batch, cfg.negatives) == (3e-4, 256, "batch")
    assert TextStageConfig(preset="project", dataset="catalog").with_preset(256).negatives == "gallery"


def test_the_resume_key_ignores_what_does_not_change_the_result(tmp_path):
    base = CombinerStageConfig(cache_dir=str(tmp_path))
    same = CombinerStageConfig(cache_dir=str(tmp_path), epochs=99, out="elsewhere.safetensors", workers=3, restart=True)
    assert base.resume_file() == same.resume_file() and base.resume_file().parent == tmp_path
    assert base.resume_file() != CombinerStageConfig(cache_dir=str(tmp_path), lr=0.5).resume_file()
    assert base.resume_file() != TextStageConfig(cache_dir=str(tmp_path)).resume_file()


def test_name_edit_items_take_their_explicit_positive_rows():
    data = CatalogData.__new__(CatalogData)
    data.train = list(range(4))
    data._masks = triplets.ConditionMasks([{"baseColour": c} for c in ("Red", "Red", "Blue", "Blue")])
    items = [Item(0, 1, "c", triplets.make_key({"baseColour": "Red"})), Item(0, 2, "the same from nike",
                                                                            rows=np.array([2, 3]))]
    gallery = data.positives(items, torch.tensor([1, 2]))
    assert torch.allclose(gallery[0], torch.tensor([0.25, 0.75, 0.0, 0.0]))
    assert torch.allclose(gallery[1], torch.tensor([0.0, 0.0, 0.75, 0.25]))


@pytest.mark.slow
def test_an_epoch_mixes_photo_like_views_real_photos_and_name_edits(small_catalog, features_dir, tmp_path,
                                                                    lite_encoder):
    cfg = CombinerStageConfig(features=str(features_dir), cache_dir=str(tmp_path), per_kind=20, val_per_kind=10,
                              photo_like=0.5, photo_triplets=30, name_edits=30, workers=0)
    data = CatalogData(lite_encoder, cfg)
    n, refs = len(data.train), data.reference_matrix()
    photos, labels = data.photos["train"]
    assert refs.shape == (2 * n + len(photos), lite_encoder.dim) and torch.isfinite(refs).all()
    assert not torch.allclose(refs[:n], refs[n:2 * n])  # the photo-like views are other pixels
    items = data.epoch(0)
    kinds = [("photo" if it.ref >= 2 * n else "view" if it.ref >= n else "clean") for it in items]
    assert {"photo", "view", "clean"} <= set(kinds)
    edits = [it for it in items if it.rows is not None]
    assert 0 < len(edits) <= 30 and all(it.tgt in it.rows for it in edits)
    assert data.epoch(0) is items and [it.caption for it in CatalogData(lite_encoder, cfg).epoch(0)] == \
        [it.caption for it in items]  # reproducible from the seed
    held = CatalogData(lite_encoder, replace(cfg, exclude_kinds=families.held_out(["colour"])))
    assert not [it for it in held.epoch(0) if it.ref >= 2 * n]  # photo triplets teach colour: left out
    metrics = data.validate(CachedTexts(lite_encoder), "sum")
    assert {"R@1", "R@10", "R@50", "attr@10"} <= set(metrics)
    assert any(t.reference in data.photos["val"][1] for t in data.val) and data.val_edits
