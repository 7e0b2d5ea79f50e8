"""The evaluation protocols: text->image and image->image on the catalogue, and composed retrieval
(reference image + relative caption -> target) on the catalogue's generated triplets and name edits,
FashionIQ (per category, reference kept) and CIRR (reference removed, Rsubset in the img_set). Queries are
made by combiner.compose and ranked by index.search, as the server does. The catalogue protocols also run
with the metadata path (`metadata`: cir.index.metadata, the caption's words found in the catalogue's own
names and attributes boosting or penalising results), reported apart from the learned path alone."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from cir.catalog import name_edits
from cir.catalog.conditions import ConditionMasks, condition_key
from cir.combiner import compose
from cir.data import ImageRecord, Triplet, list_images
from cir.data.fashioniq import fashioniq_image_records, fiq_caption
from cir.encoders import CaptionEncoder
from cir.evaluation.metrics import (
    attribute_precision_at_k,
    cirr_means,
    match_shares,
    recall_at_k,
    recall_subset_at_k,
)
from cir.evaluation.plots import recall_curve
from cir.evaluation.submission import CIRR_SUBSET_TOP, TOP
from cir.extraction.local import index_name
from cir.index import FeatureIndex, Metadata, rank_subset, search

log = logging.getLogger("evaluate")


def _encode_texts(encoder: CaptionEncoder, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.encode_texts(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def text2image(encoder: CaptionEncoder, index: FeatureIndex, records: Sequence[ImageRecord],
               curves: dict | None = None) -> dict:
    """Product name -> its own photo. R@1..50 goes into `curves[""]` when a dict is given (--plot)."""
    recs = [r for r in records if r.name in index and r.attrs.get("productDisplayName", "").strip()]
    q = _encode_texts(encoder, [r.attrs["productDisplayName"] for r in recs])
    _, ids = search(q, index, TOP)
    targets = torch.tensor([index.id_of(r.name) for r in recs])
    if curves is not None:
        curves[""] = recall_curve(ids, targets)
    return {"queries": len(recs), **recall_at_k(ids, targets, (1, 5, 10))}


def image2image(index: FeatureIndex, records: Sequence[ImageRecord], k: int = 10) -> dict:
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


@dataclass
class ComposedResult:
    metrics: dict                                  # what the final JSON line reports
    rankings: list[list[str]]                      # top-50 names per query, in annotation order
    subset_rankings: list[list[str]] | None = None  # CIRR: the group members ranked, reference removed
    pair_ids: list[int] | None = None              # CIRR: one per query
    curves: dict[str, list[float]] = field(default_factory=dict)  # R@1..50 by part ("" or a FashionIQ category)


def reference_features(names: Sequence[str], index: FeatureIndex,
                       extra: FeatureIndex | None = None) -> torch.Tensor:
    """Raw float32 features [B,d] of the reference images (what combiner.compose takes): from `index`, else
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


EMPTY_CAPTIONS = ("image", "encode")   # what a query with an empty caption becomes (--empty-captions)


def compose_queries(encoder: CaptionEncoder, ref_feats: torch.Tensor, captions: Sequence[str], method: str,
                    combiner=None, batch: int = 256, empty_captions: str = "image") -> tuple[torch.Tensor, int]:
    """Query features [B,d] via combiner.compose, in caption batches; returns (queries, empty captions).

    A query with an empty caption has nothing to compose: by default ("image") it becomes its reference image
    alone; "encode" does what CLIP4Cir does, the text encoder encodes "" (its start and end tokens) and the
    fusion runs as for any caption.
    """
    if empty_captions not in EMPTY_CAPTIONS:
        raise ValueError(f"unknown empty_captions {empty_captions!r}; valid: {', '.join(EMPTY_CAPTIONS)}")
    out = torch.zeros(len(captions), ref_feats.shape[1])
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    full = list(range(len(captions))) if empty_captions == "encode" else [i for i in range(len(captions))
                                                                           if captions[i].strip()]
    if empty:
        log.warning("%d quer%s with an empty caption: %s", len(empty), "y" if len(empty) == 1 else "ies",
                    "encoding the empty text, as CLIP4Cir" if empty_captions == "encode"
                    else "querying with the reference image alone")
    if empty and empty_captions == "image":
        out[empty] = compose(encoder, ref_feats[empty], None, "image")
    texts = _WithEmptyText(encoder) if empty and empty_captions == "encode" else encoder
    for lo in range(0, len(full), batch):
        rows = full[lo:lo + batch]
        caps = None if method == "image" else [captions[i] for i in rows]
        out[rows] = compose(texts, ref_feats[rows], caps, method, combiner).float()
    return out, len(empty)


class _WithEmptyText:
    """An encoder's encode_texts that also encodes "" (CLIP4Cir's empty captions). Encoders refuse an empty
    query from users, so the empty text goes to the model's own text call (BaseEncoder._encode_texts), reached
    through the wrappers (CachedTexts) that hold it; the training text side (TrainingTexts) encodes it itself."""

    def __init__(self, encoder: CaptionEncoder):
        self.encoder, self.dim = encoder, encoder.dim
        self._empty: torch.Tensor | None = None

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        texts = [t.strip() for t in texts]
        full = [i for i, t in enumerate(texts) if t]
        out = torch.zeros(len(texts), self.dim)
        if full:
            out[full] = self.encoder.encode_texts([texts[i] for i in full], raw=True).float()
        if len(full) < len(texts):
            out[[i for i, t in enumerate(texts) if not t]] = self.empty_text()
        return out if raw else torch.nn.functional.normalize(out, dim=-1)

    def empty_text(self) -> torch.Tensor:
        """Raw features [d] of the empty text, encoded once."""
        if self._empty is None:
            try:
                self._empty = self.encoder.encode_texts([""], raw=True)[0].float()
            except ValueError:  # refused by a BaseEncoder: call the model under it
                model = self.encoder
                while not hasattr(model, "_encode_texts") and hasattr(model, "encoder"):
                    model = model.encoder
                with torch.inference_mode():
                    self._empty = model._encode_texts([""])[0].float().cpu()
        return self._empty


def _target_ids(index: FeatureIndex, targets: Sequence[str]) -> torch.Tensor:
    """Rows of the targets; -1 (never ranked, so a miss) for a target without features."""
    ids = [index.id_of(t) if t in index else -1 for t in targets]
    if -1 in ids:
        log.warning("%d target(s) are not in the index (skipped at extraction?); they count as misses",
                    ids.count(-1))
    return torch.tensor(ids, dtype=torch.long)


def _names(index: FeatureIndex, ids: torch.Tensor) -> list[list[str]]:
    return [[index.names[j] for j in row] for row in ids.tolist()]


def _ranked(queries: torch.Tensor, index: FeatureIndex, exclude: list[int], texts: Sequence[str],
            metadata: Metadata | None) -> tuple[torch.Tensor, dict]:
    """Top-TOP row ids of the queries, reference excluded; with `metadata`, each typed text's understood
    words boost the ranking (index.search's boost), and what was understood is summed up for the metrics."""
    if metadata is None:
        return search(queries, index, TOP, exclude=exclude)[1], {}
    if len(metadata) != len(index):
        raise ValueError(f"the metadata has {len(metadata)} rows and the index {len(index)}: build it with "
                         "Metadata.from_records(records, index.names)")
    boosts = metadata.boosts(texts)
    _, ids = search(queries, index, TOP, exclude=exclude, boost=boosts)
    n = max(1, len(texts))
    return ids, {"metadata": {"weight": metadata.weight, "max_df": metadata.max_df,
                              "understood": round(100 * sum(map(bool, boosts)) / n, 2),
                              "avoiding": round(100 * sum(bool(b.avoid) for b in boosts) / n, 2)}}


def composed_catalog(encoder: CaptionEncoder, index: FeatureIndex, records: Sequence[ImageRecord],
                     triplets: Sequence, method: str, combiner=None,
                     metadata: Metadata | None = None) -> ComposedResult:
    """Catalogue triplets (triplets.generate): R@1/10/50 of the target and attr@1/10, reference excluded.

    attr@K counts the results satisfying each triplet's condition (wanted and unwanted attributes, as
    triplets.satisfies decides). Also attr@10_ceiling (the best attr@10 possible given how many items satisfy
    it) and, per triplet kind, queries, R@10, attr@10 and attr@10_ceiling (under "kinds"). metadata: the
    metadata path on top (Metadata.from_records(records, index.names)); its settings and the share of
    captions with understood words are then under "metadata".
    """
    refs = reference_features([t.reference for t in triplets], index)
    captions = [t.caption for t in triplets]
    queries, empty = compose_queries(encoder, refs, captions, method, combiner)
    ids, understood = _ranked(queries, index, [index.id_of(t.reference) for t in triplets], captions, metadata)
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

    metrics = {"queries": len(triplets), "empty_captions": empty, **scores(list(range(len(triplets)))),
               **understood}
    kinds = {}
    for kind in dict.fromkeys(t.kind for t in triplets):
        rows = [i for i, t in enumerate(triplets) if t.kind == kind]
        m = scores(rows)
        kinds[kind] = {"queries": len(rows), "R@10": m["R@10"], "attr@10": m["attr@10"],
                       "attr@10_ceiling": m["attr@10_ceiling"]}
    metrics["kinds"] = kinds
    return ComposedResult(metrics, _names(index, ids), curves={"": recall_curve(ids, targets)})


NAME_EDIT_TEXTS = ("caption", "wish")


def composed_name_edits(encoder: CaptionEncoder, index: FeatureIndex, records: Sequence[ImageRecord],
                        edits: Sequence[name_edits.NameEdit], method: str, combiner=None,
                        text: str = "caption", metadata: Metadata | None = None) -> ComposedResult:
    """Name edits (name_edits.mine): R@1/10/50 of the target and name@1/10, reference excluded.

    name@K is the share of the top K satisfying the edit (name_edits.satisfies: the wanted type and gender,
    every new word in the product name); name@10_ceiling the best name@10 any ranking could reach. text: what
    is typed, the relative "caption" (composed with the reference by `method`) or the whole "wish" (for the
    text-typed baseline: method "text"). Per family (colour, name, ...) under "families". metadata: the
    metadata path on top, reading the typed text (as composed_catalog).
    """
    if text not in NAME_EDIT_TEXTS:
        raise ValueError(f"unknown text {text!r}; valid: {', '.join(NAME_EDIT_TEXTS)}")
    refs = reference_features([e.reference for e in edits], index)
    typed = [e.caption if text == "caption" else e.wish for e in edits]
    queries, empty = compose_queries(encoder, refs, typed, method, combiner)
    ref_rows = [index.id_of(e.reference) for e in edits]
    ids, understood = _ranked(queries, index, ref_rows, typed, metadata)
    targets = _target_ids(index, [e.target for e in edits])
    attrs_of = {r.name: r.attrs for r in records}
    sat = name_edits.satisfying(edits, [attrs_of.get(n, {}) for n in index.names])
    sat[np.arange(len(edits)), ref_rows] = False   # never ranked: neither a hit nor within reach
    top = ids.cpu().numpy()
    hits = np.take_along_axis(sat, np.maximum(top, 0), 1) & (top >= 0) if len(edits) else np.zeros((0, 0), bool)
    at1, at10 = hits[:, :1].mean(1), hits[:, :10].mean(1)
    ceil = np.minimum(sat.sum(1), 10) / 10

    def pct(values: np.ndarray) -> float:
        return round(100 * float(values.mean()), 2) if len(values) else 0.0

    def scores(rows: list[int]) -> dict:
        sel = torch.tensor(rows, dtype=torch.long)
        return {**recall_at_k(ids[sel], targets[sel], (1, 10, 50)), "name@1": pct(at1[rows]),
                "name@10": pct(at10[rows]), "name@10_ceiling": pct(ceil[rows])}

    metrics = {"queries": len(edits), "empty_captions": empty, **scores(list(range(len(edits)))), **understood}
    families = {}
    for fam in name_edits.FAMILIES:
        rows = [i for i, e in enumerate(edits) if e.family == fam]
        if rows:
            m = scores(rows)
            families[fam] = {"queries": len(rows), **{k: m[k] for k in ("R@10", "name@10", "name@10_ceiling")}}
    metrics["families"] = families
    return ComposedResult(metrics, _names(index, ids), curves={"": recall_curve(ids, targets)})


def composed_fashioniq(encoder: CaptionEncoder, indexes: Mapping[str, FeatureIndex],
                       triplets: Sequence[Triplet], method: str, combiner=None,
                       extra: Mapping[str, FeatureIndex] | None = None,
                       empty_captions: str = "image") -> ComposedResult:
    """FashionIQ: each category's queries ranked in its own index, reference kept (as CLIP4Cir).

    extra[category] holds features of references outside that category's index. Metrics need targets
    (the test split has none: then only the rankings are produced). empty_captions "encode" joins the two
    captions literally, as the original ("Red and " when the second is empty), and encodes whatever results.
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
        texts = [fiq_caption(t.captions, literal=empty_captions == "encode") for t in ts]
        queries, empty = compose_queries(encoder, refs, texts, method, combiner, empty_captions=empty_captions)
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
    """Per query, the top k of its group members (index.rank_subset: the index's backend, as the demo's group
    row); the reference, and any member without features, is left out."""
    return [[name for name, _ in rank_subset(q, index, [m for m in group if m != ref], k)]
            for q, ref, group in zip(queries, references, groups)]


def composed_cirr(encoder: CaptionEncoder, index: FeatureIndex, triplets: Sequence[Triplet], method: str,
                  combiner=None, empty_captions: str = "image") -> ComposedResult:
    """CIRR: R@1/5/10/50 (reference removed), Rsubset@1/2/3, avg = (R@5 + Rsubset@1) / 2 and the arithmetic,
    harmonic and geometric means of those seven (CLIP4Cir's checkpoint selection: metrics.cirr_means).

    Without targets (test1) only rankings, subset rankings and pair ids are produced (for --submission).
    """
    refs = reference_features([t.reference for t in triplets], index)
    queries, empty = compose_queries(encoder, refs, [t.captions[0] for t in triplets], method, combiner,
                                     empty_captions=empty_captions)
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
        metrics.update(cirr_means(metrics))
    return ComposedResult(metrics, _names(index, ids), subset, [t.pair_id for t in triplets], curves)


def fashioniq_indexes(annotations: Sequence[Triplet], root: Path, split: str,
                      build: Callable[..., FeatureIndex]) -> tuple[dict[str, FeatureIndex], dict[str, FeatureIndex]]:
    """Per category of `annotations`: its split's index, and the features of references outside it.

    `build(records, folder_name, searched=True, category=...)` returns the (extracted or loaded) index.
    """
    indexes, extra = {}, {}
    for c in dict.fromkeys(t.category for t in annotations):
        indexes[c] = build(list_images("fashioniq", root, split, [c]), index_name("fashioniq", split, c),
                           category=c)
        outside = [t.reference for t in annotations if t.category == c and t.reference not in indexes[c]]
        if outside:  # references outside the split still need features; kept in their own folder
            log.info("%s: %d references are not in the %s index; encoding them", c, len(set(outside)), split)
            extra[c] = build(fashioniq_image_records(root, outside),  # features only, never searched
                             index_name("fashioniq", split, c) + "-references", searched=False, category=c)
    return indexes, extra
