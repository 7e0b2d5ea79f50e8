"""The demo's explanations: Grad-CAM of a search's score for one result (cir.explain), rendered as a PNG
overlay or JSON, bounded and cached so that they cannot take the server away from searches.

- The image is decoded at EXPLAIN_MAX_SIDE at most (a JPEG at reduced size by libjpeg), so a 24 MP photo
  costs what a 1 MP one does.
- Only the query (text encoder, Combiner: tokenizers and ONNX sessions shared with the searches) is computed
  under the engine's model lock. The Grad-CAM itself, decoding and rendering run on the explainer's own
  feature-map session, on a low-priority OS thread (serving.offload): under gevent the worker keeps answering
  searches meanwhile, and on busy cores the searches get the CPU first.
- At most `concurrency` explanations run at once per worker; the next waits EXPLAIN_WAIT_S, then gets 503.
- Rendered answers are kept in a byte-bounded LRU keyed by what defines them (dataset, result, mode,
  reference or upload, caption, Combiner, text side, format): the page's "why?" switch asks for every result
  of a search, and switching it off and on again, or coming back to a search, is answered from memory.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Hashable

import torch

from cir.encoders import Encoder
from cir.explain import Explainer
from cir.images import ImageTooLarge, open_image
from cir.serving.caching import LRU
from cir.serving.errors import NotFound, NotImplementedForModel, ServiceUnavailable, TooLarge
from cir.serving.offload import Offload

EXPLAIN_MAX_SIDE = 1024     # explanations decode at most this large: the encoder sees 224 px, the page shows less
EXPLAIN_WAIT_S = 2.0        # how long an explanation waits for a slot before a 503
EXPLAIN_NICE = 10           # how many nice steps below the worker the Grad-CAM threads run (serving.offload)
FORMATS = {"png": "image/png", "json": "application/json"}


@dataclass(frozen=True)
class Rendered:
    """One explanation as sent: the body, its media type, and whether the cache answered it."""

    body: bytes
    mimetype: str
    cached: bool


class Explanations:
    """Explanations for one engine: the explainer (built on first use), its slots, threads and cache."""

    def __init__(self, encoder: Encoder, guard: Callable[[], ContextManager], concurrency: int,
                 cache_bytes: int, max_pixels: int):
        self.encoder, self.max_pixels = encoder, max_pixels
        self.guard = guard                      # the engine's model lock (Engine.model_calls)
        self._explainer: Explainer | None = None
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._offload = Offload(concurrency, nice=EXPLAIN_NICE, name="explain")
        self.cache = LRU(1 << 20 if cache_bytes else 0, max_bytes=cache_bytes)

    def render(self, key: Hashable, image: tuple[str, Path], query: Callable[[], torch.Tensor], fmt: str,
               check: Callable[[float], None]) -> Rendered:
        """The explanation of `image` (its id and file) for the query vector `query()` (called under the model
        lock), as `fmt` (png or json); from the cache when `key` was rendered before. `check(score)` raises
        when the explained score is not a number (a damaged model): nothing is cached then."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown explanation format {fmt!r}; valid: {', '.join(FORMATS)}")
        body = self.cache.get((key, fmt))
        if body is not None:
            return Rendered(body, FORMATS[fmt], True)
        if not self._slots.acquire(timeout=EXPLAIN_WAIT_S):
            raise ServiceUnavailable("the server is busy explaining other results; try again in a few seconds")
        try:
            with self.guard():
                explainer = self._explainer_built()
                vector = query()
            body = self._offload(_compute, explainer, image, vector, fmt, check, self.max_pixels)
        finally:
            self._slots.release()
        self.cache.put((key, fmt), body)
        return Rendered(body, FORMATS[fmt], False)

    def _explainer_built(self) -> Explainer:
        if self._explainer is None:
            try:
                self._explainer = Explainer(self.encoder, threads=1)
            except NotImplementedError as e:
                raise NotImplementedForModel(str(e)) from None
        return self._explainer


def _compute(explainer: Explainer, image: tuple[str, Path], query: torch.Tensor, fmt: str,
             check: Callable[[float], None], max_pixels: int) -> bytes:
    """Decode (at most max_pixels after libjpeg's scaling), explain and render one image (on an offload
    thread)."""
    name, path = image
    try:
        decoded = open_image(path, EXPLAIN_MAX_SIDE, max_pixels)
    except ImageTooLarge as e:
        raise TooLarge(f"image {name!r} is too large to explain: {e}") from None
    except FileNotFoundError:
        raise NotFound(f"the file of image {name!r} is missing on the server") from None
    except (OSError, ValueError, SyntaxError):   # not a regular file, or not a readable image
        raise NotFound(f"the file of image {name!r} on the server cannot be read") from None
    exp = explainer.explain(decoded, query)
    check(exp.score)
    if fmt == "json":
        return json.dumps(exp.to_json(), allow_nan=False, separators=(",", ":")).encode()
    return exp.png()
