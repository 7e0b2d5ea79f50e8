"""The faiss backend: HNSW or IVF-PQ, built once, saved beside the features, rebuilt when they change.

    faiss                                  HNSW up to 2M rows, IVF-PQ above (see FaissBackend)
    faiss:hnsw?M=32&efSearch=128           ... with chosen parameters (efSearch/nprobe are tuned when not given)
    faiss:ivfpq?nlist=4096&m=32&nprobe=32&rerank=10

faiss itself is imported on first use (a heavy optional dependency: pip install faiss-cpu).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from cir.utils import content_key, write_json

from ..errors import IndexLoadError
from ..search import Plan, exact_search, make_plan, rescore
from .base import Backend, ann_recall, fill_short

if TYPE_CHECKING:   # type hints only: the index module imports the backends
    from ..feature_index import FeatureIndex
    from ..specs import BackendSpec

log = logging.getLogger("index")

HNSW_MAX_ROWS = 2_000_000        # auto: HNSW up to here, IVF-PQ above
ANN_SAMPLE_QUERIES = 200         # queries of the recall@10 check at build time
MAX_FILTERED_EF = 1024           # efSearch of a filtered HNSW search, at most
MIN_SELECTOR_SHARE = 0.01        # a filter keeping less of the rows is ranked exactly (bench_search.py --filtered)


def _sample_queries(features: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Queries for recall checks: random stored rows moved by noise to cosine ~0.8 with them, renormalised.

    Not the rows themselves (each would trivially find itself first), and off the data like a composed
    query (image + text) is.
    """
    g = torch.Generator().manual_seed(seed)
    n, d = features.shape
    rows = torch.randint(0, n, (min(count, n),), generator=g)
    x = features[rows].float()
    noise = torch.nn.functional.normalize(torch.randn(x.shape, generator=g), dim=1)
    return torch.nn.functional.normalize(x + 0.75 * noise, dim=1)


def _faiss():
    """The faiss module, imported on first use: a heavy optional dependency most deployments (exact) lack."""
    try:
        import faiss
    except ImportError:
        raise IndexLoadError("the faiss backend needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock (several server workers must not build the same index at once); no-op if the
    folder is read-only."""
    try:
        import fcntl  # POSIX only: elsewhere builds are not serialised
        f = open(path, "a+")
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class FaissBackend(Backend):
    """faiss ANN over the index, saved next to the features and rebuilt when they change.

    Kinds: `hnsw` (graph, float32 vectors in RAM: ~4 d bytes + 8 M bytes a row; fastest at high recall) and
    `ivfpq` (inverted lists of m-byte PQ codes: ~m bytes a row; candidates are rescored exactly from the
    mapped fp16 file, `rerank` x k of them). Auto: HNSW up to 2M rows; above, its RAM (4 GB of vectors at
    2M x 512, all copied into each process) and build time (hours on few cores) grow too large, so IVF-PQ.
    Search parameters (efSearch, nprobe) not given are tuned at build time: the smallest reaching the
    `recall` target (0.97) on 200 sample queries. Inner product on normalised vectors = cosine.
    `exclude`: k + most excluded are fetched, then the excluded dropped. `subset`: ranked exactly from the
    mapped features (subsets are small: an img_set). A facet filter keeping at least MIN_SELECTOR_SHARE of
    the rows becomes an IDSelectorBitmap in the search parameters: the graph or the inverted lists are walked
    as usual, wider by 1 / the share kept (efSearch, nprobe), and only allowed ids are collected; a more
    selective one (and any on the GPU index, which has no selectors) is ranked exactly over the kept rows.
    faiss-gpu is used for IVF-PQ when a GPU is present (faiss has no GPU HNSW).
    """

    kind = "faiss"
    targets = ("", "hnsw", "ivfpq")
    params = {"M": int, "efConstruction": int, "efSearch": int, "nlist": int, "m": int, "nbits": int,
              "nprobe": int, "rerank": int, "recall": float, "gpu": int}
    usage = "faiss[:hnsw|ivfpq][?param=value&...]"

    def __init__(self, index: "FeatureIndex", backend_spec: "BackendSpec", ann: Any, meta: dict):
        self.index, self.backend_spec, self.ann, self.meta = index, backend_spec, ann, meta
        self.ann_kind = meta["kind"]   # hnsw or ivfpq
        self.reused = False     # True when read from the saved file rather than built now
        self.search_params = {**meta.get("search_params", {}),
                              **{k: v for k, v in backend_spec.params if k in ("efSearch", "nprobe", "rerank")}}
        self.label = f"faiss:{self.ann_kind}?" + "&".join(f"{k}={v}" for k, v in {**meta["build_params"],
                                                                                 **self.search_params}.items())
        _faiss_params(ann, self.ann_kind, self.search_params)

    # -- building

    @staticmethod
    def resolve(n: int, d: int, backend_spec: "BackendSpec") -> tuple[str, dict]:
        """Kind and build parameters: the spec's, else defaults for this size."""
        ann_kind = backend_spec.target or ("hnsw" if n <= HNSW_MAX_ROWS else "ivfpq")
        if ann_kind == "hnsw":
            build = {"M": backend_spec.get("M", 32), "efConstruction": backend_spec.get("efConstruction", 128)}
        else:
            # 4 dimensions per byte-sized sub-quantizer: 64 bytes a row at d=256, 8x smaller than fp16;
            # d/8 loses too much for the exact rescoring of 10 x k candidates to recover (measured)
            m = backend_spec.get("m") or next(x for x in (d // 4, d // 2, d, 1) if x and d % x == 0)
            if d % m:
                raise ValueError(f"faiss ivfpq: m={m} must divide the dimension {d}")
            # ~sqrt(N) lists, at least 39 training rows each (faiss' minimum for k-means)
            nlist = backend_spec.get("nlist") or min(65536, _pow2(math.sqrt(max(n, 1))))
            build = {"nlist": max(1, min(nlist, n // 39 or 1)), "m": m, "nbits": backend_spec.get("nbits", 8)}
        return ann_kind, build

    @staticmethod
    def saved_files(index: "FeatureIndex", ann_kind: str, build: dict) -> tuple[Path, Path, Path]:
        """(index file, its meta JSON, the build lock) beside the features, named by kind and build parameters."""
        key = content_key(ann_kind, build)[:10]
        file = index.path / f"faiss-{ann_kind}-{key}.index"
        return file, file.with_suffix(".json"), index.path / f".faiss-{ann_kind}-{key}.lock"

    @classmethod
    def open(cls, index: "FeatureIndex", backend_spec: "BackendSpec", rebuild: bool = False) -> "FaissBackend":
        """The saved index if it was built from these features (and not `rebuild`), else build it (and save it
        when possible)."""
        faiss = _faiss()
        ann_kind, build = cls.resolve(len(index), index.dim, backend_spec)
        if index.path is None:
            return cls(index, backend_spec, *cls.build(index, ann_kind, build, backend_spec))
        file, meta_file, lock = cls.saved_files(index, ann_kind, build)
        with _file_lock(lock):
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() and not rebuild else None
            if meta and meta.get("fingerprint") == index.fingerprint and file.is_file():
                ann = cls._read(faiss, file, ann_kind, backend_spec)
                if ann is not None:
                    log.info("faiss %s index of %s reused (%s, built in %.1f s, recall@10 %.3f)", ann_kind,
                             index.path.name, file.name, meta.get("build_seconds", 0), meta.get("recall@10", -1))
                    backend = cls(index, backend_spec, ann, meta)
                    backend.reused = True
                    return backend
            elif meta:
                log.warning("faiss index %s is stale (built from other features than %s holds now): rebuilding",
                            file.name, index.path)
            ann, meta = cls.build(index, ann_kind, build, backend_spec)
            meta["file"] = file.name
            cls._save(faiss, ann, file, meta)
        return cls(index, backend_spec, ann, meta)

    @staticmethod
    def _read(faiss, file: Path, ann_kind: str, backend_spec: "BackendSpec"):
        """The saved index, its vectors memory-mapped where faiss can (HNSW: shared between processes through
        the page cache); None, to rebuild it, if the file is unreadable."""
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) if ann_kind == "hnsw" else None
        try:
            ann = faiss.read_index(str(file), flag) if flag else faiss.read_index(str(file))
        except RuntimeError as e:
            log.warning("%s is unreadable or corrupt (%s): rebuilding it", file, str(e).splitlines()[0][:200])
            return None
        return _to_gpu(faiss, ann, backend_spec) if ann_kind == "ivfpq" else ann

    @staticmethod
    def _save(faiss, ann, file: Path, meta: dict) -> None:
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        try:
            cpu = faiss.index_gpu_to_cpu(ann) if hasattr(faiss, "index_gpu_to_cpu") and _on_gpu(ann) else ann
            faiss.write_index(cpu, str(tmp))
            os.replace(tmp, file)
            write_json(file.with_suffix(".json"), meta)   # last: its fingerprint says the index is complete
            log.info("saved %s (%.1f MB)", file, file.stat().st_size / 2**20)
        except (OSError, RuntimeError) as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("could not save the faiss index next to the features (%s); it lives in memory only", e)

    @classmethod
    def build(cls, index: "FeatureIndex", ann_kind: str, build: dict, backend_spec: "BackendSpec") -> tuple[Any, dict]:
        faiss = _faiss()
        n, d = len(index), index.dim
        if n == 0:
            raise IndexLoadError(f"{index.path}: cannot build a faiss index of 0 rows")
        t0 = time.perf_counter()
        feats = index.features
        if ann_kind == "hnsw":
            ann = faiss.IndexHNSWFlat(d, build["M"], faiss.METRIC_INNER_PRODUCT)
            ann.hnsw.efConstruction = build["efConstruction"]
        else:
            if n < 2 ** build["nbits"]:
                raise ValueError(f"faiss ivfpq with nbits={build['nbits']} needs at least {2 ** build['nbits']} "
                                 f"rows; this index has {n}: use faiss:hnsw or exact")
            ann = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, build["nlist"], build["m"], build["nbits"],
                                   faiss.METRIC_INNER_PRODUCT)
            ann = _to_gpu(faiss, ann, backend_spec)
            # k-means needs ~40-256 rows per list; more only costs time
            ntrain = min(n, max(64 * build["nlist"], 2 ** build["nbits"] * 64))
            rows = np.sort(np.random.default_rng(0).choice(n, ntrain, replace=False))
            ann.train(np.ascontiguousarray(feats[torch.from_numpy(rows)].float().numpy()))
        step = 65536
        for lo in range(0, n, step):
            ann.add(np.ascontiguousarray(feats[lo:lo + step].float().numpy()))
            if n > step:
                log.info("faiss %s: added %d / %d rows (%.0f s)", ann_kind, min(n, lo + step), n,
                         time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        meta = {"kind": ann_kind, "build_params": build, "fingerprint": index.fingerprint, "rows": n, "dim": d,
                "build_seconds": round(seconds, 2), "faiss_version": faiss.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        meta.update(cls.tune(index, ann_kind, ann, build, backend_spec))
        log.info("faiss %s index of %d x %d built in %.1f s; recall@10 vs exact %.3f with %s", ann_kind, n, d, seconds,
                 meta["recall@10"], meta["search_params"])
        return ann, meta

    @classmethod
    def tune(cls, index: "FeatureIndex", ann_kind: str, ann: Any, build: dict, backend_spec: "BackendSpec") -> dict:
        """recall@10 against exact on sample queries; the smallest efSearch / nprobe reaching the target."""
        q = _sample_queries(index.features, ANN_SAMPLE_QUERIES)
        k = min(10, len(index))
        truth = exact_search(index.features, q, make_plan(len(q), len(index), k))[1]
        # 0.97 on these samples leaves a margin for the 0.95 goal on queries unlike them
        target = backend_spec.get("recall", 0.97)
        name = "efSearch" if ann_kind == "hnsw" else "nprobe"
        if backend_spec.get(name) is not None:
            ladder = [backend_spec.get(name)]
        elif ann_kind == "hnsw":
            ladder = [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]   # below 32 saves ~0.1 ms
        else:
            ladder = [p for p in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
                      if p <= build["nlist"]] or [build["nlist"]]
        # IVF-PQ: when even the widest probe misses the target, PQ's ranking is the limit: rescore more.
        reranks = [backend_spec.get("rerank")] if ann_kind != "ivfpq" or backend_spec.get("rerank") else [10, 40]
        tried: list[dict] = []
        for rerank in reranks:
            for value in ladder:
                params = {name: value, **({"rerank": rerank} if ann_kind == "ivfpq" else {})}
                _faiss_params(ann, ann_kind, params)
                got = _faiss_search(ann, ann_kind, index.features, q, make_plan(len(q), len(index), k), params)[1]
                tried.append({**params, "recall@10": round(ann_recall(got, truth), 4)})
                if tried[-1]["recall@10"] >= target:
                    break
            if tried[-1]["recall@10"] >= target:
                break
        best = tried[-1]
        params = {p: v for p, v in best.items() if p != "recall@10"}
        if best["recall@10"] < target:
            log.warning("faiss %s: recall@10 %.3f < target %.2f even with %s; consider exact or other "
                        "parameters", ann_kind, best["recall@10"], target, params)
        return {"recall@10": best["recall@10"], "recall_target": target, "search_params": params,
                "tuning": tried, "sample_queries": len(q)}

    # -- searching

    def search(self, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        if plan.k == 0 or q.shape[0] == 0 or plan.subset is not None or _selector_unfit(self.ann, plan):
            return exact_search(self.index.features, q, plan)
        vals, ids = _faiss_search(self.ann, self.ann_kind, self.index.features, q, plan, self.search_params)
        return fill_short(self.index.features, q, plan, vals, ids)

    def health(self) -> dict:
        return self.report(True, rows=len(self.index), **{"recall@10": self.meta.get("recall@10")},
                           build_seconds=self.meta.get("build_seconds"))


def _faiss_params(ann: Any, ann_kind: str, params: dict) -> None:
    """Set the search-time parameters (efSearch / nprobe) on a faiss index."""
    if ann_kind == "hnsw":
        ann.hnsw.efSearch = int(params.get("efSearch", 64))
    elif _on_gpu(ann):
        ann.nprobe = int(params.get("nprobe", 16))
    else:
        _faiss().extract_index_ivf(ann).nprobe = int(params.get("nprobe", 16))


def _faiss_search(ann: Any, ann_kind: str, features: torch.Tensor, q: torch.Tensor, plan: Plan,
                  params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """ANN candidates (k + most excluded; IVF-PQ: x rerank, rescored exactly from the fp16 rows), excluded
    rows dropped. Rows the index could not fill are scored -inf."""
    k = plan.k
    want = min(plan.n, k + plan.most_excluded)
    if ann_kind == "ivfpq":
        want = min(plan.n, want * int(params.get("rerank", 10)))
    dist, found = _masked_search(ann, ann_kind, np.ascontiguousarray(q.numpy()), want, plan.mask, params)
    ids = torch.from_numpy(found).long()
    vals = torch.from_numpy(dist).float()
    drop = ids < 0
    for i, e in enumerate(plan.exclude):
        if e is not None:
            drop[i] |= torch.from_numpy(np.isin(found[i], e))
    vals[drop] = float("-inf")
    if ann_kind == "ivfpq":   # PQ scores are approximate: rescore the candidates exactly
        return rescore(features, q, ids.clamp(min=0), vals, min(k, want))
    top = torch.topk(vals, min(k, want), dim=1)
    return top.values, torch.gather(ids, 1, top.indices)


def _selector_unfit(ann: Any, plan: Plan) -> bool:
    """Whether a filter is better ranked exactly: the GPU index has no selectors, and a filter keeping under
    MIN_SELECTOR_SHARE of the rows would starve the walk of allowed ones (the exact scan then gathers them)."""
    if plan.mask is None:
        return False
    return _on_gpu(ann) or any(m is not None and m.mean() < MIN_SELECTOR_SHARE for m in plan.mask)


def _masked_search(ann: Any, ann_kind: str, x: np.ndarray, want: int, masks: list[np.ndarray | None] | None,
                   params: dict) -> tuple[np.ndarray, np.ndarray]:
    """ann.search, each group of queries sharing a filter mask with an IDSelectorBitmap of it (faiss then
    collects only allowed ids; the search parameters object replaces the index's, so efSearch / nprobe are
    set on it too)."""
    if masks is None:
        return ann.search(x, want)
    faiss = _faiss()
    dist = np.full((len(x), want), -np.inf, dtype=np.float32)
    found = np.full((len(x), want), -1, dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(masks):
        groups.setdefault(id(m), []).append(i)
    for rows in groups.values():
        mask = masks[rows[0]]
        if mask is None:
            dist[rows], found[rows] = ann.search(x[rows], want)
            continue
        bits = np.packbits(mask, bitorder="little")     # kept alive until the search returns
        # A filter keeping a share s of the rows leaves ~s of the candidates a walk visits: widen it by 1/s
        # (capped) so that about as many allowed ones are found as without a filter.
        widen = 1 / max(float(mask.mean()), MIN_SELECTOR_SHARE)
        if ann_kind == "hnsw":
            sp = faiss.SearchParametersHNSW()
            sp.efSearch = min(MAX_FILTERED_EF, math.ceil(int(params.get("efSearch", 64)) * widen))
        else:
            sp = faiss.SearchParametersIVF()
            sp.nprobe = math.ceil(int(params.get("nprobe", 16)) * widen)   # faiss caps it at nlist
        sp.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        dist[rows], found[rows] = ann.search(x[rows], want, params=sp)
    return dist, found


def _on_gpu(ann) -> bool:
    return "Gpu" in type(ann).__name__


def _to_gpu(faiss, ann, backend_spec: "BackendSpec"):
    """IVF-PQ on the GPU when faiss-gpu sees one (gpu=0 in the spec keeps it on the CPU)."""
    if backend_spec.get("gpu", 1) and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        log.info("faiss: building on the GPU")
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, ann)
    return ann
