"""Feature indexes and the one search function.

`search(queries, index, k, exclude)` is the only ranking code in the project: evaluation, the server and
the API all call it. An index is a folder written by extract_features.py (features.safetensors with
L2-normalised float16 rows, names.json, manifest.json); `load_index` checks it is complete and consistent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch


class IndexLoadError(ValueError):
    """A feature folder that is missing, incomplete or inconsistent."""


@dataclass
class FeatureIndex:
    features: torch.Tensor          # [N, d] L2-normalised, float16 as stored
    names: list[str]                # row -> image name
    manifest: dict = field(default_factory=dict)
    _ids: dict[str, int] | None = field(default=None, repr=False)
    _f32: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def id_of(self, name: str) -> int:
        """Row of an image name; KeyError if the image is not in the index."""
        if self._ids is None:
            self._ids = {n: i for i, n in enumerate(self.names)}
        return self._ids[name]

    def __contains__(self, name: str) -> bool:
        try:
            self.id_of(name)
            return True
        except KeyError:
            return False

    def matrix(self) -> torch.Tensor:
        """float32 copy for CPU matrix products (fp16 GEMM is slow on CPUs); made once."""
        if self._f32 is None:
            self._f32 = self.features.float()
        return self._f32


def load_index(path: str | os.PathLike) -> FeatureIndex:
    """Load a feature folder, with a clear error for anything missing or inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    files = {n: path / n for n in ("features.safetensors", "names.json", "manifest.json")}
    missing = [n for n, f in files.items() if not f.exists()]
    if missing:
        raise IndexLoadError(f"{path} is not a complete feature folder (missing {', '.join(missing)}); "
                          "run extract_features.py for it")
    try:
        features = load_file(files["features.safetensors"])["features"]
    except (SafetensorError, KeyError, OSError) as e:
        raise IndexLoadError(f"{files['features.safetensors']} is unreadable or corrupt: {e}") from e
    try:
        names = json.loads(files["names.json"].read_text())
        manifest = json.loads(files["manifest.json"].read_text())
    except json.JSONDecodeError as e:
        raise IndexLoadError(f"{path}: invalid JSON: {e}") from e
    if features.ndim != 2 or len(names) != features.shape[0]:
        raise IndexLoadError(f"{path}: {features.shape[0] if features.ndim else '?'} feature rows but "
                          f"{len(names)} names")
    if manifest.get("dim") not in (None, features.shape[1]):
        raise IndexLoadError(f"{path}: manifest says dim {manifest['dim']}, features have {features.shape[1]}")
    return FeatureIndex(features, names, manifest)


def search(queries: torch.Tensor, index: FeatureIndex | torch.Tensor, k: int,
           exclude: Sequence[Iterable[int] | int | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarity of normalised queries [B,d] against the index rows.

    exclude: one entry per query, a row id or ids that must not be returned for that query (e.g. the
    reference image itself). Returns (scores [B,k'], ids [B,k']) with k' = min(k, N - most ids excluded
    for one query), best first.
    """
    mat = index.matrix() if isinstance(index, FeatureIndex) else index.float()
    q = queries.float()
    if q.ndim == 1:
        q = q[None]
    if q.shape[1] != mat.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} does not match index dim {mat.shape[1]}")
    scores = q @ mat.T
    most_excluded = 0
    if exclude is not None:
        if len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        for row, ex in enumerate(exclude):
            if ex is None:
                continue
            ids = sorted({ex} if isinstance(ex, int) else set(ex))
            if ids:
                scores[row, ids] = float("-inf")
                most_excluded = max(most_excluded, len(ids))
    # Never return an excluded row, even when k reaches into them (small indexes).
    k = min(k, mat.shape[0] - most_excluded)
    top = torch.topk(scores, k, dim=1)
    return top.values, top.indices
