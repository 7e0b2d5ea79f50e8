"""The CLIP4Cir knobs of composed training (issue 21): the presets equal the authors' README commands and their
scripts' argparse defaults, CIRR's checkpoint selection by the means of its seven metrics, --validation-frequency,
--save-training's per-epoch and last files, --resume continuing a finished run exactly, float32 checkpoints."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cir.combiner import Combiner, CombinerConfig
from cir.evaluation.metrics import cirr_means
from cir.precision import Precision
from cir.training.config import PRESETS, CombinerStageConfig, TextStageConfig
from cir.training.data import Item, TrainData
from cir.training.stages import _fit

SEVEN = ("Rsubset@1", "Rsubset@2", "Rsubset@3", "R@1", "R@5", "R@10", "R@50")


# ----------------------------------------------------------------------------------------------- presets

def test_the_clip4cir_preset_is_the_readme_commands():
    """README: clip_fine_tune.py --num-epochs 100 --learning-rate 2e-6 --batch-size 128 --transform targetpad
    --target-ratio 1.25 --encoder both --validation-frequency 1; combiner_train.py --projection-dim 2560
    --hidden-dim 5120 --num-epochs 300 --combiner-lr 2e-5 --batch-size 4096 --clip-bs 32 (RN50x4: 640)."""
    t = TextStageConfig(preset="clip4cir", dataset="cirr").with_preset(640)
    assert (t.epochs, t.lr, t.batch, t.optimizer, t.transform, t.target_ratio, t.validation_frequency) == \
        (100, 2e-6, 128, "adamw", "targetpad", 1.25, 1)
    assert PRESETS["clip4cir"]["text"]["side"] == "both"   # taken up by the stage-1 --side option
    c = CombinerStageConfig(preset="clip4cir", dataset="cirr").with_preset(640)
    assert (c.epochs, c.lr, c.batch, c.projection_dim, c.hidden_dim, c.batch_size, c.transform, c.target_ratio,
            c.validation_frequency, c.dropout, c.negatives) == \
        (300, 2e-5, 4096, 2560, 5120, 32, "targetpad", 1.25, 1, 0.5, "batch")


def test_the_argparse_preset_is_the_scripts_defaults():
    """clip_fine_tune.py: --num-epochs 300, --batch-size 512, --validation-frequency 1; combiner_train.py:
    --batch-size 1024, --projection-dim 640 * 4, --hidden-dim 640 * 8 (absolute), --validation-frequency 3."""
    t = TextStageConfig(preset="clip4cir-argparse", dataset="fashioniq").with_preset(512)
    assert (t.epochs, t.lr, t.batch, t.validation_frequency, t.target_ratio) == (300, 2e-6, 512, 1, 1.25)
    c = CombinerStageConfig(preset="clip4cir-argparse", dataset="fashioniq").with_preset(512)
    assert (c.epochs, c.lr, c.batch, c.projection_dim, c.hidden_dim, c.batch_size, c.validation_frequency) == \
        (300, 2e-5, 1024, 2560, 5120, 32, 3)


def test_flags_win_over_the_preset_and_the_project_preset_keeps_its_numbers():
    c = CombinerStageConfig(preset="clip4cir", dataset="cirr", epochs=3, transform="clip", target_ratio=1.5,
                            batch_size=8, select="harmonic", validation_frequency=2).with_preset(640)
    assert (c.epochs, c.transform, c.target_ratio, c.batch_size, c.select, c.validation_frequency) == \
        (3, "clip", 1.5, 8, "harmonic", 2)
    p = CombinerStageConfig(dataset="catalog").with_preset(256)
    assert (p.epochs, p.lr, p.batch, p.transform, p.validation_frequency, p.select, p.batch_size) == \
        (40, 1e-3, 256, None, 1, "r10+attr10", 64)
    assert TextStageConfig(dataset="cirr").with_preset(256).epochs == 10


def test_selection_rules_follow_the_dataset():
    assert CombinerStageConfig(dataset="cirr").with_preset(8).select == "r5+rs1"        # today's rule kept
    assert CombinerStageConfig(dataset="cirr", preset="clip4cir").with_preset(8).select == "arithmetic"
    # the preset's CIRR rule gives way to FashionIQ's own average
    assert CombinerStageConfig(dataset="fashioniq", preset="clip4cir").with_preset(8).select == "average"
    with pytest.raises(ValueError, match="does not apply to fashioniq"):
        CombinerStageConfig(dataset="fashioniq", select="harmonic")


# ----------------------------------------------------------------------------------------------- CIRR's means

def test_cirr_means_on_hand_computed_numbers():
    # 1, 2, 4, ..., 64: arithmetic 127 / 7, geometric 2^(21/7) = 8, harmonic 7 / (127 / 64) = 448 / 127
    m = dict(zip(SEVEN, (1, 2, 4, 8, 16, 32, 64)))
    assert cirr_means(m) == {"mean_arithmetic": round(127 / 7, 4), "mean_harmonic": round(448 / 127, 4),
                             "mean_geometric": 8.0}
    zero = dict(m, **{"R@1": 0})   # 8 -> 0
    assert cirr_means(zero) == {"mean_arithmetic": 17.0, "mean_harmonic": 0.0, "mean_geometric": 0.0}


class _Data(TrainData):
    """A CIRR-like TrainData with 8 fixed items: what _fit needs, without images."""

    dataset = "cirr"

    def __init__(self, cfg):
        self.cfg, self._epochs = cfg, {}

    def _make_epoch(self, epoch: int) -> list[Item]:
        return [Item(i, i, "c") for i in range(8)]


def _row(values) -> dict:
    m = dict(zip(SEVEN, values))
    return {**m, **cirr_means(m)}


def test_the_best_epoch_is_picked_by_the_selected_mean():
    a = _row((10, 10, 10, 10, 10, 10, 10))        # every mean 10, R@5 + Rsubset@1 = 20
    b = _row((0.2, 40, 40, 0.2, 30, 40, 40))      # arithmetic 27.2, geometric 8.4, harmonic 1.3, R@5 + Rs@1 30.2
    assert a["mean_harmonic"] > b["mean_harmonic"] and b["mean_arithmetic"] > a["mean_arithmetic"]
    pick = {rule: max((a, b), key=_Data(CombinerStageConfig(dataset="cirr", select=rule)).score)
            for rule in ("arithmetic", "harmonic", "geometric", "r5+rs1")}
    assert pick == {"arithmetic": b, "harmonic": a, "geometric": a, "r5+rs1": b}
    assert _Data(CombinerStageConfig(dataset="cirr", select="arithmetic")).score({"loss": 1.0}) is None


# ----------------------------------------------------------------------------------------------- the epoch loop

def _run(cfg, scores: list[float], seed: int = 1):
    """_fit on a tiny Combiner (dropout 0: deterministic) with validation scores drawn from `scores`; returns
    (best, history, checkpointer, combiner, validations, steps)."""
    torch.manual_seed(seed)   # another init each call: a resumed run must take its weights from the state
    combiner = Combiner(CombinerConfig(feature_dim=8, projection_dim=16, hidden_dim=16, dropout=0.0))
    feats = F.normalize(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    calls = {"validate": 0, "step": 0}

    def step(batch):
        calls["step"] += 1
        rows = torch.tensor([it.ref for it in batch])
        logits = combiner(feats[rows], feats.flip(0)[rows], feats[rows])
        return F.cross_entropy(logits, torch.arange(len(batch)))

    def validate():
        calls["validate"] += 1
        return _row([scores.pop(0)] * 7)

    best, history, ckpt = _fit(cfg, combiner, list(combiner.parameters()), _Data(cfg), step, validate,
                               Precision.for_device(torch.device("cpu")),
                               lambda path: combiner.save(path, torch.float32))
    return best, history, ckpt, combiner, calls


def _cfg(tmp_path, **kw) -> CombinerStageConfig:
    return CombinerStageConfig(dataset="cirr", cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "c.safetensors"),
                               batch=4, dropout=0.0, select="arithmetic", **kw).with_preset(8)


def test_save_training_writes_validated_epochs_and_the_last_state(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, validation_frequency=2, save_training=True)
    best, history, ckpt, combiner, calls = _run(cfg, [50.0, 20.0])
    assert [h["epoch"] for h in history] == [1, 2, 3] and calls["validate"] == 2
    assert "mean_arithmetic" in history[0] and "mean_arithmetic" not in history[1]   # epoch 2 not validated
    assert sorted(p.name for p in tmp_path.glob("c.epoch*")) == ["c.epoch001.json", "c.epoch001.safetensors",
                                                                   "c.epoch003.json", "c.epoch003.safetensors"]
    assert best["epoch"] == 1   # 50 > 20: the module ends with epoch 1's weights, as its file holds them
    kept = Combiner.load(tmp_path / "c.epoch001.safetensors").state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in combiner.state_dict().items())
    last = torch.load(cfg.last_file(), weights_only=True)
    assert last["epoch"] == 3 and len(last["history"]) == 3
    ckpt.done()
    assert cfg.last_file().exists() and not cfg.resume_file().exists()


def test_resume_continues_a_finished_run_as_if_it_had_never_stopped(tmp_path):
    scores = [10.0, 30.0, 20.0, 40.0, 35.0]
    straight = _run(_cfg(tmp_path / "a", epochs=5, save_training=True), list(scores))
    first = _run(_cfg(tmp_path / "b", epochs=3, save_training=True), scores[:3])
    first[2].done()
    resumed = _run(_cfg(tmp_path / "b", epochs=5, save_training=True, resume="last"), scores[3:], seed=7)
    assert resumed[4] == {"validate": 2, "step": 4}   # epochs 4 and 5 only, two batches each
    assert [h["epoch"] for h in resumed[1]] == [1, 2, 3, 4, 5] and resumed[0]["epoch"] == 4
    assert all(torch.equal(v, straight[3].state_dict()[k]) for k, v in resumed[3].state_dict().items())
    assert [h["loss"] for h in resumed[1]] == [h["loss"] for h in straight[1]]


def test_resume_refuses_another_runs_state(tmp_path):
    _run(_cfg(tmp_path, epochs=1, save_training=True), [1.0])
    with pytest.raises(ValueError, match=r"differing: lr"):
        _run(replace(_cfg(tmp_path, epochs=2, resume="last"), lr=0.5), [1.0])
    with pytest.raises(FileNotFoundError, match="--save-training"):
        _run(_cfg(tmp_path, epochs=2, resume=str(tmp_path / "none.pt")), [1.0])


# ----------------------------------------------------------------------------------------------- --dtype

def test_float32_checkpoints_keep_every_digit(tmp_path):
    c = Combiner(CombinerConfig(feature_dim=8, projection_dim=16, hidden_dim=16))
    c.save(tmp_path / "a.safetensors", torch.float32)
    c.save(tmp_path / "b.safetensors")   # the default: float16
    exact, halved = Combiner.load(tmp_path / "a.safetensors"), Combiner.load(tmp_path / "b.safetensors")
    assert all(torch.equal(v, exact.state_dict()[k]) for k, v in c.state_dict().items())
    assert not all(torch.equal(v, halved.state_dict()[k]) for k, v in c.state_dict().items())
