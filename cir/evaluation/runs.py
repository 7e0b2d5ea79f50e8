"""What `evaluate.py` runs: models, annotations and indexes loaded for one task, the protocol run,
rankings, CIRR submission files and plots written."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Callable

from cir import encoders
from cir.catalog.triplets import generate
from cir.combiner import Combiner, load_method
from cir.data import list_images, load_triplets, resolve_data_root
from cir.encoders import BASE_TEXT, Encoder, TextSide
from cir.evaluation.plots import draw_eval, eval_plot_data
from cir.evaluation.protocols import (
    ComposedResult,
    composed_catalog,
    composed_cirr,
    composed_fashioniq,
    fashioniq_indexes,
)
from cir.evaluation.submission import (  # noqa: F401
    CIRR_SUBSET_TOP,
    TOP,
    cirr_submission,
    submission_paths,
    write_submission,
)
from cir.extraction.local import ensure_index, index_name
from cir.index import parse_backend, with_backend
from cir.utils import write_json

log = logging.getLogger("evaluate")


DEFAULT_SPLITS = {"catalog": "test", "fashioniq": "val", "cirr": "val"}


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


def check_combiner(combiner: Combiner | None, encoder: Encoder) -> None:
    """A combiner only makes sense on the features it was trained on."""
    if combiner is None:
        return
    if combiner.cfg.encoder and combiner.cfg.encoder != encoder.name:
        raise ValueError(f"the combiner was trained on {combiner.cfg.encoder!r} features, not {encoder.name!r}; "
                         f"pass --encoder {combiner.cfg.encoder}")
    if combiner.cfg.feature_dim != encoder.dim:
        raise ValueError(f"the combiner expects {combiner.cfg.feature_dim}-d features, {encoder.name} gives "
                         f"{encoder.dim}-d")


def _composed_protocol(args, root: Path, data: list, build: Callable, encoder: Encoder, method: str,
                       combiner: Combiner | None) -> tuple[ComposedResult, int]:
    """The protocol of --dataset: the catalogue's generated triplets, FashionIQ per category, or CIRR.

    `data` holds the catalogue's image records, or the dataset's annotations; `build(records, name)` gives
    the (extracted if needed) index searched with --index-backend. Returns the result and the index size.
    """
    if args.dataset == "catalog":
        index = build(data, index_name("catalog", args.split))
        usable = [r for r in data if r.name in index]
        if len(usable) < len(data):
            log.warning("%d catalogue images have no features; triplets use the other %d",
                        len(data) - len(usable), len(usable))
        trips = generate(usable, seed=args.triplet_seed, per_kind=args.per_kind, phrasings=args.phrasings)
        log.info("catalog %s: %d triplets (seed %d, %d per kind)", args.split, len(trips), args.triplet_seed,
                 args.per_kind)
        return composed_catalog(encoder, index, data, trips, method, combiner), len(index)
    if args.dataset == "fashioniq":
        indexes, extra = fashioniq_indexes(data, root, args.split, build)
        result = composed_fashioniq(encoder, indexes, data, method, combiner, extra)
        result.metrics["index_sizes"] = {c: len(i) for c, i in indexes.items()}
        return result, sum(len(i) for i in indexes.values())
    if args.dataset == "cirr":
        index = build(list_images("cirr", root, args.split), index_name("cirr", args.split))
        return composed_cirr(encoder, index, data, method, combiner), len(index)
    raise ValueError(f"unknown dataset {args.dataset!r} for --task composed; valid: catalog, fashioniq, cirr")


def run_composed(args) -> tuple[dict, dict[str, list[float]]]:
    """--task composed: load annotations (fail fast on bad input), then models, indexes, and the protocol.

    Returns the metrics (the JSON line) and the run's R@1..50 curves by part (for --plot)."""
    root = resolve_data_root(args.dataset, args.data_root)
    if args.submission and args.dataset != "cirr":
        raise ValueError("--submission writes CIRR evaluation-server files; use it with --dataset cirr")
    if args.dataset == "catalog":
        data = list_images("catalog", root, args.split)
    else:
        data = load_triplets(args.dataset, root, args.split, args.categories)
        if not data:
            raise ValueError(f"no {args.dataset} {args.split} annotations under {root}")

    method, combiner = load_method(args.combiner)
    encoder = encoders.load(args.encoder, args.device, text=load_text_side(combiner, args.text_encoder))
    check_combiner(combiner, encoder)
    extract = {"batch_size": args.batch_size, "workers": args.workers}
    feats = Path(args.features)

    def build(recs, name, searched=True, **info):
        index = ensure_index(recs, encoder, feats / name, **extract,
                             info={"dataset": args.dataset, "split": args.split, "data_root": str(root), **info})
        return with_backend(index, args.index_backend) if searched else index

    t0 = time.time()
    result, size = _composed_protocol(args, root, data, build, encoder, method, combiner)
    if args.dataset != "catalog" and "average" not in result.metrics and "avg" not in result.metrics:
        log.warning("%s %s has no targets: no metrics, only rankings%s", args.dataset, args.split,
                    " (use --submission)" if args.dataset == "cirr" and not args.submission else "")
    if args.save_rankings:
        write_json(args.save_rankings, result.rankings)
        log.info("wrote %d rankings to %s", len(result.rankings), args.save_rankings)
    if args.submission:
        write_submission(args.submission, *cirr_submission(result.pair_ids, result.rankings,
                                                           result.subset_rankings))
    metrics = dict(result.metrics)
    return {"task": "composed", "dataset": args.dataset, "split": args.split, "encoder": encoder.name,
            "combiner": args.combiner, "text_encoder": encoder.text_side.record, "index_size": size,
            "index_backend": parse_backend(args.index_backend).public,
            "queries": metrics.pop("queries"), **metrics, "seconds": round(time.time() - t0, 2)}, result.curves


def composed_runs(args) -> dict[str, tuple[dict, dict[str, list[float]]]]:
    """--combiner's run, then each --compare method's (its JSON line printed as it ends), by method name."""
    runs = {args.combiner: run_composed(args)}
    for method in args.compare:
        # the same protocol with another fusion; rankings and submission files stay --combiner's own
        other = argparse.Namespace(**{**vars(args), "combiner": method, "save_rankings": None, "submission": None})
        runs[method] = run_composed(other)
        print(json.dumps(runs[method][0]))
    return runs


def write_plot(path: str, runs: dict[str, tuple[dict, dict[str, list[float]]]]) -> None:
    """--plot: recall@K curves of every run and its per-kind bars (plots.py), or a warning when no run has
    targets to score (FashionIQ test, CIRR test1)."""
    metrics = next(iter(runs.values()))[0]
    if not any(curves for _, curves in runs.values()):
        log.warning("%s %s has no targets: no recall curves, %s not written", metrics["dataset"],
                    metrics["split"], path)
        return
    title = f"{metrics['task']}: {metrics['dataset']} {metrics['split']} ({metrics['encoder']} encoder)"
    log.info("wrote %s", draw_eval(eval_plot_data(title, runs), path))
