"""Backend specs: the URI-like option that names a ranking backend, parsed once into a BackendSpec.

    kind[:target][?param=value&...]      exact?block=4096, faiss:hnsw?M=32, milvus:http://host:19530?token=T

The grammar lives here; which kinds exist, and the targets and typed parameters each accepts, come from the
backend classes (the registry, index.registry). Credentials never leave through `BackendSpec.public`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol
from urllib.parse import parse_qsl

REMOTE_SCHEMES = ("http://", "https://", "tcp://", "unix:")   # a Milvus server, not a milvus-lite file
_USER_PASSWORD = re.compile(r"//[^/@]*:[^/@]*@")
_TOKEN = re.compile(r"(token=)[^&]*")


def is_remote(uri: str) -> bool:
    """Whether a Milvus URI names a server (http, https, tcp, unix socket) rather than a local file."""
    return uri.startswith(REMOTE_SCHEMES)


def mask_credentials(text: str) -> str:
    """`text` as logs and /api/health may show it: no token, no user:password in a URI."""
    return _USER_PASSWORD.sub("//***@", _TOKEN.sub(r"\1***", text))


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend option: kind (exact, faiss, milvus), target (faiss: hnsw/ivfpq/''; milvus: a URI or
    a file; '' = default) and parameters."""

    kind: str
    target: str = ""
    params: tuple[tuple[str, Any], ...] = ()
    text: str = "exact"

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @property
    def public(self) -> str:
        """The spec as shown in logs and /api/health: no token, no password in the URI."""
        return mask_credentials(self.text)


class BackendKind(Protocol):
    """What the parser needs to know of a backend class (see backends.base.Backend)."""

    params: dict[str, type]          # parameter name -> its type
    targets: tuple[str, ...] | None  # the targets it accepts ('' = none given); None: any (a URI, a file)
    usage: str                       # the spec's shape, for error messages


def parse_spec(spec: "str | BackendSpec | None", kinds: Mapping[str, BackendKind]) -> BackendSpec:
    """'faiss:hnsw?M=32&efSearch=128' -> BackendSpec('faiss', 'hnsw', (('M', 32), ('efSearch', 128))).

    ValueError, naming what is valid, for an unknown kind, target or parameter. 'auto' means no target.
    """
    if isinstance(spec, BackendSpec):
        return spec
    text = (spec or "exact").strip()
    head, sep, rest = text.partition(":")
    if not sep:
        head, _, query = text.partition("?")
        target = ""
    else:
        target, _, query = rest.partition("?")
    kind = head.strip().lower()
    if kind not in kinds:
        raise ValueError(f"unknown index backend {text!r}; valid: {', '.join(k.usage for k in kinds.values())}")
    entry = kinds[kind]
    target = "" if target == "auto" else target
    if entry.targets is not None and target not in entry.targets:
        if entry.targets == ("",):
            raise ValueError(f"the {kind} backend takes no target ({text!r}); parameters go after '?'")
        raise ValueError(f"unknown {kind} index kind {target!r} in {text!r}; valid: "
                         f"{', '.join(t for t in entry.targets if t)} (or none: auto)")
    params = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        conv = entry.params.get(name)
        if conv is None:
            raise ValueError(f"unknown parameter {name!r} for the {kind} backend in {text!r}; valid: "
                             f"{', '.join(entry.params)}")
        try:
            params.append((name, conv(value)))
        except ValueError:
            raise ValueError(f"parameter {name}={value!r} of {text!r} must be {conv.__name__}") from None
    return BackendSpec(kind, target, tuple(params), text)
