"""Small thread-safe caches and counters of the demo server: an LRU map (also the demo's cache of caption
features, encoders.texts.CachedTexts) and per-app metrics."""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any, Sequence

import numpy as np


class LRU:
    """A thread-safe least-recently-used map of at most `size` entries (size 0 disables it) and, where
    `max_bytes` is set, at most that many bytes of values (each value's len(); one larger is not kept)."""

    def __init__(self, size: int, max_bytes: int = 0):
        self.size, self.max_bytes = size, max_bytes
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.bytes = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0 or (self.max_bytes and len(value) > self.max_bytes):
            return
        with self._lock:
            if key in self._data:
                self.bytes -= self._weight(self._data.pop(key))
            self._data[key] = value
            self.bytes += self._weight(value)
            while len(self._data) > self.size or (self.max_bytes and self.bytes > self.max_bytes):
                self.bytes -= self._weight(self._data.popitem(last=False)[1])

    def _weight(self, value: Any) -> int:
        return len(value) if self.max_bytes else 0

    def stats(self) -> dict:
        """Entries, bytes held (with max_bytes), hits and misses so far."""
        with self._lock:
            return {"entries": len(self._data), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}

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
