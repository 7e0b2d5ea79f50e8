"""The backend registry: which spec kinds exist (exact, faiss, milvus) and what opens each.

`parse_backend` checks a spec against the backend classes' declared targets and parameters;
`open_backend` opens the class the spec names. A new backend is one class in backends/ and one line here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .backends.base import Backend
from .backends.exact import ExactBackend
from .backends.faiss import FaissBackend
from .backends.milvus import MilvusBackend
from .specs import BackendSpec, parse_spec

if TYPE_CHECKING:   # type hints only: the index module imports the registry
    from .feature_index import FeatureIndex

BACKENDS: dict[str, type[Backend]] = {cls.kind: cls for cls in (ExactBackend, FaissBackend, MilvusBackend)}


def parse_backend(backend_spec: "str | BackendSpec | None") -> BackendSpec:
    """A backend option (see index.specs) checked against the registered backends; ValueError naming what is
    valid for an unknown kind, target or parameter. None means exact."""
    return parse_spec(backend_spec, BACKENDS)


def open_backend(index: "FeatureIndex", backend_spec: "str | BackendSpec | None") -> Backend:
    """Open the backend a spec names over `index` (IndexLoadError and its subclasses when it cannot serve)."""
    parsed = parse_backend(backend_spec)
    return BACKENDS[parsed.kind].open(index, parsed)
