"""plots.py: the plotted data against the metrics it shows (recall curves against recall_at_k, per-kind bars
against the kinds table, training series against the history), and the PNGs drawn from it (valid, 1000 x 450)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir.cli.plots import main
from cir.evaluation.metrics import recall_at_k
from cir.evaluation.plots import (
    draw_eval,
    draw_training,
    eval_plot_data,
    kind_bars,
    plot_training,
    recall_curve,
    training_plot_data,
)
from cir.utils import run_cli


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()  # a truncated or corrupt file fails here
    with Image.open(path) as im:
        return im.size


def test_recall_curve_is_recall_at_every_k():
    g = torch.Generator().manual_seed(0)
    ranked = torch.stack([torch.randperm(80, generator=g)[:50] for _ in range(37)])
    targets = torch.randint(0, 80, (37,), generator=g)
    targets[0] = -1  # a target without features: a miss at every K
    curve = recall_curve(ranked, targets)
    assert len(curve) == 50
    expected = recall_at_k(ranked, targets, range(1, 51))
    assert curve == [expected[f"R@{k}"] for k in range(1, 51)]
    assert curve == sorted(curve) and 0 < curve[-1] < 100


def test_recall_curve_by_hand_and_short_rankings():
    ranked = torch.tensor([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    targets = torch.tensor([1, 0, 2])  # found at K=2, K=1, never
    curve = recall_curve(ranked, targets, top=5)
    assert curve == [33.33, 66.67, 66.67, 66.67, 66.67]  # past the 3 ranked ids nothing new is found
    assert recall_curve(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4) == [0.0] * 4


def test_eval_plot_data_keeps_each_methods_curves_and_kind_bars():
    kinds = {"colour": {"queries": 5, "R@10": 40.0, "attr@10": 30.0, "attr@10_ceiling": 90.0},
             "type": {"queries": 5, "R@10": 20.0, "attr@10": 10.0, "attr@10_ceiling": 50.0}}
    sum_kinds = {k: {**v, "R@10": v["R@10"] / 2} for k, v in kinds.items()}
    runs = {"combiner": ({"R@10": 30.0, "kinds": kinds}, {"": [1.0] * 50}),
            "sum": ({"R@10": 15.0, "kinds": sum_kinds}, {"": [0.5] * 50})}
    plot = eval_plot_data("t", runs)
    assert plot.curves == {"combiner": [1.0] * 50, "sum": [0.5] * 50}
    assert plot.bars["R@10"] == {"colour": {"combiner": 40.0, "sum": 20.0}, "type": {"combiner": 20.0, "sum": 10.0}}
    assert plot.bars["attr@10"]["colour"] == {"combiner": 30.0, "ceiling": 90.0, "sum": 30.0}
    assert set(plot.bars) == {"R@10", "attr@10"}


def test_eval_plot_data_fashioniq_categories_are_the_kinds():
    metrics = {"index_sizes": {"dress": 10, "shirt": 12}, "dress_R@10": 5.0, "dress_R@50": 9.0, "shirt_R@10": 7.0,
               "shirt_R@50": 11.0, "average": 8.0}
    plot = eval_plot_data("t", {"sum": (metrics, {"dress": [2.0] * 50, "shirt": [3.0] * 50})})
    assert set(plot.curves) == {"sum dress", "sum shirt"}
    assert plot.bars == {"R@10": {"dress": {"sum": 5.0}, "shirt": {"sum": 7.0}},
                         "R@50": {"dress": {"sum": 9.0}, "shirt": {"sum": 11.0}}}
    assert kind_bars({"R@1": 3.0, "Rsubset@1": 4.0}) == {}  # CIRR has no kinds: curves only


def test_training_series_follow_the_history():
    history = [{"epoch": 1, "loss": 3.0, "R@10": 10.0, "attr@10": 5.0, "seconds": 2.0, "triplets": 100,
                "queries": 40, "empty_captions": 0},
               {"epoch": 2, "loss": 2.5, "R@10": 12.0, "attr@10": 6.0, "seconds": 2.1, "triplets": 100,
                "queries": 40, "empty_captions": 0}]
    assert training_plot_data(history) == {"epoch": [1.0, 2.0], "loss": [3.0, 2.5], "R@10": [10.0, 12.0],
                                                 "attr@10": [5.0, 6.0]}


def test_pngs_are_written_with_their_size(tmp_path):
    plot = eval_plot_data("composed", {"sum": ({"kinds": {"colour": {"R@10": 40.0, "attr@10": 30.0,
                                                                            "attr@10_ceiling": 90.0}}},
                                                     {"": [float(k) for k in range(1, 51)]})})
    assert _png_size(draw_eval(plot, tmp_path / "sub" / "eval.png")) == (1000, 450)
    history = [{"epoch": e, "loss": 3.0 / e, "R@10": 10.0 + e} for e in (1, 2, 3)]
    path = plot_training(tmp_path / "c.train.json", history, "combiner", history[1])
    assert path == tmp_path / "c.train.png" and _png_size(path) == (1000, 450)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_a_failed_draw_leaves_no_file(tmp_path):
    with pytest.raises(KeyError):
        draw_training({"loss": [1.0]}, tmp_path / "x.png")  # no epochs: nothing to draw against
    assert not list(tmp_path.iterdir())


def test_cli_draws_an_existing_history_and_refuses_other_files(tmp_path):
    history = tmp_path / "c.train.json"
    history.write_text('{"best": {"epoch": 2}, "history": [{"epoch": 1, "loss": 2.0, "R@10": 5.0}, '
                       '{"epoch": 2, "loss": 1.0, "R@10": 7.0}]}')
    assert main([str(history)]) == 0
    assert _png_size(tmp_path / "c.train.png") == (1000, 450)
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "empty.json").write_text("{}")
    for bad in ("bad.json", "empty.json"):
        assert run_cli(lambda: main([str(tmp_path / bad)])) == 2
    assert run_cli(lambda: main([str(history), str(history), "--out", str(tmp_path / "x.png")])) == 2
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "x.png").exists()
