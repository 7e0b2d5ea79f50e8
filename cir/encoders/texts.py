"""Caption features encoded once: the one cache of text features, used by the demo (bounded, an LRU shared by
its requests), by stage-2 training (every caption of a run) and by the lite encoder's frozen text tower.

A cache is anything with get(key) -> value or None, and put(key, value): the demo's serving.caching.LRU, or a
Memo (unbounded). Keys are (side, stripped text), so text sides sharing one cache never mix.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from cir.encoders.base import CaptionEncoder


class Cache(Protocol):
    def get(self, key: Any) -> Any: ...

    def put(self, key: Any, value: Any) -> None: ...


class Memo(dict):
    """An unbounded cache (a dict with the LRU's put): for a training run, which meets each caption many times."""

    def put(self, key: Any, value: Any) -> None:
        self[key] = value


def encode_once(texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor], cache: Cache, side: str = "",
                batch: int | None = 512) -> tuple[list[torch.Tensor], bool]:
    """One feature row per text, each distinct text encoded at most once (in batches of `batch`; None: in one
    call) and kept in `cache` under (side, text); also whether every text was cached already."""
    found = [cache.get((side, t)) for t in texts]
    missing = list(dict.fromkeys(t for t, f in zip(texts, found) if f is None))
    new: dict[str, torch.Tensor] = {}
    batch = batch or max(1, len(missing))
    for lo in range(0, len(missing), batch):
        chunk = missing[lo:lo + batch]
        new.update(zip(chunk, encode(chunk)))
    for t, f in new.items():
        cache.put((side, t), f)
    return [f if f is not None else new[t] for t, f in zip(texts, found)], not missing


class CachedTexts:
    """An encoder's text side as combiner.compose uses it (encode_texts), with each caption's raw features
    encoded once and kept in `cache`; `ms` is the time spent here, `cached` whether every caption was found.

    The demo makes one per query (so its time is that query's) over its shared LRU; training keeps one.
    """

    def __init__(self, encoder: CaptionEncoder, cache: Cache | None = None, side: str = "base", batch: int = 512):
        self.encoder, self.cache, self.side, self.batch = encoder, Memo() if cache is None else cache, side, batch
        self.dim = encoder.dim
        self.ms = 0.0
        self.cached = True

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        """Raw features are cached; normalised ones are derived from them (as Encoder.encode_texts). An empty
        caption raises the encoder's ValueError."""
        t0 = time.perf_counter()
        texts = [t.strip() if isinstance(t, str) else t for t in texts]
        rows, hit = encode_once(texts, lambda chunk: self.encoder.encode_texts(chunk, raw=True), self.cache,
                                self.side, self.batch)
        self.cached = self.cached and hit
        out = torch.stack(rows) if rows else torch.zeros(0, self.encoder.dim)
        self.ms += (time.perf_counter() - t0) * 1000
        return out if raw else F.normalize(out, dim=-1)
