"""The papers' numbers and the table that puts a run's numbers beside them.

Only numbers read in a source are here, each with it. The authors' README (github.com/ABaldrati/CLIP4Cir)
publishes none; the Papers with Code pages of the two papers list one number per dataset: the
leaderboard's average ((R@10 + R@50) / 2 on FashionIQ val, (R@5 + Rsubset@1) / 2 on CIRR test1, scored by
the evaluation server). Those pages do not name the backbone; the authors' commands use RN50x4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

PWC_TOMM = "https://paperswithcode.com/paper/composed-image-retrieval-using-contrastive"
PWC_CVPRW = "https://paperswithcode.com/paper/conditioned-and-composed-image-retrieval"


@dataclass(frozen=True)
class Published:
    """One paper's numbers for one dataset, as its source lists them."""

    paper: str                      # which paper (and version)
    model: str                      # what was trained, in the paper's words
    split: str                      # the split the numbers are on
    metrics: dict[str, float]       # metric key (as evaluate.py names it) -> value in %
    source: str                     # where the numbers were read


PUBLISHED: dict[str, tuple[Published, ...]] = {
    "fashioniq": (
        Published("CLIP4Cir v3, ACM TOMM 2023", "both CLIP encoders fine-tuned + Combiner", "val",
                  {"average": 55.36}, PWC_TOMM),
        Published("CLIP4Cir v2, CVPR-W 2022", "CLIP text encoder fine-tuned + Combiner", "val",
                  {"average": 50.03}, PWC_CVPRW),
    ),
    "cirr": (
        Published("CLIP4Cir v3, ACM TOMM 2023", "both CLIP encoders fine-tuned + Combiner", "test1",
                  {"avg": 75.10}, PWC_TOMM),
        Published("CLIP4Cir v2, CVPR-W 2022", "CLIP text encoder fine-tuned + Combiner", "test1",
                  {"avg": 69.09}, PWC_CVPRW),
    ),
}

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
CIRR_COLUMNS = (("R@1", "R@1"), ("R@5", "R@5"), ("R@10", "R@10"), ("R@50", "R@50"), ("Rsubset@1", "Rsubset@1"),
                ("Rsubset@2", "Rsubset@2"), ("Rsubset@3", "Rsubset@3"), ("avg", "(R@5+Rsubset@1)/2"))


def columns(dataset: str, metrics: dict | None = None) -> list[tuple[str, str]]:
    """(metric key, header) of the protocol's table. FashionIQ: R@10 and R@50 per category (the papers' three,
    and any other the run has), their averages and (R@10+R@50)/2; CIRR: R@1/5/10/50, Rsubset@1/2/3 and
    (R@5+Rsubset@1)/2."""
    if dataset == "cirr":
        return list(CIRR_COLUMNS)
    found = [k[:-len("_R@10")] for k in (metrics or {}) if k.endswith("_R@10") and not k.startswith("average")]
    cats = list(dict.fromkeys([*FIQ_CATEGORIES, *found]))
    return ([(f"{c}_{k}", f"{c} {k}") for c in cats for k in ("R@10", "R@50")]
            + [("average_R@10", "avg R@10"), ("average_R@50", "avg R@50"), ("average", "(R@10+R@50)/2")])


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    who: str
    split: str
    metrics: dict = field(default_factory=dict)


def rows(dataset: str, run_name: str, metrics: dict) -> list[Row]:
    """The run's row, then each paper's."""
    return [Row(run_name, "val", metrics)] + [Row(f"{p.paper}: {p.model}", p.split, p.metrics)
                                              for p in PUBLISHED[dataset]]


def format_table(dataset: str, run_name: str, metrics: dict) -> str:
    """A Markdown table of the run's numbers beside the papers' (— where a paper gives none), and the sources."""
    cols = columns(dataset, metrics)
    lines = [_line(["", "split", *(h for _, h in cols)]), _line(["---"] * (len(cols) + 2))]
    for row in rows(dataset, run_name, metrics):
        lines.append(_line([row.who, row.split, *(_cell(row.metrics.get(k)) for k, _ in cols)]))
    notes = [f"- {p.paper}: {p.source}" for p in PUBLISHED[dataset]]
    if dataset == "cirr":
        notes.append("- CIRR's papers report test1 (scored by the evaluation server from the submission files); "
                     "this run's numbers are val")
    notes.append("- the papers' other numbers are not listed: none could be read in a source here")
    return "\n".join([*lines, "", *notes])


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
