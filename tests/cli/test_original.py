"""The original CLIP4Cir scripts' flags (cir.cli.original): our parsers take their aliases, the README's command
lines translate into ours and mean the same numbers, and docs/training.md shows every flag of the table."""
from __future__ import annotations

from pathlib import Path

import pytest

from cir.cli import evaluate, extract, train
from cir.cli.original import FLAGS, main, translate
from cir.training.config import CombinerStageConfig, TextStageConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"
COMET = ["--api-key", "K", "--workspace", "W", "--experiment-name", "E"]
# The CLIP4Cir README's commands, flag for flag.
README_FT = ["--dataset", "CIRR", *COMET, "--num-epochs", "100", "--clip-model-name", "RN50x4", "--encoder", "both",
             "--learning-rate", "2e-6", "--batch-size", "128", "--transform", "targetpad", "--target-ratio", "1.25",
             "--save-training", "--save-best", "--validation-frequency", "1"]
README_COMB = ["--dataset", "FashionIQ", *COMET, "--projection-dim", "2560", "--hidden-dim", "5120", "--num-epochs",
               "300", "--clip-model-name", "RN50x4", "--clip-model-path", "tuned.pt", "--combiner-lr", "2e-5",
               "--batch-size", "4096", "--clip-bs", "32", "--transform", "targetpad", "--target-ratio", "1.25",
               "--save-training", "--save-best", "--validation-frequency", "1"]
README_VAL = ["--dataset", "CIRR", "--combining-function", "combiner", "--combiner-path", "c.pt", "--projection-dim",
              "2560", "--hidden-dim", "5120", "--clip-model-name", "RN50x4", "--clip-model-path", "tuned.pt",
              "--target-ratio", "1.25", "--transform", "targetpad"]
COMPARED = ("epochs", "lr", "batch", "batch_size", "optimizer", "negatives", "transform", "target_ratio",
            "validation_frequency", "projection_dim", "hidden_dim", "dropout")


def _config(argv: list[str]):
    args = train.parser().parse_args(argv)
    return train.from_args(train.STAGES[args.cmd][0], args)


def test_the_readme_combiner_command_means_the_clip4cir_preset():
    ours = translate("src/combiner_train.py", README_COMB)
    assert ours[:2] == ["train.py", "combiner"] and "--api-key" not in ours and "--save-best" not in ours
    cfg = _config(ours[1:])
    assert (cfg.dataset, cfg.encoder, cfg.text_encoder, cfg.batch, cfg.batch_size, cfg.save_training) == \
        ("fashioniq", "openai:RN50x4", "tuned.pt", 4096, 32, True)
    preset = CombinerStageConfig(preset="clip4cir", dataset="fashioniq").with_preset(640)
    resolved = cfg.with_preset(640)
    assert {k: getattr(resolved, k) for k in COMPARED} == {k: getattr(preset, k) for k in COMPARED}


def test_the_readme_fine_tuning_command_means_the_clip4cir_preset():
    ours = translate("clip_fine_tune.py", README_FT)
    assert ours[ours.index("--side") + 1] == "both" and ours[ours.index("--batch") + 1] == "128"
    ours = ours[:ours.index("--side")] + ours[ours.index("--side") + 2:]   # --side: the stage-1 side option's
    cfg = _config(ours[1:]).with_preset(640)
    preset = TextStageConfig(preset="clip4cir", dataset="cirr").with_preset(640)
    assert {k: getattr(cfg, k) for k in COMPARED if hasattr(cfg, k)} == \
        {k: getattr(preset, k) for k in COMPARED if hasattr(preset, k)}


def test_the_original_names_are_accepted_as_they_are():
    cfg = _config(["combiner", "--dataset", "CIRR", "--num-epochs", "5", "--combiner-lr", "0.1", "--clip-bs", "8",
                   "--clip-model-name", "RN50", "--clip-model-path", "t.pt", "--save-training", "--save-best",
                   "--validation-frequency", "2", "--transform", "clip", "--target-ratio", "1.5"])
    assert (cfg.dataset, cfg.epochs, cfg.lr, cfg.batch_size, cfg.encoder, cfg.text_encoder, cfg.save_training,
            cfg.validation_frequency, cfg.transform, cfg.target_ratio, cfg.batch) == \
        ("cirr", 5, 0.1, 8, "openai:RN50", "t.pt", True, 2, "clip", 1.5, None)
    assert _config(["text", "--learning-rate", "0.2", "--num-epochs", "3"]).lr == 0.2
    # our --batch-size stays the extraction batch: the original's --batch-size is --batch here
    assert (_config(["combiner", "--batch-size", "7"]).batch_size, _config(["combiner", "--batch", "7"]).batch) == \
        (7, 7)
    args = evaluate.parser().parse_args(["--task", "composed", "--dataset", "FashionIQ", "--clip-model-name", "RN50x4",
                                         "--clip-model-path", "t.pt", "--transform", "squarepad"])
    assert (args.dataset, args.encoder, args.text_encoder, args.transform) == ("fashioniq", "openai:RN50x4", "t.pt",
                                                                                "squarepad")
    args = extract._parser().parse_args(["--preprocess", "resize", "--dtype", "float32"])   # the older name stays
    assert (args.transform, args.dtype) == ("resize", "float32")


def test_the_validation_and_submission_commands_translate(tmp_path, monkeypatch):
    assert translate("validate.py", README_VAL) == [
        "evaluate.py", "--task", "composed", "--dataset", "cirr", "--combiner", "c.pt", "--encoder", "openai:RN50x4",
        "--text-encoder", "tuned.pt", "--target-ratio", "1.25", "--transform", "targetpad"]
    sub = translate("cirr_test_submission.py", ["--submission-name", "run1", "--combining-function", "sum"])
    assert sub[sub.index("--submission") + 1] == "submission/CIRR/run1.json" and "test1" in sub
    assert sub[-2:] == ["--encoder", "openai:RN50x4"]   # the scripts' default model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.pt").write_bytes(b"x")   # --combiner checks that a checkpoint path is a file
    evaluate.parser().parse_args(translate("validate.py", README_VAL)[1:])   # and our parser takes it


def test_unknown_flags_and_scripts_are_refused(capsys):
    with pytest.raises(ValueError, match="has no flag --clip-bs"):
        translate("clip_fine_tune.py", ["--clip-bs", "3"])
    with pytest.raises(ValueError, match="unknown script"):
        translate("train.py", [])
    assert main(["combiner_train.py", "--num-epochs", "3"]) == 0
    assert capsys.readouterr().out.startswith("python3 train.py combiner --preset clip4cir-argparse --epochs 3")
    assert main(["combiner_train.py", "--nope", "1"]) == 2


def test_docs_show_every_flag_of_the_table():
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in DOCS.read_text().splitlines()
            if line.startswith("| `--")]
    for f in FLAGS:
        row = next((r for r in rows if f"`{f.original}`" in r[0]), None)
        assert row is not None and row[1] == (f"`{f.ours}`" if f.ours else "none"), f.original
        assert row[3] == ("yes" if f.alias else "no"), f.original
