"""What `evaluate.py` runs: one task (text2image, image2image, composed) on one dataset split, described by a
typed EvalConfig: the models and annotations loaded (bad input fails before anything slow), the indexes opened
(extracted when missing), the protocol run, rankings, CIRR submission files and the plot written."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from cir import encoders
from cir.catalog.triplets import generate
from cir.combiner import Combiner, check_compatible, load_method
from cir.data import list_images, load_triplets, resolve_data_root
from cir.encoders import BASE_TEXT, Encoder, TextSide
from cir.evaluation.plots import draw_eval, eval_plot_data
from cir.evaluation.protocols import (
    EMPTY_CAPTIONS,
    ComposedResult,
    composed_catalog,
    composed_cirr,
    composed_fashioniq,
    fashioniq_indexes,
    image2image,
    text2image,
)
from cir.evaluation.submission import cirr_submission, write_submission
from cir.extraction import IndexStore, index_name, open_dataset_index
from cir.index import parse_backend, with_backend
from cir.utils import write_json

log = logging.getLogger("evaluate")

TASKS = ("text2image", "image2image", "composed")
DEFAULT_SPLITS = {"catalog": "test", "fashioniq": "val", "cirr": "val"}
Run = tuple[dict, dict[str, list[float]]]     # a run's metrics (its JSON line) and R@1..50 curves by part


@dataclass(frozen=True)
class EvalConfig:
    """One evaluate.py run; each field is the flag of the same name (evaluate.py --help says more)."""

    task: str                                   # text2image | image2image | composed
    dataset: str = "catalog"                    # catalog | fashioniq | cirr (text/image tasks: catalog only)
    split: str | None = None                    # None: DEFAULT_SPLITS[dataset]
    data_root: str | None = None                # dataset folder (None: $CIR_DATA_ROOT or ../shared/data)
    categories: tuple[str, ...] | None = None   # FashionIQ categories, in this order (None: every one found)
    combiner: str = "combiner"                  # composed: a Combiner (shipped name or path), sum, image or text
    text_encoder: str | None = None             # base, stage1 or a path (None: the Combiner's own, else base)
    triplet_seed: int = 0                       # catalog composed: seed of the generated triplets
    per_kind: int = 500                         # catalog composed: at most this many triplets of each kind
    phrasings: str = "all"                      # catalog composed: all | train | heldout caption templates
    save_rankings: str | None = None            # composed: write the top-50 names of every query here
    submission: str | None = None               # composed, cirr: the evaluation server's files beside this path
    encoder: str = "lite"                       # encoder name (encoders.available_models())
    device: str = "auto"                        # auto (CUDA when present), cpu, cuda ...
    store: IndexStore = field(default_factory=IndexStore)   # features root; how a missing index is extracted
    index_backend: str = "exact"                # how indexes are ranked (cir.index backends)
    plot: str | None = None                     # text2image, composed: recall@K curves into this PNG
    compare: tuple[str, ...] = ()               # composed: more fusion methods, evaluated the same way
    transform: str | None = None                # image preprocessing (PREPROCESS_MODES; None: the encoder's own)
    target_ratio: float | None = None           # targetpad's ratio (None: 1.25)
    empty_captions: str = "image"               # composed: a query with an empty caption: image alone | encode ""

    def resolved(self) -> EvalConfig:
        """The config checked (ValueError naming the flag), with its default split filled in."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.dataset not in DEFAULT_SPLITS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DEFAULT_SPLITS)}")
        parse_backend(self.index_backend)  # a bad spec fails now, before models and data are loaded
        if self.per_kind < 1:
            raise ValueError("--per-kind must be at least 1")
        if self.categories is not None and self.dataset != "fashioniq":
            raise ValueError(f"--categories only applies to fashioniq, not {self.dataset}")
        if self.plot is not None and (self.task == "image2image" or not self.plot.lower().endswith(".png")):
            raise ValueError("--plot FILE.png draws recall curves: a .png path, with --task text2image or composed")
        if self.compare and self.task != "composed":
            raise ValueError("--compare evaluates other composed methods: use it with --task composed")
        if self.task != "composed" and self.dataset != "catalog":
            raise ValueError(f"--task {self.task} needs the catalogue's attributes: use --dataset catalog")
        if self.submission and self.dataset != "cirr":
            raise ValueError("--submission writes CIRR evaluation-server files; use it with --dataset cirr")
        if self.empty_captions not in EMPTY_CAPTIONS:
            raise ValueError(f"unknown --empty-captions {self.empty_captions!r}; valid: {', '.join(EMPTY_CAPTIONS)}")
        return replace(self, split=self.split or DEFAULT_SPLITS[self.dataset])


def evaluate(cfg: EvalConfig, report: Callable[[dict], None] = lambda metrics: None) -> dict[str, Run]:
    """Run `cfg` (resolved first): its runs by method name, the main one last; `report` gets each --compare
    run's metrics as it ends. Writes --plot when asked."""
    cfg = cfg.resolved()
    if cfg.task == "composed":
        runs = composed_runs(cfg, report)
    else:
        runs = {cfg.encoder: run_catalog_task(cfg)}
    if cfg.plot:
        write_plot(cfg.plot, runs)
    return runs


def run_catalog_task(cfg: EvalConfig) -> Run:
    """--task text2image or image2image on a catalogue split."""
    encoder = load_encoder(cfg, cfg.text_encoder)
    ds = open_dataset_index(encoder, cfg.dataset, cfg.split, cfg.store, cfg.data_root)
    index = with_backend(ds.index, cfg.index_backend)
    t0, curves = time.time(), {}
    if cfg.task == "text2image":
        metrics = text2image(encoder, index, ds.records, curves)
    else:
        metrics = image2image(index, ds.records)
    return {"task": cfg.task, "dataset": cfg.dataset, "split": cfg.split, "encoder": encoder.name,
            "index_size": len(index), "index_backend": parse_backend(cfg.index_backend).public, **metrics,
            "seconds": round(time.time() - t0, 2)}, curves


def load_encoder(cfg: EvalConfig, text: "str | TextSide | None") -> Encoder:
    """--encoder with --transform / --target-ratio and the text side `text`."""
    return encoders.load(cfg.encoder, cfg.device, text=text, preprocess=cfg.transform, target_ratio=cfg.target_ratio)


def load_text_side(combiner: Combiner | None, text_encoder: str | None) -> TextSide:
    """The text side to load: --text-encoder if given, else the one the combiner was trained with, else base."""
    trained = combiner.cfg.text_side if combiner is not None else BASE_TEXT
    if text_encoder is None:
        return trained
    chosen = TextSide.of(text_encoder)
    if combiner is not None and chosen != trained:
        log.warning("--text-encoder %s differs from the text side the combiner was trained with (%s)",
                    text_encoder, trained.record)
    return chosen


def _composed_protocol(cfg: EvalConfig, root: Path, data: list, build: Callable, encoder: Encoder,
                       method: str, combiner: Combiner | None) -> tuple[ComposedResult, int]:
    """The protocol of --dataset: the catalogue's generated triplets, FashionIQ per category, or CIRR.

    `data` holds the catalogue's image records, or the dataset's annotations; `build(records, name)` gives
    the (extracted if needed) index searched with --index-backend. Returns the result and the index size.
    """
    if cfg.dataset == "catalog":
        index = build(data, index_name("catalog", cfg.split))
        usable = [r for r in data if r.name in index]
        if len(usable) < len(data):
            log.warning("%d catalogue images have no features; triplets use the other %d",
                        len(data) - len(usable), len(usable))
        trips = generate(usable, seed=cfg.triplet_seed, per_kind=cfg.per_kind, phrasings=cfg.phrasings)
        log.info("catalog %s: %d triplets (seed %d, %d per kind)", cfg.split, len(trips), cfg.triplet_seed,
                 cfg.per_kind)
        return composed_catalog(encoder, index, data, trips, method, combiner), len(index)
    if cfg.dataset == "fashioniq":
        indexes, extra = fashioniq_indexes(data, root, cfg.split, build)
        result = composed_fashioniq(encoder, indexes, data, method, combiner, extra, cfg.empty_captions)
        result.metrics["index_sizes"] = {c: len(i) for c, i in indexes.items()}
        return result, sum(len(i) for i in indexes.values())
    if cfg.dataset == "cirr":
        index = build(list_images("cirr", root, cfg.split), index_name("cirr", cfg.split))
        return composed_cirr(encoder, index, data, method, combiner, cfg.empty_captions), len(index)
    raise ValueError(f"unknown dataset {cfg.dataset!r} for --task composed; valid: catalog, fashioniq, cirr")


def run_composed(cfg: EvalConfig) -> Run:
    """--task composed with cfg.combiner: annotations first (fail fast on bad input), then models, indexes,
    and the protocol of cfg.dataset."""
    root = resolve_data_root(cfg.dataset, cfg.data_root)
    if cfg.dataset == "catalog":
        data = list_images("catalog", root, cfg.split)
    else:
        data = load_triplets(cfg.dataset, root, cfg.split, cfg.categories)
        if not data:
            raise ValueError(f"no {cfg.dataset} {cfg.split} annotations under {root}")
    method, combiner = load_method(cfg.combiner)
    encoder = load_encoder(cfg, load_text_side(combiner, cfg.text_encoder))
    if combiner is not None:
        check_compatible(combiner.cfg, encoder)   # a Combiner asked for by name must fit: ValueError otherwise

    def build(recs, name, searched=True, **info):
        index = cfg.store.open(recs, encoder, name, dataset=cfg.dataset, split=cfg.split, data_root=str(root),
                               **info)
        return with_backend(index, cfg.index_backend) if searched else index

    t0 = time.time()
    result, size = _composed_protocol(cfg, root, data, build, encoder, method, combiner)
    if cfg.dataset != "catalog" and "average" not in result.metrics and "avg" not in result.metrics:
        log.warning("%s %s has no targets: no metrics, only rankings%s", cfg.dataset, cfg.split,
                    " (use --submission)" if cfg.dataset == "cirr" and not cfg.submission else "")
    if cfg.save_rankings:
        write_json(cfg.save_rankings, result.rankings)
        log.info("wrote %d rankings to %s", len(result.rankings), cfg.save_rankings)
    if cfg.submission:
        write_submission(cfg.submission, *cirr_submission(result.pair_ids, result.rankings,
                                                          result.subset_rankings))
    metrics = dict(result.metrics)
    return {"task": "composed", "dataset": cfg.dataset, "split": cfg.split, "encoder": encoder.name,
            "combiner": cfg.combiner, "text_encoder": encoder.text_side.record, "index_size": size,
            "index_backend": parse_backend(cfg.index_backend).public,
            "queries": metrics.pop("queries"), **metrics, "seconds": round(time.time() - t0, 2)}, result.curves


def composed_runs(cfg: EvalConfig, report: Callable[[dict], None] = lambda metrics: None) -> dict[str, Run]:
    """--combiner's run, then each --compare method's (reported as it ends), by method name."""
    runs = {cfg.combiner: run_composed(cfg)}
    for method in cfg.compare:
        # the same protocol with another fusion; rankings and submission files stay --combiner's own
        runs[method] = run_composed(replace(cfg, combiner=method, save_rankings=None, submission=None))
        report(runs[method][0])
    return runs


def write_plot(path: str, runs: dict[str, Run]) -> None:
    """--plot: recall@K curves of every run and its per-kind bars (plots.py), or a warning when no run has
    targets to score (FashionIQ test, CIRR test1)."""
    metrics = next(iter(runs.values()))[0]
    if not any(curves for _, curves in runs.values()):
        log.warning("%s %s has no targets: no recall curves, %s not written", metrics["dataset"],
                    metrics["split"], path)
        return
    title = f"{metrics['task']}: {metrics['dataset']} {metrics['split']} ({metrics['encoder']} encoder)"
    log.info("wrote %s", draw_eval(eval_plot_data(title, runs), path))
