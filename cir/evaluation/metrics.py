"""Retrieval metrics, as the papers report them: recall@K, Rsubset@K (CIRR), attribute precision
and attribute match@K (the catalogue's conditions)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from cir.catalog.conditions import ConditionMasks, make_key


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """R@K in %: the share of queries whose target row is among the first K ranked ids."""
    hit = ranked == targets.view(-1, 1)
    return {f"R@{k}": round(100 * hit[:, :k].any(1).float().mean().item(), 2) for k in ks}


def attribute_precision_at_k(ranked: torch.Tensor, query_attrs: Sequence[tuple], gallery_attrs: Sequence[tuple],
                             k: int) -> float:
    """Precision@K in %: the share of the first K results whose attribute tuple equals the query's."""
    hits = [sum(gallery_attrs[j] == qa for j in row[:k]) / k for row, qa in zip(ranked.tolist(), query_attrs)]
    return round(100 * sum(hits) / max(len(hits), 1), 2)


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


# CIRR's seven metrics, as CLIP4Cir's scripts average them to pick a checkpoint (validate.py's order).
CIRR_SEVEN = ("Rsubset@1", "Rsubset@2", "Rsubset@3", "R@1", "R@5", "R@10", "R@50")
CIRR_MEANS = ("arithmetic", "harmonic", "geometric")


def cirr_means(metrics: Mapping[str, float]) -> dict[str, float]:
    """The arithmetic, harmonic and geometric means of the seven CIRR metrics (CIRR_SEVEN, in %), keyed
    mean_<kind>. The harmonic and geometric means of a set holding a 0 are 0 (as Python's statistics gives for
    the harmonic one; the geometric one would raise there)."""
    xs = [float(metrics[k]) for k in CIRR_SEVEN]
    n = len(xs)
    arithmetic = sum(xs) / n
    if min(xs) <= 0:
        harmonic = geometric = 0.0
    else:
        harmonic = n / sum(1 / x for x in xs)
        geometric = float(np.exp(np.mean(np.log(xs))))
    return {"mean_arithmetic": round(arithmetic, 4), "mean_harmonic": round(harmonic, 4),
            "mean_geometric": round(geometric, 4)}
