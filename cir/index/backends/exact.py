"""The default backend: the exact scan of the index's memory-mapped float16 features (index.search).

    exact                                  fp16 scan of the memory-mapped matrix, in cache-sized blocks
    exact?block=4096&block16=32768         rows per block of the float32 (batches) and fp16 (1-4 queries) scans
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..search import Plan, exact_search
from .base import Backend

if TYPE_CHECKING:   # type hints only: the index module imports the backends
    from ..feature_index import FeatureIndex
    from ..specs import BackendSpec


class ExactBackend(Backend):
    """Exact scan of the index's (memory-mapped) features; see exact_search."""

    kind = "exact"
    targets = ("",)
    params = {"block": int, "block16": int}
    usage = "exact"

    def __init__(self, index: "FeatureIndex", block: int | None = None, block16: int | None = None):
        self.index, self.block, self.block16 = index, block or 4096, block16 or 32768
        self.label = "exact"
        # The fp16 fast path needs rows of norm ~1 (its error bound): checked on a sample at load.
        self.normalized = index.unit_rows

    @classmethod
    def open(cls, index: "FeatureIndex", backend_spec: "BackendSpec") -> "ExactBackend":
        return cls(index, block=backend_spec.get("block"), block16=backend_spec.get("block16"))

    def search(self, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        return exact_search(self.index.features, q, plan, self.block, self.block16, normalized=self.normalized)

    def health(self) -> dict:
        return self.report(True, rows=len(self.index), mapped=self.index.mapped is not None)
