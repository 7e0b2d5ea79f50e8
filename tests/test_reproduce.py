"""`python3 -m cir.reproduce`: a paper's whole pipeline end to end on a tiny random CLIP (hf:) over small FashionIQ
and CIRR layouts written by cir.catalog.layouts from a handful of catalogue images (CIRR's test1 made from its val
split, targets removed): every step's outputs, the protocol's table beside the papers' numbers, valid CIRR
submission files, and a second run that skips every step."""
from __future__ import annotations

import json

import pytest

from cir.catalog import layouts
from cir.catalog.layouts import write_cirr, write_fashioniq
from cir.cli.reproduce import main, parser
from cir.combiner import Combiner
from cir.data import catalog_images, list_images, load_triplets
from cir.evaluation.submission import check_submission
from cir.reproduce import PUBLISHED, columns, format_table, pipeline

pytestmark = pytest.mark.slow   # end-to-end runs: deselect with -m 'not slow'

SIZES = {"train": 90, "val": 45}   # first catalogue images of each split the layouts are written from


@pytest.fixture(scope="module")
def tiny_layouts(tmp_path_factory, catalog_root):
    """FashionIQ (toptee, shirt) and CIRR (train, val, and a test1 copied from val without targets) layouts."""
    base = tmp_path_factory.mktemp("reproduce-layouts")
    mp = pytest.MonkeyPatch()
    full = catalog_images
    mp.setattr(layouts, "catalog_images", lambda root, split=None: full(root, split)[:SIZES.get(split, 45)])
    try:
        write_fashioniq(catalog_root, base / "fiq", categories=["toptee", "shirt"], per_kind=8)
        write_cirr(catalog_root, base / "cirr", per_kind=4)
    finally:
        mp.undo()
    cirr = base / "cirr" / "cirr"
    val = json.loads((cirr / "captions" / "cap.rc2.val.json").read_text())
    test1 = [{k: v for k, v in e.items() if k not in ("target_hard", "target_soft")} for e in val]
    for e in test1:
        e["img_set"] = {k: v for k, v in e["img_set"].items() if k != "target_rank"}
    (cirr / "captions" / "cap.rc2.test1.json").write_text(json.dumps(test1))
    (cirr / "image_splits" / "split.rc2.test1.json").write_text((cirr / "image_splits" / "split.rc2.val.json")
                                                                .read_text())
    return {"fashioniq": base / "fiq", "cirr": base / "cirr"}


def _run(capsys, argv: list[str]) -> tuple[str, dict]:
    """main(argv): the printed table and the last line's JSON."""
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return "\n".join(out[:-1]), json.loads(out[-1])


@pytest.mark.parametrize("dataset", ["fashioniq", "cirr"])
def test_the_whole_pipeline_runs_and_reruns_as_up_to_date(tiny_layouts, tiny_clip_dir, dataset, tmp_path, capsys):
    root, run = tiny_layouts[dataset], tmp_path / "run"
    argv = [dataset, "--data-root", str(root), "--encoder", f"hf:{tiny_clip_dir}", "--out", str(run), "--quick",
            "--workers", "0", "--device", "cpu"]
    table, last = _run(capsys, argv)
    expected = {"stage1": "ran", "stage2": "ran", "evaluate": "ran", **({"submission": "ran"} if dataset == "cirr"
                                                                        else {})}
    assert last["steps"] == expected
    results = json.loads((run / "results.json").read_text())
    splits = ("train", "val", "test1") if dataset == "cirr" else ("train", "val")
    assert all(any(name.endswith(f"-{s}") or f"-{s}-" in name for name in results["features"]) for s in splits)
    for path in ("stage1/text.safetensors", "stage1/text.train.json", "stage2/combiner.safetensors",
                 "stage2/combiner.train.json", "eval/val-rankings.json", "results.md", "steps.json"):
        assert (run / path).is_file(), path
    combiner = Combiner.load(run / "stage2" / "combiner.safetensors").cfg
    assert combiner.text_encoder == str(run / "stage1" / "text.safetensors")   # stage 2 on stage 1's text side
    for stage in ("stage1/text", "stage2/combiner"):
        args = json.loads((run / f"{stage}.train.json").read_text())["args"]
        assert (args["preset"], args["epochs"], args["negatives"], args["transform"]) == \
            ("clip4cir", 1, "batch", "targetpad")
    # the evaluation is the validation of the kept epoch, and the table has the protocol's columns
    best = results["training"]["stage2"]["best_val"]
    keys = [k for k, _ in columns(dataset, results["metrics"])]
    assert all(results["metrics"][k] == best[k] for k in keys if k in best) and any(k in best for k in keys)
    header = table.splitlines()[0]
    wanted = (["R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"] if dataset == "cirr"
              else ["toptee R@10", "toptee R@50", "shirt R@10", "shirt R@50", "avg R@10", "avg R@50"])
    assert all(f" {w} |" in header for w in wanted), header
    assert all(f"{p.metrics[k]:.2f}" in table for p in PUBLISHED[dataset] for k in p.metrics)
    assert (run / "results.md").read_text().strip() == table
    if dataset == "cirr":
        names = {r.name for r in list_images("cirr", root, "test1")}
        recall, subset = check_submission(run / "submission" / "test1.json", load_triplets("cirr", root, "test1"),
                                          names)
        assert len(recall) - 2 == len(subset) - 2 == last["submission"]["pairs"] > 0
    # re-run: every step is up to date, the numbers are the same
    again, last = _run(capsys, argv)
    assert set(last["steps"].values()) == {"up to date"} and again == table


def test_stage1_trains_the_presets_side():
    cfg = pipeline.ReproduceConfig("cirr")
    assert pipeline.text_config(cfg).with_preset(640).side == "both"   # the authors' --encoder both


def test_quick_and_scaled_epochs():
    cfg = pipeline.ReproduceConfig("cirr", epochs_scale=0.1)
    assert pipeline.text_config(cfg).epochs == 10 and pipeline.combiner_config(cfg, "base").epochs == 30
    quick = pipeline.ReproduceConfig("cirr", quick=True)
    assert (pipeline.combiner_config(quick, "base").epochs, pipeline.combiner_config(quick, "base").batch) == (1, 32)
    assert pipeline.text_config(pipeline.ReproduceConfig("cirr")).epochs is None   # the preset's 100


def test_the_table_without_a_run_metric_and_bad_flags(capsys):
    table = format_table("fashioniq", "run", {"dress_R@10": 1.0})
    assert "| run | val | 1.00 | — |" in table and "55.36" in table and "paperswithcode.com" in table
    help_text = parser().format_help()
    for flag in ("--data-root", "--encoder", "--out", "--preset", "--epochs-scale", "--quick", "--skip-stage1",
                 "--features", "--batch-size", "--workers", "--transform", "--dtype", "--device", "--restart"):
        assert flag in help_text
    with pytest.raises(SystemExit):
        parser().parse_args(["cirr", "--quick", "--epochs-scale", "2"])
    with pytest.raises(ValueError, match="categories"):
        main(["cirr", "--categories", "dress"])


def test_steps_skip_what_is_done_and_restart_what_changed(tmp_path):
    calls = []

    def step(restart: bool) -> dict:
        calls.append(restart)
        return {"n": len(calls)}

    out = tmp_path / "out.txt"
    steps = pipeline.Steps(tmp_path / "steps.json", restart=False)
    steps._record("a", {"key": "k1", "started": True})          # a run interrupted in step a
    assert pipeline.Steps(tmp_path / "steps.json", False).run("a", "k1", [out], step) == {"n": 1}
    assert calls == [False]                                        # same settings: its own state resumes
    out.write_text("x")
    assert pipeline.Steps(tmp_path / "steps.json", False).run("a", "k1", [out], step) == {"n": 1}
    assert calls == [False]                                        # done and its output there: skipped
    again = pipeline.Steps(tmp_path / "steps.json", False)
    assert again.run("a", "k2", [out], step) == {"n": 2} and calls == [False, True]   # other settings
    assert again.status == {"a": "ran"}
    out.unlink()
    pipeline.Steps(tmp_path / "steps.json", False).run("a", "k2", [out], step)   # output gone: run again
    pipeline.Steps(tmp_path / "steps.json", True).run("a", "k2", [out], step)    # --restart
    assert calls == [False, True, False, True]
