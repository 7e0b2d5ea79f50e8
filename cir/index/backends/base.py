"""What every ranking backend is: the Backend interface, the exact fall-back for queries an ANN index could
not fill, the stand-in for a backend that is down, and the ANN-overlap measure used to tune and check them.

A backend gets a validated Plan (index.search.make_plan) and keeps its contract: scores and row ids [B, k],
best first, excluded rows never returned, a subset restricting each query to its rows.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..errors import BackendUnavailable, IndexLoadError
from ..search import Plan, exact_search

if TYPE_CHECKING:   # type hints only: the index module imports the backends
    from ..feature_index import FeatureIndex
    from ..specs import BackendSpec

log = logging.getLogger("index")


class Backend:
    """What ranks a FeatureIndex. search(q, plan) -> (scores, ids); health() -> what /api/health reports.

    Subclasses declare what their spec accepts (kind, targets, params, usage: see index.specs) and open
    themselves with `open(index, backend_spec)`. `label` is the backend as logs and health show it (no
    credentials).
    """

    kind: str = ""
    targets: tuple[str, ...] | None = ("",)
    params: dict[str, type] = {}
    usage: str = ""
    label: str = "exact"
    index: "FeatureIndex"

    @classmethod
    def open(cls, index: "FeatureIndex", backend_spec: "BackendSpec") -> "Backend":
        raise NotImplementedError

    def search(self, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def health(self) -> dict:
        return self.report(True)

    def report(self, ok: bool, message: str | None = None, **extra: Any) -> dict:
        """A health entry: the backend, whether it serves, why not, and whether the folder's checksums were
        verified at load (False for older folders without checksums)."""
        return {"backend": self.label, "ok": ok, "message": message,
                "verified": bool(getattr(self.index, "verified", False)), **extra}


def fill_short(features: torch.Tensor, q: torch.Tensor, plan: Plan, vals: torch.Tensor,
               ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries an ANN index returned fewer than k usable rows for (a tiny index, many excluded, a restrictive
    filter; their missing scores are -inf) are ranked again by the exact scan, so that every backend returns
    k rows. In place; returns (vals, ids)."""
    short = torch.isneginf(vals).any(dim=1)
    if bool(short.any()):
        redo = torch.nonzero(short).flatten().tolist()
        vals[redo], ids[redo] = exact_search(features, q[redo], plan.take(redo))
    return vals, ids


def ann_recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """ANN overlap (not evaluate.py's R@K): the mean share of each query's true top-k (the exact scan's ids
    [B,k]) that the backend's top-k ids [B,k] contain."""
    if truth.numel() == 0:
        return 1.0
    hits = [len(set(f.tolist()) & set(t.tolist())) / max(1, len(t)) for f, t in zip(found, truth)]
    return float(np.mean(hits))


class UnavailableBackend(Backend):
    """Stands in for a backend that could not be opened (Milvus down): searches raise BackendUnavailable,
    health reports it; every `retry_s` seconds a search or health check tries `reopen` again, and the backend
    it returns replaces this one on the index."""

    def __init__(self, index: "FeatureIndex", backend_spec: "BackendSpec", error: Exception,
                 reopen: Callable[[], Backend], retry_s: float = 15.0):
        self.index, self.backend_spec, self.label = index, backend_spec, backend_spec.public
        self.message, self.retry_s, self.last_try = str(error), retry_s, time.monotonic()
        self._open = reopen
        self._lock = threading.Lock()

    def _reopen(self) -> Backend | None:
        with self._lock:
            if time.monotonic() - self.last_try < self.retry_s:
                return None
            self.last_try = time.monotonic()
            try:
                backend = self._open()
            except IndexLoadError as e:
                self.message = str(e)
                return None
        log.info("index backend %s of %s is available again", self.label, self.index.path)
        self.index.backend = backend
        return backend

    def search(self, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        backend = self._reopen()
        if backend is None:
            raise BackendUnavailable(self.message)
        return backend.search(q, plan)

    def health(self) -> dict:
        backend = self._reopen()
        return backend.health() if backend else self.report(False, self.message)
