"""Caption features encoded once: the one cache of text features, used by the demo (bounded, an LRU shared by
its requests), by stage-2 training (every caption of a run) and by the lite encoder's frozen text tower.

A cache is anything with get(key) -> value or None, and put(key, value): the demo's serving.caching.LRU, or a
Memo (unbounded). Keys are (side, stripped text), so text sides sharing one cache never mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cir.encoders.base import CaptionEncoder
from cir.utils import save_tensors, write_json


class Cache(Protocol):
    def get(self, key: Any) -> Any: ...

    def put(self, key: Any, value: Any) -> None: ...


class Memo(dict):
    """An unbounded cache (a dict with the LRU's put): for a training run, which meets each caption many times."""

    def put(self, key: Any, value: Any) -> None:
        self[key] = value


def text_fingerprint(encoder: Any) -> str:
    """A hash of what an encoder's text features depend on: its description and the weights under its text
    prefixes (a retrained text head gets another fingerprint); the description alone where it has none."""
    digest = hashlib.sha256(json.dumps(encoder.describe(), sort_keys=True, default=str).encode())
    try:
        prefixes = tuple(encoder.text_prefixes(0))
    except NotImplementedError:
        prefixes = ()
    for k, v in sorted(encoder.state_dict().items()) if prefixes else ():
        if k.startswith(prefixes):
            digest.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class StoredMemo(Memo):
    """A Memo kept in a file between training runs (generated captions repeat from run to run: the same seeds
    draw the same ones). The file's name must say whose features they are (encoder and text side)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        if self.path.is_file() and self.path.with_suffix(".json").is_file():
            keys = json.loads(self.path.with_suffix(".json").read_text())
            rows = load_file(self.path)["rows"]
            self.update({tuple(k): r for k, r in zip(keys, rows)})
        self._saved = len(self)

    def save(self) -> None:
        """Write the captions encoded since the last save (atomically: rows first, then the keys naming them)."""
        if len(self) == self._saved:
            return
        keys = list(self)
        save_tensors(self.path, {"rows": torch.stack([self[k] for k in keys])})
        write_json(self.path.with_suffix(".json"), [list(k) for k in keys])
        self._saved = len(self)


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
