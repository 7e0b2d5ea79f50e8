"""Plots people would rather look at than read: recall@K curves and per-kind bars (evaluate.py --plot) and
training curves (train.py, a PNG beside each checkpoint's .train.json history).

The data each plot shows is built by plain functions (recall_curve, eval_plot_data, training_plot_data) so
tests can check it against the reported metrics; the draw_* functions only draw it, headless (Agg canvas,
no pyplot state), and write the PNG atomically. A history written before this module existed is drawn with

    python3 plots.py weights/combiner.train.json [--out FILE.png]
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from cir.utils import atomic_write

log = logging.getLogger("plots")


CURVE_TOP = 50                          # recall@K curves run over K = 1..50, as far as the papers report


SIZE_IN, DPI = (10.0, 4.5), 100         # PNGs are 1000 x 450 pixels; taller when many kinds need rows


KIND_ROW_IN = 0.32                      # inches per kind in a bar panel (the catalogue has 19 kinds)


KIND_METRICS = ("R@10", "attr@10")      # the catalogue's per-kind metrics shown as bars


FASHIONIQ_METRICS = ("R@10", "R@50")    # per category


def recall_curve(ranked: torch.Tensor, targets: torch.Tensor, top: int = CURVE_TOP) -> list[float]:
    """R@K in % for K = 1..top, rounded as metrics.recall_at_k rounds (curve[k - 1] == its R@k).

    A ranking shorter than `top` (a small index) keeps its last value: K past the ranking finds nothing new.
    A target row of -1 (no features) never matches, so it is a miss at every K.
    """
    if len(targets) == 0:
        return [0.0] * top
    hit = (ranked[:, :top] == targets.view(-1, 1)).cumsum(1) > 0  # found within the first K
    curve = [round(100 * v, 2) for v in hit.float().mean(0).tolist()]
    return (curve + curve[-1:] * (top - len(curve)))[:top] if curve else [0.0] * top


@dataclass
class EvalPlot:
    """What evaluate.py --plot draws: curves[label] = R@1..50, bars[metric][kind][method] = value."""

    title: str
    curves: dict[str, list[float]] = field(default_factory=dict)
    bars: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def kind_bars(metrics: Mapping) -> dict[str, dict[str, float]]:
    """metric -> kind -> value, the per-kind numbers of one run's metrics (empty when it has no kinds).

    The catalogue's composed "kinds" table gives R@10 and attr@10 per triplet kind (attr@10's ceiling joins
    it, the best any ranking could reach); FashionIQ's <category>_R@10/_R@50 give them per category.
    """
    out: dict[str, dict[str, float]] = {}
    for kind, row in (metrics.get("kinds") or {}).items():
        for m in (*KIND_METRICS, "attr@10_ceiling"):
            if m in row:
                out.setdefault(m, {})[kind] = row[m]
    for category in (metrics.get("index_sizes") or {}):
        for m in FASHIONIQ_METRICS:
            if f"{category}_{m}" in metrics:
                out.setdefault(m, {})[category] = metrics[f"{category}_{m}"]
    return out


def eval_plot_data(title: str, runs: Mapping[str, tuple[Mapping, Mapping[str, list[float]]]]) -> EvalPlot:
    """The plot of several evaluated methods: runs[method] = (its metrics, its curves by part).

    A curve's label is the method, with the part (a FashionIQ category) after it when there are parts;
    attr@10_ceiling does not depend on the method, so it becomes one bar of its own, "ceiling", per kind.
    """
    plot = EvalPlot(title)
    for method, (metrics, curves) in runs.items():
        for part, curve in curves.items():
            plot.curves[f"{method} {part}".strip()] = list(curve)
        for metric, per_kind in kind_bars(metrics).items():
            name, who = ("attr@10", "ceiling") if metric == "attr@10_ceiling" else (metric, method)
            for kind, value in per_kind.items():
                plot.bars.setdefault(name, {}).setdefault(kind, {})[who] = value
    return plot


def training_plot_data(history: Sequence[Mapping]) -> dict[str, list[float]]:
    """series name -> values per epoch from a .train.json history: "epoch", "loss", and every validation
    metric (R@K, attr@K, Rsubset@K, averages ...); bookkeeping columns (seconds, counts) are left out. An epoch
    that was not validated (--validation-frequency) has NaN there: a gap in the curve."""
    skip = {"epoch", "loss", "seconds", "triplets", "queries", "empty_captions"}
    names = [k for k in dict.fromkeys(k for row in history for k in row)
             if k not in skip and all(isinstance(row.get(k, 0.0), (int, float)) for row in history)]
    out = {"epoch": [float(row.get("epoch", i + 1)) for i, row in enumerate(history)],
           "loss": [float(row["loss"]) for row in history if "loss" in row]}
    out.update({k: [float(row.get(k, float("nan"))) for row in history] for k in names})
    return out


def _figure(panels: int, rows: int = 0):
    # matplotlib is imported here: it costs ~0.6 s at import, which evaluate.py and train.py runs without a
    # plot should not pay. The Agg canvas renders without a display and without pyplot's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE_IN[0], max(SIZE_IN[1], 1.2 + KIND_ROW_IN * rows)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox="tight": the PNG keeps its documented size
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def _draw_bars(ax, metric: str, per_kind: Mapping[str, Mapping[str, float]]) -> None:
    # horizontal bars, one row per kind (top to bottom in the metrics' order): long kind names stay legible
    kinds = list(per_kind)
    who = sorted(dict.fromkeys(w for row in per_kind.values() for w in row), key=lambda w: w == "ceiling")
    height = 0.8 / max(len(who), 1)
    for j, w in enumerate(who):
        ys = [i + (j - (len(who) - 1) / 2) * height for i in range(len(kinds))]
        style = {"color": "0.85", "hatch": "//", "edgecolor": "0.5"} if w == "ceiling" else {}
        ax.barh(ys, [per_kind[k].get(w, 0.0) for k in kinds], height, label=w, **style)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%)")
    ax.set_title(f"{metric} per kind")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)


def draw_eval(plot: EvalPlot, path: str | Path) -> Path:
    """Recall@K curves (left) and one panel of per-kind bars per metric; returns the PNG's path."""
    fig, axes = _figure(1 + len(plot.bars), max((len(k) for k in plot.bars.values()), default=0))
    ax = axes[0]
    for label, curve in plot.curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=label)
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K (%)")
    ax.set_xlim(1, CURVE_TOP)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("recall@K")
    for ax, (metric, per_kind) in zip(axes[1:], plot.bars.items()):
        _draw_bars(ax, metric, per_kind)
    fig.suptitle(plot.title, fontsize=10)
    return _save(fig, path)


def draw_training(series: Mapping[str, list[float]], path: str | Path, title: str = "",
                  best_epoch: float | None = None) -> Path:
    """Loss per epoch (left) and the validation metrics per epoch (right), the kept (best) epoch marked by a
    dotted line; returns the PNG's path."""
    fig, (left, right) = _figure(2)
    epochs = series["epoch"]
    left.plot(epochs[:len(series["loss"])], series["loss"], marker=".", color="tab:red")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss")
    left.grid(alpha=0.3)
    for name, values in series.items():
        if name not in ("epoch", "loss"):
            right.plot(epochs, values, marker=".", label=name)
    right.set_xlabel("epoch")
    right.set_ylabel("validation (%)")
    right.grid(alpha=0.3)
    if best_epoch is not None:
        for ax in (left, right):
            ax.axvline(best_epoch, color="0.4", linestyle=":", label="kept epoch" if ax is right else None)
    if len(series) > 2 or best_epoch is not None:
        right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def training_png(train_json: str | Path) -> Path:
    """Where a history's curve goes: weights/combiner.train.json -> weights/combiner.train.png."""
    return Path(train_json).with_suffix(".png")


def plot_training(train_json: str | Path, history: Sequence[Mapping], title: str = "",
                  best: Mapping | None = None) -> Path:
    """Draw a history (the rows written to `train_json`) beside it, as training_png names it; `best` is the
    row kept (its epoch is marked)."""
    return draw_training(training_plot_data(history), training_png(train_json), title,
                         best.get("epoch") if best else None)
