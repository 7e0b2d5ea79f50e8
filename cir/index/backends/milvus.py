"""The Milvus backend through pymilvus: milvus-lite (a local file, no server) or a Milvus server / cluster,
and `load_into_milvus`, which fills a collection from a feature folder (idempotent, resumable).

    milvus                                 milvus-lite, embedded, in <index dir>/milvus.db
    milvus:./path/to/file.db               milvus-lite in another file
    milvus:http://host:19530?token=T&db=D  a Milvus server or cluster (token also from $MILVUS_TOKEN)

pymilvus is imported on first use (a heavy optional dependency: pip install pymilvus milvus-lite).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..errors import BackendUnavailable, IndexLoadError, StaleIndexError
from ..search import Plan
from ..specs import is_remote, mask_credentials, parse_spec
from .base import Backend, fill_short

if TYPE_CHECKING:   # type hints only: the index module imports the backends
    from ..feature_index import FeatureIndex
    from ..specs import BackendSpec

log = logging.getLogger("index")

MILVUS_FINGERPRINT = "cir.fingerprint"     # collection properties: the features it holds ...
MILVUS_COMPLETE = "cir.complete"           # ... and whether `python3 -m cir.index load` finished
_quiet = threading.local()


class _QuietFilter(logging.Filter):
    """pymilvus logs every failed RPC with a traceback; when we turn the failure into a clear error ourselves
    (unreachable server, health checks), that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


_QUIET_FILTER = _QuietFilter()


@contextlib.contextmanager
def _milvus_calls(uri: str) -> Iterator[None]:
    """Translate connection failures into BackendUnavailable and keep pymilvus quiet about them."""
    _quiet.on = True
    try:
        yield
    except IndexLoadError:
        raise
    except Exception as e:  # pymilvus raises MilvusException, grpc errors, OSError, ... for a dead server
        text = str(getattr(e, "message", "") or e)
        if _looks_unreachable(e):
            raise BackendUnavailable(f"Milvus at {mask_credentials(uri)} is unreachable: {text}; start it, or check "
                                     "the URI (--index-backend milvus:URI)") from None
        raise IndexLoadError(f"Milvus at {mask_credentials(uri)}: {text}") from None
    finally:
        _quiet.on = False


def _looks_unreachable(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        w in text for w in ("unavailable", "connect", "timeout", "deadline", "unimplemented", "closed",
                            "refused", "unreachable"))


def _milvus_uri(index: "FeatureIndex", target: str) -> str:
    """'' -> <index dir>/milvus.db (milvus-lite); a path -> that file; http(s)://... -> a server."""
    if is_remote(target):
        return target
    if not target:
        if index.path is None:
            raise ValueError("milvus with no URI stores the collection in <index dir>/milvus.db; this index "
                             "has no folder: give milvus:FILE.db or milvus:http://host:19530")
        return str(index.path / "milvus.db")
    return str(Path(target).expanduser().resolve())


def collection_name(index: "FeatureIndex") -> str:
    """Milvus collection of an index folder: letters, digits and '_' only, from the folder's name."""
    base = index.path.name if index.path is not None else "index"
    return "cir_" + re.sub(r"[^0-9A-Za-z_]", "_", base)[:200]


def milvus_client(uri: str, backend_spec: "BackendSpec") -> Any:
    """A MilvusClient, or BackendUnavailable within `timeout` seconds (default 3) if the server is down."""
    try:
        import pymilvus  # heavy and optional: only Milvus deployments install it
    except ImportError:
        raise IndexLoadError("the milvus backend needs pymilvus (and milvus-lite for local files): "
                             "pip install pymilvus milvus-lite") from None
    for name in ("pymilvus", "pymilvus.decorators", "milvus_lite.server_manager"):
        logging.getLogger(name).addFilter(_QUIET_FILTER)
    kw = {"timeout": backend_spec.get("timeout", 3.0)}
    token = backend_spec.get("token") or os.environ.get("MILVUS_TOKEN")
    if token and is_remote(uri):
        kw["token"] = token
    if backend_spec.get("db"):
        kw["db_name"] = backend_spec.get("db")
    if not is_remote(uri):
        if importlib.util.find_spec("milvus_lite") is None:   # pymilvus runs a local file through it
            raise IndexLoadError(f"{uri}: a local Milvus file needs milvus-lite: pip install milvus-lite")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        with _milvus_calls(uri):
            return pymilvus.MilvusClient(uri=uri, **kw)
    except BackendUnavailable:
        if not is_remote(uri) and _locked_by_another(Path(uri)):
            raise BackendUnavailable(
                f"the milvus-lite file {uri} is in use by another process (milvus-lite serves one process at a "
                "time): stop that process, or serve several workers from a Milvus server "
                "(milvus:http://host:19530)") from None
        raise


def _locked_by_another(db: Path) -> bool:
    """Whether another process holds milvus-lite's advisory lock on a database folder."""
    try:
        import fcntl  # POSIX only: elsewhere the lock is not looked at
        with open(db / "LOCK", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except (ImportError, OSError):
        return False



def _properties(client, name: str) -> dict:
    return dict(client.describe_collection(name).get("properties") or {})


def _row_count(client, name: str) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"]) if rows else 0


class MilvusBackend(Backend):
    """Milvus through pymilvus: milvus-lite (a local file, no server) or a Milvus server / cluster.

    The collection (one per index folder, see collection_name) is filled by `python3 -m cir.index load`; it
    holds row ids (primary key) and float32 vectors, and records the features' fingerprint, so an index
    folder re-extracted since is detected as stale. exclude / subset / facet filters become filter expressions.
    """

    kind = "milvus"
    targets = None   # a file or a server URI
    params = {"token": str, "db": str, "collection": str, "timeout": float, "ef": int}
    usage = "milvus[:FILE.db|http://host:19530]"

    def __init__(self, index: "FeatureIndex", backend_spec: "BackendSpec"):
        self.index, self.backend_spec = index, backend_spec
        self.uri = _milvus_uri(index, backend_spec.target)
        self.name = backend_spec.get("collection") or collection_name(index)
        self.label = backend_spec.public
        self.ef = backend_spec.get("ef", 128)
        self.client = milvus_client(self.uri, backend_spec)
        self._check_collection()

    @classmethod
    def open(cls, index: "FeatureIndex", backend_spec: "BackendSpec") -> "MilvusBackend":
        return cls(index, backend_spec)

    def _check_collection(self) -> None:
        """The collection exists, holds this folder's features and was loaded completely; else say the fix."""
        target = self.backend_spec.target
        fix = (f"run `python3 -m cir.index load --features {self.index.path or 'DIR'} "
               f"--to {mask_credentials(f'milvus:{target}' if target else 'milvus')}`")
        where = f"at {mask_credentials(self.uri)}"
        with _milvus_calls(self.uri):
            if not self.client.has_collection(self.name):
                raise IndexLoadError(f"Milvus {where} has no collection {self.name} for {self.index.path}; {fix}")
            props = _properties(self.client, self.name)
            if props.get(MILVUS_FINGERPRINT) != self.index.fingerprint:
                raise StaleIndexError(f"Milvus collection {self.name} {where} was loaded from other features "
                                      f"than {self.index.path} holds now (stale); {fix} to replace it")
            if props.get(MILVUS_COMPLETE) != "1":
                raise IndexLoadError(f"Milvus collection {self.name} {where} is only partly loaded; {fix} "
                                     "to finish it (it resumes)")
            self.client.load_collection(self.name)

    @staticmethod
    def _filter(exclude: np.ndarray | None, allowed: np.ndarray | None, n: int | None = None) -> str:
        """The filter expression of a query: its allowed rows (a subset or a facet filter) and excluded rows.
        A filter keeping most rows is written as the rows it leaves out (the shorter list). The collection
        holds ids and vectors only, so facets are ids here; attribute fields would keep the expression short
        on a large collection."""
        parts = []
        if allowed is not None and n is not None and len(allowed) > n // 2:
            left_out = np.setdiff1d(np.arange(n), allowed)
            if len(left_out):
                parts.append(f"id not in [{','.join(map(str, left_out.tolist()))}]")
        elif allowed is not None:
            parts.append(f"id in [{','.join(map(str, allowed.tolist()))}]")
        if exclude is not None and len(exclude):
            parts.append(f"id not in [{','.join(map(str, exclude.tolist()))}]")
        return " and ".join(parts)

    def search(self, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = q.shape[0], plan.k
        vals = torch.full((b, k), float("-inf"))
        ids = torch.zeros((b, k), dtype=torch.long)
        if k == 0 or b == 0:
            return vals, ids
        if k > 16384:
            raise ValueError(f"Milvus returns at most 16384 results per query, not {k}")
        # Queries sharing a filter (usually: all of them, or none excluded) go in one request.
        groups: dict[str, list[int]] = {}
        for i in range(b):
            groups.setdefault(self._filter(plan.exclude[i], plan.allowed_rows(i), plan.n), []).append(i)
        with _milvus_calls(self.uri):
            for expr, rows in groups.items():
                for lo in range(0, len(rows), 1024):
                    part = rows[lo:lo + 1024]
                    # a timeout: a server that stopped answering fails the request instead of hanging it
                    hits = self.client.search(self.name, data=q[part].numpy().tolist(), limit=k, filter=expr,
                                              output_fields=["id"], anns_field="vector", timeout=60,
                                              search_params={"metric_type": "IP", "params": {"ef": max(self.ef, k)}})
                    for i, found in zip(part, hits):
                        got = [(h["distance"], h["id"]) for h in found][:k]
                        if got:
                            vals[i, :len(got)] = torch.tensor([g[0] for g in got])
                            ids[i, :len(got)] = torch.tensor([g[1] for g in got])
        return fill_short(self.index.features, q, plan, vals, ids)

    def health(self) -> dict:
        try:
            with _milvus_calls(self.uri):
                self.client.get_collection_stats(self.name, timeout=2)
        except IndexLoadError as e:
            return self.report(False, str(e))
        return self.report(True, collection=self.name, uri=mask_credentials(self.uri))


def _insert_missing(client, name: str, index: "FeatureIndex", lo: int, hi: int, check: bool) -> int:
    """Insert rows [lo, hi) that the collection lacks (all of them unless `check`); returns how many."""
    ids = range(lo, hi)
    if check:
        have = {r["id"] for r in client.query(name, filter=f"id >= {lo} and id < {hi}", output_fields=["id"],
                                              consistency_level="Strong")}
        ids = [i for i in ids if i not in have]
    if not ids:
        return 0
    x = index.features[lo:hi].float().numpy()
    client.insert(name, [{"id": i, "vector": x[i - lo]} for i in ids])
    return len(ids)


def _prepare_collection(client: Any, name: str, index: "FeatureIndex", index_type: str, replace: bool) -> bool:
    """Drop the collection when asked or stale (other features), create it when absent. Returns whether a
    stale collection was replaced."""
    from pymilvus import DataType  # heavy and optional: only Milvus deployments install it
    replaced = False
    if client.has_collection(name):
        if replace:
            log.info("dropping Milvus collection %s (--replace)", name)
            client.drop_collection(name)
        elif _properties(client, name).get(MILVUS_FINGERPRINT) != index.fingerprint:
            log.warning("Milvus collection %s holds other features than %s (stale): replacing it", name, index.path)
            client.drop_collection(name)
            replaced = True
    if not client.has_collection(name):
        schema = client.create_schema(auto_id=False, description=f"features of {index.path}")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=index.dim)
        params = client.prepare_index_params()
        build = {"M": 32, "efConstruction": 200} if index_type == "HNSW" else {}
        params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build)
        client.create_collection(name, schema=schema)
        # sync=False: waiting for the build needs an RPC milvus-lite lacks; a server builds it in the
        # background, searching brute force meanwhile
        client.create_index(name, params, sync=False)
        client.alter_collection_properties(name, properties={MILVUS_FINGERPRINT: index.fingerprint,
                                                             MILVUS_COMPLETE: "0"})
    return replaced


def _finish(client: Any, name: str, index: "FeatureIndex", batch: int, uri: str) -> int:
    """Flush, check every row is there (filling gaps a non-prefix load left), mark the collection complete.
    Returns the rows the gap-filling inserted."""
    n, inserted = len(index), 0
    client.flush(name)
    count = _row_count(client, name)
    if count < n:   # not a prefix after all (another writer?): one pass filling every gap
        log.warning("collection %s has %d rows, expected %d: filling the gaps", name, count, n)
        for lo in range(0, n, batch):
            inserted += _insert_missing(client, name, index, lo, min(n, lo + batch), check=True)
        client.flush(name)
        count = _row_count(client, name)
    if count != n:
        raise IndexLoadError(f"Milvus collection {name} at {mask_credentials(uri)} has {count} rows, not {n} "
                             "(written to by something else?); rerun with --replace to load it afresh")
    client.alter_collection_properties(name, properties={MILVUS_COMPLETE: "1"})
    return inserted


def load_into_milvus(index: "FeatureIndex", to: str, batch: int = 10_000, index_type: str = "HNSW",
                     progress: bool = True, replace: bool = False, _stop_after_rows: int | None = None) -> dict:
    """Copy an index folder into a Milvus collection: idempotent (a rerun adds nothing) and resumable (after
    a kill it continues from the rows already there). Features changed since a previous load: the
    collection is replaced. Returns a summary. `_stop_after_rows` simulates a kill (tests only)."""
    backend_spec = parse_spec(to if to.startswith("milvus") else f"milvus:{to}", {"milvus": MilvusBackend})
    uri, t0 = _milvus_uri(index, backend_spec.target), time.perf_counter()
    name = backend_spec.get("collection") or collection_name(index)
    client = milvus_client(uri, backend_spec)
    n, index_type = len(index), index_type.upper()
    with _milvus_calls(uri):
        replaced = _prepare_collection(client, name, index, index_type, replace)
        present = _row_count(client, name)
        done = _properties(client, name).get(MILVUS_COMPLETE) == "1" and present == n
        # Batches go in in order, so the rows present are a prefix, the last batch perhaps partial: resume at
        # its start, inserting only the ids missing there. Milvus does not enforce unique primary keys,
        # so an id is never inserted twice.
        start = n if done else (min(present, n) // batch) * batch
        inserted = 0
        with tqdm(total=n, initial=start, desc=f"load {name}", unit="row", disable=not progress,
                  dynamic_ncols=True) as bar:
            for lo in range(start, n, batch):
                if _stop_after_rows is not None and lo >= _stop_after_rows:
                    raise KeyboardInterrupt(f"simulated kill after {lo} rows")
                hi = min(n, lo + batch)
                inserted += _insert_missing(client, name, index, lo, hi, check=lo < present)
                bar.update(hi - lo)
        if not done:
            inserted += _finish(client, name, index, batch, uri)
        client.load_collection(name)
    return {"uri": mask_credentials(uri), "collection": name, "rows": n, "inserted": inserted,
            "resumed_from": start if 0 < start < n else None, "already_loaded": done, "replaced_stale": replaced,
            "index_type": index_type, "fingerprint": index.fingerprint,
            "seconds": round(time.perf_counter() - t0, 2)}
