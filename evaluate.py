"""Retrieval metrics, as the papers report them.

    python evaluate.py --task text2image  --dataset catalog --split test
    python evaluate.py --task image2image --dataset catalog --split test
    python evaluate.py --task composed --dataset catalog --split test --combiner sum
    python evaluate.py --task composed --dataset fashioniq --data-root DIR --split val --categories dress shirt toptee
    python evaluate.py --task composed --dataset cirr --data-root DIR --split val
    python evaluate.py --task composed --dataset cirr --data-root DIR --split test1 --submission out/sub.json

text2image: each product name queries the index of the split's images; R@1/5/10 (%) of its own photo.
image2image: precision@10 (%) of results sharing the query's articleType and baseColour (query removed).
composed: (reference image, relative caption) -> target, the query made by model.compose:
  catalog    triplets.generate over the split's images (seeded); R@1/10/50 of the target, reference removed,
             and attr@1/attr@10: the share (%) of the top K satisfying the triplet's condition (every wanted
             attribute, none of the unwanted ones), with attr@10_ceiling; per kind under "kinds".
  fashioniq  one index per category (its split's images); the two captions joined as CLIP4Cir does;
             <category>_R@10/R@50, their averages and "average" = their mean. The reference stays in the
             ranking, as in the original evaluation.
  cirr       R@1/5/10/50 with the reference removed, Rsubset@1/2/3 among the query's img_set members
             (reference removed), avg = (R@5 + Rsubset@1) / 2. test1 has no targets: --submission writes
             the evaluation server's two files, recall_submission_<name>.json and
             recall_subset_submission_<name>.json, beside the given path.
  An annotation whose captions are all empty (the real files hold a few) is queried with its reference
  image alone, with a warning; the count is reported as "empty_captions".
--save-rankings writes the top-50 image names of every query, in annotation order. --plot FILE.png draws
recall@K (K = 1..50) and the per-kind bars; --compare M... evaluates more composed methods into the same plot.
Index features come from extracted files under --features when present, else are extracted (and kept).
All ranking goes through index.search, by the backend of --index-backend (exact by default; faiss or milvus
measure an ANN index's effect on the metrics). The last printed line is one JSON object with the metrics.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

import data_utils
import encoders
from conditions import ConditionMasks, condition_key, make_key
from encoders import BASE_TEXT, CaptionEncoder, Encoder, TextSide
from extract_features import ensure_index, index_name
from index import FeatureIndex, parse_backend, search, with_backend
from model import Combiner, compose, load_method
from plots import draw_eval, eval_plot_data, recall_curve
from submission import CIRR_SUBSET_TOP, TOP, cirr_submission, submission_paths, write_submission  # noqa: F401
from triplets import generate
from utils import run_cli, setup_logging, write_json

log = logging.getLogger("evaluate")
DEFAULT_SPLITS = {"catalog": "test", "fashioniq": "val", "cirr": "val"}


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """R@K in %: the share of queries whose target row is among the first K ranked ids."""
    hit = ranked == targets.view(-1, 1)
    return {f"R@{k}": round(100 * hit[:, :k].any(1).float().mean().item(), 2) for k in ks}


def attribute_precision_at_k(ranked: torch.Tensor, query_attrs: Sequence[tuple], gallery_attrs: Sequence[tuple],
                             k: int) -> float:
    """Precision@K in %: the share of the first K results whose attribute tuple equals the query's."""
    hits = [sum(gallery_attrs[j] == qa for j in row[:k]) / k for row, qa in zip(ranked.tolist(), query_attrs)]
    return round(100 * sum(hits) / max(len(hits), 1), 2)


def _encode_texts(encoder: CaptionEncoder, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.encode_texts(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def text2image(encoder: CaptionEncoder, index: FeatureIndex, records: Sequence[data_utils.ImageRecord],
               curves: dict | None = None) -> dict:
    """Product name -> its own photo. R@1..50 goes into `curves[""]` when a dict is given (--plot)."""
    recs = [r for r in records if r.name in index and r.attrs.get("productDisplayName", "").strip()]
    q = _encode_texts(encoder, [r.attrs["productDisplayName"] for r in recs])
    _, ids = search(q, index, TOP)
    targets = torch.tensor([index.id_of(r.name) for r in recs])
    if curves is not None:
        curves[""] = recall_curve(ids, targets)
    return {"queries": len(recs), **recall_at_k(ids, targets, (1, 5, 10))}


def image2image(index: FeatureIndex, records: Sequence[data_utils.ImageRecord], k: int = 10) -> dict:
    """Image -> images of the same type and colour (precision@k), the query itself excluded."""
    attrs = {r.name: r.attrs for r in records}
    rows = [i for i, n in enumerate(index.names) if n in attrs]
    _, ids = search(index.features[rows], index, k, exclude=rows)
    key = {f: [tuple(attrs.get(n, {}).get(a) for a in f) for n in index.names]
           for f in [("articleType", "baseColour"), ("articleType",), ("baseColour",)]}
    out = {"queries": len(rows)}
    for fields, name in [(("articleType", "baseColour"), f"P@{k}"), (("articleType",), f"P@{k}_type"),
                         (("baseColour",), f"P@{k}_colour")]:
        out[name] = attribute_precision_at_k(ids, [key[fields][i] for i in rows], key[fields], k)
    return out



# ----------------------------------------------------------------------------------------------- composed: metrics

def attribute_match_at_k(ranked: torch.Tensor, wanted: Sequence[Mapping[str, str | tuple[str, ...]]],
                         gallery_attrs: Sequence[Mapping[str, str]], k: int,
                         unwanted: Sequence[Mapping[str, tuple[str, ...]]] | None = None) -> float:
    """Attribute-match@K in %: the share of the first K results satisfying their query's condition.

    A result counts when triplets.satisfies(its attributes, wanted, unwanted) holds: every wanted attribute
    (a tuple: any of its values), none of the unwanted values. gallery_attrs[row] holds a row's attributes.
    """
    masks = ConditionMasks(gallery_attrs)
    keys = [make_key(w, unwanted[i] if unwanted is not None else None) for i, w in enumerate(wanted)]
    shares = match_shares(ranked, keys, masks, k)
    return round(100 * float(shares.mean()), 2) if len(shares) else 0.0


def match_shares(ranked: torch.Tensor, keys: Sequence[tuple], masks: ConditionMasks, k: int) -> np.ndarray:
    """Per query, the share of its first K results whose row satisfies its condition key (masks: the gallery)."""
    top = ranked[:, :k].cpu().numpy() if len(keys) else np.zeros((0, 0), dtype=np.int64)
    if top.shape[1] == 0:
        return np.zeros(len(keys))
    distinct = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # one mask per condition
    stacked = masks.stack(list(distinct))
    which = np.array([distinct[key] for key in keys])
    return (stacked[which[:, None], top] & (top >= 0)).mean(1)  # a -1 (no result) is a miss, never a wrap


def recall_subset_at_k(ranked: Sequence[Sequence[str]], targets: Sequence[str | None],
                       groups: Sequence[Sequence[str]], ks: Sequence[int],
                       references: Sequence[str] | None = None) -> dict[str, float]:
    """Rsubset@K in % (CIRR): each ranking restricted to its query's group members, reference removed.

    `ranked` may be a full ranking or one already restricted to the group; a target outside its group
    can never be found, so it counts as a miss.
    """
    hits = {k: 0 for k in ks}
    for i, (row, target, group) in enumerate(zip(ranked, targets, groups)):
        members = set(group) - ({references[i]} if references is not None else set())
        sub = [n for n in row if n in members]
        for k in ks:
            hits[k] += target in members and target in sub[:k]
    n = max(len(targets), 1)
    return {f"Rsubset@{k}": round(100 * hits[k] / n, 2) for k in ks}


def fiq_caption(captions: Sequence[str]) -> str:
    """FashionIQ's two relative captions as one query text, as CLIP4Cir joins them.

    "<first, cleaned and capitalised> and <second, cleaned>", cleaning = strip('.?, '). The real files
    hold a few entries with one empty caption: the other one (cleaned) is used alone rather than
    " and <...>", and "" is returned when none has any text.
    """
    cleaned = [c.strip().strip(".?, ") for c in captions]
    cleaned = [c for c in cleaned if c]
    if len(cleaned) >= 2:
        return f"{cleaned[0].capitalize()} and {cleaned[1]}"
    return cleaned[0] if cleaned else ""


# ----------------------------------------------------------------------------------------------- composed: queries

@dataclass
class ComposedResult:
    metrics: dict                                  # what the final JSON line reports
    rankings: list[list[str]]                      # top-50 names per query, in annotation order
    subset_rankings: list[list[str]] | None = None  # CIRR: the group members ranked, reference removed
    pair_ids: list[int] | None = None              # CIRR: one per query
    curves: dict[str, list[float]] = field(default_factory=dict)  # R@1..50 by part ("" or a FashionIQ category)


def reference_features(names: Sequence[str], index: FeatureIndex,
                       extra: FeatureIndex | None = None) -> torch.Tensor:
    """Raw float32 features [B,d] of the reference images (what model.compose takes): from `index`, else
    from `extra` (references outside the index, e.g. FashionIQ references not in the category's split)."""
    missing = [n for n in names if n not in index and (extra is None or n not in extra)]
    if missing:
        raise ValueError(f"{len(missing)} reference image(s) have no features (not in the index, or skipped "
                         f"at extraction): {', '.join(sorted(set(missing))[:10])}")
    # Gather only the needed rows from the (memory-mapped) float16 features: no float32 copy of the index.
    out = torch.zeros(len(names), index.dim)
    inside = [i for i, n in enumerate(names) if n in index]
    outside = [i for i, n in enumerate(names) if n not in index]
    for source, pos in ((index, inside), (extra, outside)):
        if pos:
            out[pos] = source.raw([source.id_of(names[i]) for i in pos])
    return out


def compose_queries(encoder: CaptionEncoder, ref_feats: torch.Tensor, captions: Sequence[str], method: str,
                    combiner=None, batch: int = 256) -> tuple[torch.Tensor, int]:
    """Query features [B,d] via model.compose, in caption batches; returns (queries, empty captions).

    A query with an empty caption has nothing to compose: it becomes its reference image alone.
    """
    out = torch.zeros(len(captions), ref_feats.shape[1])
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    full = [i for i, c in enumerate(captions) if c.strip()]
    if empty:
        log.warning("%d quer%s with an empty caption: querying with the reference image alone",
                    len(empty), "y" if len(empty) == 1 else "ies")
        out[empty] = compose(encoder, ref_feats[empty], None, "image")
    for lo in range(0, len(full), batch):
        rows = full[lo:lo + batch]
        caps = None if method == "image" else [captions[i] for i in rows]
        out[rows] = compose(encoder, ref_feats[rows], caps, method, combiner).float()
    return out, len(empty)


def _target_ids(index: FeatureIndex, targets: Sequence[str]) -> torch.Tensor:
    """Rows of the targets; -1 (never ranked, so a miss) for a target without features."""
    ids = [index.id_of(t) if t in index else -1 for t in targets]
    if -1 in ids:
        log.warning("%d target(s) are not in the index (skipped at extraction?); they count as misses",
                    ids.count(-1))
    return torch.tensor(ids, dtype=torch.long)


def _names(index: FeatureIndex, ids: torch.Tensor) -> list[list[str]]:
    return [[index.names[j] for j in row] for row in ids.tolist()]


# ----------------------------------------------------------------------------------------------- composed: protocols

def composed_catalog(encoder: CaptionEncoder, index: FeatureIndex, records: Sequence[data_utils.ImageRecord],
                     triplets: Sequence, method: str, combiner=None) -> ComposedResult:
    """Catalogue triplets (triplets.generate): R@1/10/50 of the target and attr@1/10, reference excluded.

    attr@K counts the results satisfying each triplet's condition (wanted and unwanted attributes, as
    triplets.satisfies decides). Also attr@10_ceiling (the best attr@10 possible given how many items satisfy
    it) and, per triplet kind, queries, R@10, attr@10 and attr@10_ceiling (under "kinds").
    """
    refs = reference_features([t.reference for t in triplets], index)
    queries, empty = compose_queries(encoder, refs, [t.caption for t in triplets], method, combiner)
    _, ids = search(queries, index, TOP, exclude=[index.id_of(t.reference) for t in triplets])
    targets = _target_ids(index, [t.target for t in triplets])
    attrs_of = {r.name: r.attrs for r in records}
    masks = ConditionMasks([attrs_of.get(n, {}) for n in index.names])
    keys = [condition_key(t) for t in triplets]
    at1, at10 = match_shares(ids, keys, masks, 1), match_shares(ids, keys, masks, 10)
    # The best attr@10 any ranking could reach: a triplet whose condition only 3 other items satisfy caps
    # at 30%. Reported so the metric reads against its real maximum; the reference is never ranked.
    ref_rows = np.array([index.id_of(t.reference) for t in triplets], dtype=np.int64)
    ceil = np.array([min(10, int(masks.mask(key).sum()) - bool(masks.mask(key)[r])) / 10
                     for key, r in zip(keys, ref_rows)])

    def pct(values: np.ndarray) -> float:
        return round(100 * float(values.mean()), 2) if len(values) else 0.0

    def scores(rows: list[int]) -> dict:
        sel = torch.tensor(rows, dtype=torch.long)
        return {**recall_at_k(ids[sel], targets[sel], (1, 10, 50)), "attr@1": pct(at1[rows]),
                "attr@10": pct(at10[rows]), "attr@10_ceiling": pct(ceil[rows])}

    metrics = {"queries": len(triplets), "empty_captions": empty, **scores(list(range(len(triplets))))}
    kinds = {}
    for kind in dict.fromkeys(t.kind for t in triplets):
        rows = [i for i, t in enumerate(triplets) if t.kind == kind]
        m = scores(rows)
        kinds[kind] = {"queries": len(rows), "R@10": m["R@10"], "attr@10": m["attr@10"],
                       "attr@10_ceiling": m["attr@10_ceiling"]}
    metrics["kinds"] = kinds
    return ComposedResult(metrics, _names(index, ids), curves={"": recall_curve(ids, targets)})


def composed_fashioniq(encoder: CaptionEncoder, indexes: Mapping[str, FeatureIndex],
                       triplets: Sequence[data_utils.Triplet], method: str, combiner=None,
                       extra: Mapping[str, FeatureIndex] | None = None) -> ComposedResult:
    """FashionIQ: each category's queries ranked in its own index, reference kept (as CLIP4Cir).

    extra[category] holds features of references outside that category's index. Metrics need targets
    (the test split has none: then only the rankings are produced).
    """
    cats = list(dict.fromkeys(t.category for t in triplets))
    unknown = [c for c in cats if c not in indexes]
    if unknown:
        raise ValueError(f"no index for FashionIQ categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(str, unknown))}; have {', '.join(indexes)}")
    rankings: list[list[str]] = [[] for _ in triplets]
    metrics: dict = {"queries": len(triplets), "empty_captions": 0}
    scored, curves = [], {}
    for c in cats:
        pos = [i for i, t in enumerate(triplets) if t.category == c]
        ts = [triplets[i] for i in pos]
        index = indexes[c]
        refs = reference_features([t.reference for t in ts], index, (extra or {}).get(c))
        queries, empty = compose_queries(encoder, refs, [fiq_caption(t.captions) for t in ts], method, combiner)
        metrics["empty_captions"] += empty
        _, ids = search(queries, index, TOP)
        for i, names in zip(pos, _names(index, ids)):
            rankings[i] = names
        if all(t.target is not None for t in ts):
            r = recall_at_k(ids, tgts := _target_ids(index, [t.target for t in ts]), (10, 50))
            curves[c] = recall_curve(ids, tgts)
            metrics.update({f"{c}_{k}": v for k, v in r.items()})
            scored.append(c)
    if scored:
        for k in ("R@10", "R@50"):
            metrics[f"average_{k}"] = round(sum(metrics[f"{c}_{k}"] for c in scored) / len(scored), 2)
        metrics["average"] = round((metrics["average_R@10"] + metrics["average_R@50"]) / 2, 2)
    return ComposedResult(metrics, rankings, curves=curves)


def group_rankings(queries: torch.Tensor, index: FeatureIndex, references: Sequence[str],
                   groups: Sequence[Sequence[str]], k: int = CIRR_SUBSET_TOP) -> list[list[str]]:
    """Per query, its group members ranked by index.search over a sub-index of just those rows; the
    reference (and any member without features) is left out."""
    out = []
    for q, ref, group in zip(queries, references, groups):
        members = [m for m in dict.fromkeys(group) if m != ref and m in index]
        if not members:
            out.append([])
            continue
        rows = torch.tensor([index.id_of(m) for m in members])
        _, ids = search(q[None], index.features[rows], k)
        out.append([members[j] for j in ids[0].tolist()])
    return out


def composed_cirr(encoder: CaptionEncoder, index: FeatureIndex, triplets: Sequence[data_utils.Triplet], method: str,
                  combiner=None) -> ComposedResult:
    """CIRR: R@1/5/10/50 (reference removed), Rsubset@1/2/3 and avg = (R@5 + Rsubset@1) / 2.

    Without targets (test1) only rankings, subset rankings and pair ids are produced (for --submission).
    """
    refs = reference_features([t.reference for t in triplets], index)
    queries, empty = compose_queries(encoder, refs, [t.captions[0] for t in triplets], method, combiner)
    _, ids = search(queries, index, TOP, exclude=[index.id_of(t.reference) for t in triplets])
    subset = group_rankings(queries, index, [t.reference for t in triplets], [t.group for t in triplets])
    metrics: dict = {"queries": len(triplets), "empty_captions": empty}
    curves: dict = {}
    if triplets and all(t.target is not None for t in triplets):
        targets = [t.target for t in triplets]
        metrics.update(recall_at_k(ids, rows := _target_ids(index, targets), (1, 5, 10, 50)))
        curves[""] = recall_curve(ids, rows)
        metrics.update(recall_subset_at_k(subset, targets, [t.group for t in triplets], (1, 2, 3),
                                          [t.reference for t in triplets]))
        metrics["avg"] = round((metrics["R@5"] + metrics["Rsubset@1"]) / 2, 2)
    return ComposedResult(metrics, _names(index, ids), subset, [t.pair_id for t in triplets], curves)


# ----------------------------------------------------------------------------------------------- composed: the run

def fashioniq_image_records(root: Path, names: Sequence[str]) -> list[data_utils.ImageRecord]:
    """Records for FashionIQ images by name (images/<name>.png|.jpg|.jpeg, as data_utils looks them up)."""
    folder = Path(root) / "images"
    records = []
    for n in dict.fromkeys(names):
        found = [folder / f"{n}{ext}" for ext in data_utils.FASHIONIQ_EXTENSIONS if (folder / f"{n}{ext}").is_file()]
        records.append(data_utils.ImageRecord(n, found[0] if found else folder / f"{n}.png"))
    return records


def fashioniq_indexes(annotations: Sequence[data_utils.Triplet], root: Path, split: str,
                      build: Callable[..., FeatureIndex]) -> tuple[dict[str, FeatureIndex], dict[str, FeatureIndex]]:
    """Per category of `annotations`: its split's index, and the features of references outside it.

    `build(records, folder_name, searched=True, category=...)` returns the (extracted or loaded) index.
    """
    indexes, extra = {}, {}
    for c in dict.fromkeys(t.category for t in annotations):
        indexes[c] = build(data_utils.list_images("fashioniq", root, split, [c]), index_name("fashioniq", split, c),
                           category=c)
        outside = [t.reference for t in annotations if t.category == c and t.reference not in indexes[c]]
        if outside:  # references outside the split still need features; kept in their own folder
            log.info("%s: %d references are not in the %s index; encoding them", c, len(set(outside)), split)
            extra[c] = build(fashioniq_image_records(root, outside),  # features only, never searched
                             index_name("fashioniq", split, c) + "-references", searched=False, category=c)
    return indexes, extra


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
        index = build(data_utils.list_images("cirr", root, args.split), index_name("cirr", args.split))
        return composed_cirr(encoder, index, data, method, combiner), len(index)
    raise ValueError(f"unknown dataset {args.dataset!r} for --task composed; valid: catalog, fashioniq, cirr")


def run_composed(args) -> tuple[dict, dict[str, list[float]]]:
    """--task composed: load annotations (fail fast on bad input), then models, indexes, and the protocol.

    Returns the metrics (the JSON line) and the run's R@1..50 curves by part (for --plot)."""
    root = data_utils.resolve_data_root(args.dataset, args.data_root)
    if args.submission and args.dataset != "cirr":
        raise ValueError("--submission writes CIRR evaluation-server files; use it with --dataset cirr")
    if args.dataset == "catalog":
        data = data_utils.list_images("catalog", root, args.split)
    else:
        data = data_utils.load_triplets(args.dataset, root, args.split, args.categories)
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


def parser() -> argparse.ArgumentParser:
    """The command line of evaluate.py (every flag with its help)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["text2image", "image2image", "composed"],
                   help="what to measure: product name -> photo, photo -> similar photos, or composed "
                        "retrieval (reference image + relative caption -> target)")
    p.add_argument("--dataset", default="catalog", choices=["catalog", "fashioniq", "cirr"],
                   help="dataset: catalog (all tasks; composed uses generated triplets), fashioniq or cirr "
                        "(composed only, from their annotation files)")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: $CIR_DATA_ROOT or ../shared/data, descending into the "
                        "dataset's usual subfolder)")
    p.add_argument("--split", default=None,
                   help="split whose images form the index and whose annotations are the queries "
                        "(default: test for catalog, val for fashioniq and cirr; cirr's test split is test1)")
    p.add_argument("--categories", nargs="+", default=None,
                   help="FashionIQ categories, in this order (default: every category found); each is "
                        "ranked in its own index")
    p.add_argument("--combiner", default="combiner",
                   help="composed: how the reference and the caption are fused: a Combiner (combiner, "
                        "combiner-stage1: the shipped checkpoints; or a checkpoint path) or the baselines "
                        "sum (element-wise sum), image (reference only), text (caption only); default: combiner")
    p.add_argument("--text-encoder", default=None,
                   help="text side of the encoder: base, stage1 (shipped stage-1 checkpoint) or a checkpoint "
                        "path (default: the one the combiner was trained with; base for sum/image/text and "
                        "the other tasks)")
    p.add_argument("--triplet-seed", type=int, default=0,
                   help="composed, catalog: seed of the generated triplets (same seed = same triplets)")
    p.add_argument("--per-kind", type=int, default=500,
                   help="composed, catalog: at most this many triplets of each kind (triplets.py kinds)")
    p.add_argument("--phrasings", default="all", choices=["all", "train", "heldout"],
                   help="composed, catalog: caption templates of the triplets; 'heldout' uses only those "
                        "`train.py --phrasings train` never trains on")
    p.add_argument("--save-rankings", default=None, metavar="FILE",
                   help="composed: write a JSON list with the top-50 image names of every query, in "
                        "annotation order (fashioniq: categories in the given order)")
    p.add_argument("--submission", default=None, metavar="FILE",
                   help="composed, cirr: write the evaluation server's files beside FILE: FILE=out/sub.json "
                        "gives out/recall_submission_sub.json (top 50) and out/recall_subset_submission_sub.json "
                        "(top 3 of the img_set); needed for test1, which has no targets")
    p.add_argument("--encoder", default="lite",
                   help="encoder name: lite, bof (image-only: image2image), hf:<id or dir>, openai:<model>")
    p.add_argument("--features", default="features",
                   help="features root: an index is read from <root>/<dataset>[-<category>]-<split> or "
                        "extracted there")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch if extraction is needed")
    p.add_argument("--workers", type=int, default=None, help="decoding workers if extraction is needed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--index-backend", default="exact", metavar="SPEC",
                   help="how indexes are ranked (index/): exact (default), faiss[:hnsw|ivfpq][?param=value...], "
                        "milvus (milvus-lite beside the features, filled by `python3 -m index load`), "
                        "milvus:http://host:19530")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="text2image, composed: draw recall@K for K = 1..50 of every method evaluated, and bars of "
                        "the per-kind metrics (catalog kinds, FashionIQ categories), into this PNG")
    p.add_argument("--compare", nargs="+", default=[], metavar="METHOD",
                   help="composed: also evaluate these methods (as --combiner takes them), each printing its JSON "
                        "line before --combiner's, which stays last; --plot draws them all")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    parse_backend(args.index_backend)  # a bad spec fails now, before models and data are loaded
    setup_logging(args.verbose)
    args.split = args.split or DEFAULT_SPLITS[args.dataset]
    if args.per_kind < 1:
        raise ValueError("--per-kind must be at least 1")
    if args.categories is not None and args.dataset != "fashioniq":
        raise ValueError(f"--categories only applies to fashioniq, not {args.dataset}")

    if args.plot is not None and (args.task == "image2image" or not args.plot.lower().endswith(".png")):
        raise ValueError("--plot FILE.png draws recall curves: a .png path, with --task text2image or composed")
    if args.compare and args.task != "composed":
        raise ValueError("--compare evaluates other composed methods: use it with --task composed")
    if args.task == "composed":
        runs = composed_runs(args)
        if args.plot:
            write_plot(args.plot, runs)
        print(json.dumps(runs[args.combiner][0]))
        return 0
    if args.dataset != "catalog":
        raise ValueError(f"--task {args.task} needs the catalogue's attributes: use --dataset catalog")

    root = data_utils.resolve_data_root(args.dataset, args.data_root)
    records = data_utils.list_images(args.dataset, root, args.split)
    encoder = encoders.load(args.encoder, args.device, text=args.text_encoder)
    index = ensure_index(records, encoder, Path(args.features) / index_name(args.dataset, args.split),
                         batch_size=args.batch_size, workers=args.workers,
                         info={"dataset": args.dataset, "split": args.split, "data_root": str(root)})
    index = with_backend(index, args.index_backend)
    t0, curves = time.time(), {}
    metrics = text2image(encoder, index, records, curves) if args.task == "text2image" else image2image(index, records)
    metrics = {"task": args.task, "dataset": args.dataset, "split": args.split, "encoder": encoder.name,
               "index_size": len(index), "index_backend": parse_backend(args.index_backend).public, **metrics,
               "seconds": round(time.time() - t0, 2)}
    if args.plot:
        write_plot(args.plot, {encoder.name: (metrics, curves)})
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
