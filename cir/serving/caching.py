"""Small thread-safe caches and counters of the demo server: an LRU map, cached timed text encoding, metrics."""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any, Sequence

import numpy as np
import torch


class LRU:
    """A thread-safe least-recently-used map of at most `size` entries (size 0 disables it)."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation) or None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Metrics:
    """Per-app counters: queries by mode, latency window, errors by status, uploads. Thread-safe."""

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.started = time.time()
        self.queries = 0
        self.by_mode: Counter = Counter()
        self.errors: Counter = Counter()
        self.uploads = 0
        self._latency: deque[float] = deque(maxlen=window)  # recent total_ms of answered queries

    def query(self, mode: str, total_ms: float) -> None:
        with self._lock:
            self.queries += 1
            self.by_mode[mode] += 1
            self._latency.append(total_ms)

    def error(self, status: int) -> None:
        with self._lock:
            self.errors[str(status)] += 1

    def upload(self) -> None:
        with self._lock:
            self.uploads += 1

    def snapshot(self) -> dict:
        with self._lock:
            lat = list(self._latency)
            return {"queries": self.queries, "queries_by_mode": dict(self.by_mode),
                    "errors": sum(self.errors.values()), "errors_by_status": dict(self.errors),
                    "uploads": self.uploads, "uptime_s": round(time.time() - self.started, 1),
                    "latency_ms": {"p50": _round(percentile(lat, 50)), "p95": _round(percentile(lat, 95)),
                                   "window": len(lat)}}


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


class TimedTexts:
    """The part of an Encoder that model.compose uses (encode_texts), behind an LRU cache and a stopwatch.

    One is made per query, so the measured time belongs to that query even with concurrent requests.
    """

    def __init__(self, encoder, cache: LRU, key: str):
        self.encoder, self.cache, self.key = encoder, cache, key
        self.ms = 0.0
        self.cached = True

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        """Raw features are cached; normalised ones are derived from them (as Encoder.encode_texts)."""
        t0 = time.perf_counter()
        texts = [t.strip() if isinstance(t, str) else t for t in texts]
        found = [self.cache.get((self.key, t)) for t in texts]
        missing = list(dict.fromkeys(t for t, f in zip(texts, found) if f is None))
        if missing:
            self.cached = False
            new = dict(zip(missing, self.encoder.encode_texts(missing, raw=True)))  # ValueError on empty
            for t, f in new.items():
                self.cache.put((self.key, t), f)
            found = [f if f is not None else new[t] for t, f in zip(texts, found)]
        out = torch.stack(found) if found else torch.zeros(0, self.encoder.dim)
        self.ms += (time.perf_counter() - t0) * 1000
        return out if raw else torch.nn.functional.normalize(out, dim=-1)
