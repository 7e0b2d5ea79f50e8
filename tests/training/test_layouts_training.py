"""Both training stages through the FashionIQ and CIRR code paths, on real images: the catalogue's own
triplets written into those layouts (catalog.layouts; train from train, val from val), with the lite encoder
and a tiny random CLIP, from the command line. Fast checks of the paths: that a Combiner trained on a layout
beats sum there is a quality margin, measured by benchmarks/bench_layouts.py (docs/benchmarks.md)."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cir import encoders
from cir.catalog import layouts
from cir.catalog.layouts import write_cirr, write_fashioniq
from cir.cli.evaluate import main as evaluate_main
from cir.cli.train import main as train_main
from cir.combiner import Combiner
from cir.data import catalog_images

pytestmark = pytest.mark.slow   # long end-to-end runs: deselect with -m 'not slow'


@pytest.fixture(scope="module")
def small_layouts(tmp_path_factory, catalog_root):
    """Small FashionIQ and CIRR layouts from the first catalogue images of each split."""
    base = tmp_path_factory.mktemp("small-layouts")
    mp = pytest.MonkeyPatch()
    full = catalog_images
    sizes = {"train": 300, "val": 120}
    mp.setattr(layouts, "catalog_images", lambda root, split=None: full(root, split)[:sizes.get(split, 120)])
    try:
        write_fashioniq(catalog_root, base / "fiq", categories=["toptee"], per_kind=40)
        write_cirr(catalog_root, base / "cirr", per_kind=25)
    finally:
        mp.undo()
    return base


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _common(tmp_path, features, *extra: str) -> list[str]:
    return ["--features", str(features), "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--device", "cpu",
            *extra]


def test_lite_combiner_on_the_fashioniq_layout_is_evaluated_as_validated(small_layouts, lite_encoder, tmp_path,
                                                                          capsys, monkeypatch):
    """Stage 2 on a FashionIQ layout: the batch loss by default there, raw inputs recorded, and evaluate.py on
    the saved checkpoint gives exactly the validation of its best epoch (validation is the evaluation protocol)."""
    root, features = small_layouts / "fiq", small_layouts / "features"
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder.with_text(k.get("text")))
    out = tmp_path / "c.safetensors"
    assert train_main(["combiner", "--dataset", "fashioniq", "--data-root", str(root), "--categories", "toptee",
                       *_common(tmp_path, features, "--epochs", "2", "--out", str(out))]) == 0
    best = _last_json(capsys)["best_val"]
    assert Combiner.load(out).cfg.inputs == "raw"
    report = json.loads(out.with_name("c.train.json").read_text())
    assert report["args"]["negatives"] == "batch" and report["args"]["preset"] == "project"
    assert report["args"]["cmd"] == "combiner" and len(report["history"]) == 2
    assert evaluate_main(["--task", "composed", "--dataset", "fashioniq", "--data-root", str(root), "--split", "val",
                          "--features", str(features), "--workers", "0", "--device", "cpu",
                          "--combiner", str(out)]) == 0
    combined = _last_json(capsys)
    assert combined["average_R@10"] == best["average_R@10"] and combined["average_R@50"] == best["average_R@50"]


def test_lite_stage1_on_the_cirr_layout_with_the_papers_preset(small_layouts, lite_encoder, tmp_path, capsys,
                                                              monkeypatch):
    private = copy.copy(lite_encoder)  # stage 1 fine-tunes the encoder it loads: give it a private head
    private._modules = dict(lite_encoder._modules)
    private._modules["heads"] = copy.deepcopy(lite_encoder.heads)
    monkeypatch.setattr(encoders, "load", lambda *a, **k: private)
    out = tmp_path / "text.safetensors"
    assert train_main(["text", "--dataset", "cirr", "--data-root", str(small_layouts / "cirr"), "--preset", "clip4cir",
                       "--lr", "1e-4", "--batch", "32",
                       *_common(tmp_path, small_layouts / "features", "--epochs", "2", "--out", str(out))]) == 0
    best = _last_json(capsys)["best_val"]
    assert {"R@1", "R@5", "Rsubset@1", "avg"} <= set(best)
    args = json.loads(out.with_name("text.train.json").read_text())["args"]
    assert (args["optimizer"], args["negatives"], args["batch"]) == ("adamw", "batch", 32)
    assert lite_encoder.with_text(out).text_side.path == out.resolve()


def test_cirr_training_without_train_captions_says_so(tmp_path, lite_encoder, monkeypatch, cirr_formats):
    root = tmp_path / "cirr"
    shutil.copytree(cirr_formats, root)
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder)
    with pytest.raises(FileNotFoundError, match="cap.rc2.train.json"):
        train_main(["combiner", "--dataset", "cirr", "--data-root", str(root), *_common(tmp_path, tmp_path / "f")])


@pytest.mark.parametrize("dataset", ["fashioniq", "cirr"])
def test_tiny_clip_trains_both_stages(small_layouts, tiny_clip_dir, dataset, tmp_path, capsys):
    """Stage 1 on both towers (as the papers), then stage 2 and evaluation on features of the tuned image tower."""
    root = small_layouts / {"fashioniq": "fiq", "cirr": "cirr"}[dataset]
    enc = f"hf:{tiny_clip_dir}"
    features = tmp_path / "features"
    text = tmp_path / "text.safetensors"
    assert train_main(["text", "--dataset", dataset, "--data-root", str(root), "--encoder", enc, "--batch", "16",
                       "--side", "both", *_common(tmp_path, features, "--epochs", "1", "--out", str(text))]) == 0
    digest = encoders.load(enc, "cpu", text=text).image_digest
    assert digest and not any("image_side" in json.loads(m.read_text()) for m in features.glob("*/manifest.json"))
    comb = tmp_path / "comb.safetensors"
    assert train_main(["combiner", "--dataset", dataset, "--data-root", str(root), "--encoder", enc,
                       "--text-encoder", str(text), "--preset", "clip4cir", "--batch", "16",
                       *_common(tmp_path, features, "--epochs", "2", "--out", str(comb))]) == 0
    cfg = Combiner.load(comb).cfg
    assert (cfg.encoder, cfg.text_encoder, cfg.inputs) == (enc, str(text), "raw")
    assert (cfg.projection_dim, cfg.hidden_dim, cfg.dropout) == (4 * cfg.feature_dim, 8 * cfg.feature_dim, 0.5)
    assert evaluate_main(["--task", "composed", "--dataset", dataset, "--data-root", str(root), "--split", "val",
                          "--encoder", enc, "--combiner", str(comb), "--features", str(features), "--workers", "0",
                          "--device", "cpu"]) == 0
    metrics = _last_json(capsys)
    assert metrics["text_encoder"] == str(text) and metrics["queries"] > 0
    manifests = [json.loads(m.read_text()) for m in features.glob("*/manifest.json")]
    assert manifests and all(m["image_side"] == digest for m in manifests)  # extracted again with the tuned tower


def test_tiny_clip_with_the_original_knobs_saves_every_epoch_and_resumes(small_layouts, tiny_clip_dir, tmp_path,
                                                                         capsys):
    """train.py combiner with the CLIP4Cir flags on the CIRR layout: --transform clip, --select harmonic,
    --save-training (per-epoch files, last state), --dtype float32 (features and checkpoint), then --resume with
    more epochs; evaluate.py on the same features gives the kept epoch's validation."""
    root, features, out = small_layouts / "cirr", tmp_path / "features", tmp_path / "c.safetensors"
    argv = ["combiner", "--dataset", "CIRR", "--data-root", str(root), "--clip-model-name", f"hf:{tiny_clip_dir}",
            "--preset", "clip4cir", "--batch", "16", "--transform", "clip", "--select", "harmonic", "--save-training",
            "--dtype", "float32", "--out", str(out), *_common(tmp_path, features)]
    assert train_main([*argv, "--num-epochs", "2"]) == 0
    assert {p.name for p in tmp_path.glob("c.*")} >= {"c.epoch001.safetensors", "c.epoch002.safetensors",
                                                      "c.last.pt", "c.train.json"}
    assert train_main([*argv, "--num-epochs", "3", "--resume"]) == 0
    best = _last_json(capsys)["best_val"]
    report = json.loads(out.with_name("c.train.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3] and (tmp_path / "c.epoch003.safetensors").exists()
    assert best == max(report["history"], key=lambda h: h["mean_harmonic"])
    assert (report["args"]["transform"], report["args"]["select"], report["args"]["dtype"]) == \
        ("clip", "harmonic", "float32")
    assert all(v.dtype == torch.float32 for v in load_file(out).values())
    manifest = json.loads((features / "cirr-val" / "manifest.json").read_text())
    assert (manifest["dtype"], manifest["preprocess"]["mode"]) == ("float32", "clip")
    assert evaluate_main(["--task", "composed", "--dataset", "cirr", "--data-root", str(root), "--split", "val",
                          "--encoder", f"hf:{tiny_clip_dir}", "--combiner", str(out), "--features", str(features),
                          "--workers", "0", "--device", "cpu", "--transform", "clip", "--dtype", "float32",
                          "--empty-captions", "encode"]) == 0
    metrics = _last_json(capsys)
    assert all(metrics[k] == best[k] for k in ("R@1", "R@5", "Rsubset@1", "mean_harmonic"))
