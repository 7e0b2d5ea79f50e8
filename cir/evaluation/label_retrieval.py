"""Kmeans-IR's two-stage retrieval by label: cluster the features, name the clusters, answer a label by a cluster.

Stage 1 (fit): k-means (scikit-learn) clusters the labelled train features into as many clusters as there are
labels; each cluster is named by the majority label of the train items in it (a cluster no train item falls in
has no name). Stage 2 (query): the searched index's items are assigned to their nearest centre; a label query
returns the items of the clusters named by that label, ranked by their distance to their cluster's centre.
Works on any encoder's features (bof, lite, CLIP); features are L2-normalised, so distances are chordal.

    python3 label_retrieval.py --encoder bof --label articleType --query Tshirts --query Watches

extracts (or loads) the catalogue's train and test indexes under --features and prints the ranked test ids.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cir.data import ImageRecord
from cir.extraction.local import index_name

log = logging.getLogger("label_retrieval")


@dataclass
class LabelClusters:
    """Fitted stage 1: the cluster centres [k, d] and each cluster's name (majority train label, or None)."""

    centres: np.ndarray
    names: list[str | None]

    @classmethod
    def fit(cls, features: np.ndarray, labels: Sequence[str], n_clusters: int | None = None,
            seed: int = 0) -> "LabelClusters":
        """k-means of `features` [N, d] into `n_clusters` (default: the number of distinct labels), named by
        the majority of `labels` (one per row) among each cluster's members (ties: the label seen first)."""
        from sklearn.cluster import KMeans  # lazily: only fitting needs scikit-learn's k-means
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        k = n_clusters or len(set(labels))
        if not 1 <= k <= len(features):
            raise ValueError(f"cannot make {k} clusters of {len(features)} items")
        km = KMeans(k, n_init=3, random_state=seed).fit(np.asarray(features, np.float32))
        names: list[str | None] = [None] * k
        for c in range(k):
            members = [labels[i] for i in np.flatnonzero(km.labels_ == c)]
            names[c] = Counter(members).most_common(1)[0][0] if members else None
        return cls(km.cluster_centers_.astype(np.float32), names)

    @property
    def labels(self) -> list[str]:
        """The labels some cluster is named by (the ones a query can find)."""
        return sorted({n for n in self.names if n is not None})

    def assign(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre of each row [N] and the distance to it [N]."""
        f = np.asarray(features, np.float32)
        d2 = (f * f).sum(1)[:, None] - 2.0 * f @ self.centres.T + (self.centres ** 2).sum(1)[None, :]
        nearest = d2.argmin(1)
        return nearest, np.sqrt(np.maximum(d2[np.arange(len(f)), nearest], 0.0))

    def query(self, label: str, features: np.ndarray, assigned: tuple[np.ndarray, np.ndarray] | None = None,
              k: int | None = None) -> np.ndarray:
        """Rows of `features` in the clusters named `label`, nearest their centre first (at most `k`).

        An empty result when no cluster bears the label; an unknown label is an error naming the known ones.
        `assigned` reuses `assign(features)` across queries.
        """
        if label not in self.names:
            raise ValueError(f"no cluster is named {label!r}; known labels: {', '.join(self.labels)}")
        nearest, dist = assigned if assigned is not None else self.assign(features)
        wanted = [c for c, n in enumerate(self.names) if n == label]
        rows = np.flatnonzero(np.isin(nearest, wanted))
        rows = rows[np.argsort(dist[rows], kind="stable")]
        return rows if k is None else rows[:k]


def label_precision(clusters: LabelClusters, features: np.ndarray, labels: Sequence[str],
                    queries: Sequence[str], k: int = 10) -> dict:
    """Mean over label queries of the precision of the whole returned cluster and of its first k items
    (a label no cluster bears, or an empty answer, counts 0)."""
    assigned = clusters.assign(features)
    labels = np.asarray(labels)
    whole, top = [], []
    for q in queries:
        rows = clusters.query(q, features, assigned) if q in clusters.names else np.zeros(0, int)
        whole.append(float((labels[rows] == q).mean()) if len(rows) else 0.0)
        top.append(float((labels[rows[:k]] == q).mean()) if len(rows) else 0.0)
    return {"queries": len(queries), "precision": round(100 * float(np.mean(whole)), 2),
            f"P@{k}": round(100 * float(np.mean(top)), 2),
            "named_clusters": sum(n is not None for n in clusters.names), "clusters": len(clusters.names),
            "labels_findable": sum(q in clusters.names for q in queries)}


def sample_records(records: Sequence[ImageRecord], n: int | None,
                   seed: int = 0) -> list[ImageRecord]:
    """A deterministic sample of n records (all of them when n is None or too big), in their file order."""
    if n is None or n >= len(records):
        return list(records)
    return [records[i] for i in sorted(np.random.default_rng(seed).permutation(len(records))[:n])]


def index_folder(split: str, encoder: str, n: int | None = None) -> str:
    """The folder name of the cached index of a catalogue split (or of its n-record sample) for an encoder."""
    tag = encoder.replace(":", "_").replace("/", "_")
    return f"{index_name('catalog', split)}{n if n else ''}-{tag}"
