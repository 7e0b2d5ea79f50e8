"""Search backends at scale: exact fp16 scan, faiss HNSW, faiss IVF-PQ, milvus-lite.

    python3 benchmarks/bench_search.py --n 1000000 --dim 256 --queries 200 [--real features/catalog-all]
    python3 benchmarks/bench_search.py --n 100000 --skip-milvus-if-slow          # a quick run
    python3 benchmarks/bench_search.py --only-filtered --backends hnsw,ivfpq     # the filtered case alone

Synthetic data (written once as a real feature folder under .cache/bench-search/, float16): unit vectors
with the structure of real embeddings, not uniform noise (on which no ANN index works and which no encoder
produces): 2,000 clusters in a 32-d latent space (Gaussian, spread 0.5), randomly projected to `dim`, plus
isotropic noise (10% of the energy), L2-normalised. Queries are fresh draws from the same distribution (not
stored rows). The real catalogue (--real), if present, is queried with 200 of its own images, each excluded
from its own results (the demo's image -> image search).

For each backend: build (or load) time, index size, the memory a fresh process (a server worker) pays to
open it and answer 32 queries, split into private (RssAnon: copies, graphs, the names list) and mapped
(RssFile: file pages shared with the page cache and every other worker), p50/p99 latency of single queries
and of batches of 32 (after one warm-up pass over the queries), recall@10 against the exact scan. milvus-lite
serves from the benchmark's own process: its memory is that process's growth. The exact scan is
compared with the machine's memory-bandwidth floor, measured in the same run: the fastest of several numpy
sums over the same bytes. The filtered case (--filtered): a facet filter keeping 50%, 10% or 2% of the rows
(a seeded random mask: synthetic rows have no attributes), p50 / p99 and recall@10 against the exact filtered
ranking per backend. Prints markdown tables, the command, the load average, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc  # noqa: E402
import platform  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cir import index as index_mod  # noqa: E402
from cir.index import ann_recall, load_index, search  # noqa: E402
from cir.index.backends.faiss import MIN_SELECTOR_SHARE  # noqa: E402
from cir.index.search import SUBSET_SHARE  # noqa: E402
from cir.paths import REPO_DIR  # noqa: E402
from cir.utils import save_tensors, setup_logging, write_json  # noqa: E402

log = logging.getLogger("bench_search")
LATENT, CLUSTERS, SPREAD, NOISE = 32, 2000, 0.5, 0.1


# ----------------------------------------------------------------------------------------------- data

def _draw(rng: np.random.Generator, basis: np.ndarray, centres: np.ndarray, m: int) -> np.ndarray:
    z = centres[rng.integers(0, len(centres), m)] + SPREAD * rng.standard_normal((m, LATENT), dtype=np.float32)
    x = z @ basis
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = math.sqrt(1 - NOISE) * x + math.sqrt(NOISE) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(root: Path, n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """The synthetic feature folder (made once) and fresh queries from the same distribution."""
    rng = np.random.default_rng(seed)
    basis = (rng.standard_normal((LATENT, dim)) / math.sqrt(LATENT)).astype(np.float32)
    centres = rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    folder = root / f"synthetic-{n}x{dim}-s{seed}"
    if not (folder / "manifest.json").is_file():
        t0 = time.perf_counter()
        x = np.empty((n, dim), np.float16)
        data_rng = np.random.default_rng(seed + 1)
        for lo in range(0, n, 100_000):
            x[lo:lo + 100_000] = _draw(data_rng, basis, centres, min(100_000, n - lo))
        save_tensors(folder / "features.safetensors", {"features": torch.from_numpy(x)}, metadata={"format": "pt"})
        write_json(folder / "names.json", [f"s{i:08d}" for i in range(n)])
        write_json(folder / "manifest.json", {"encoder": "synthetic", "dim": dim, "count": n, "dtype": "float16",
                                              "normalized": True, "generator": {"latent": LATENT, "clusters": CLUSTERS,
                                                                                "spread": SPREAD, "noise": NOISE,
                                                                                "seed": seed}})
        log.info("wrote %s in %.1f s", folder, time.perf_counter() - t0)
    q = _draw(np.random.default_rng(seed + 2), basis, centres, n_queries)
    return folder, torch.from_numpy(q)


# ----------------------------------------------------------------------------------------------- measuring

OPEN_COST = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from index import load_index, search
def rss():
    kv = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssFile")))
    return {k: int(v.split()[0]) / 1024 for k, v in kv.items()}
b = rss()
t0 = time.perf_counter()
idx = load_index(sys.argv[2], sys.argv[3])
search(torch.nn.functional.normalize(torch.randn(32, idx.dim), dim=1), idx, 10)
a = rss()
print(json.dumps({"open_s": time.perf_counter() - t0, "rss_anon_mb": a["RssAnon"] - b["RssAnon"],
                  "rss_file_mb": a["RssFile"] - b["RssFile"]}))
"""


def open_cost(path: Path, spec: str) -> dict:
    """What a fresh process (a server worker) pays to open the index and answer 32 queries: private memory
    (RssAnon: copies, graphs) and mapped file pages (RssFile: shared with the page cache and other workers)."""
    import subprocess
    r = subprocess.run([sys.executable, "-c", OPEN_COST, str(REPO_DIR), str(path), spec], capture_output=True,
                       text=True, timeout=1800)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        log.warning("open cost of %s unknown: %s", spec, r.stderr.strip().splitlines()[-1:] or r.returncode)
        return {"open_s": float("nan"), "rss_anon_mb": float("nan"), "rss_file_mb": float("nan")}


def wait_for_milvus_lite_index(timeout: float) -> float:
    """milvus-lite builds vector indexes in a background thread after a flush, and its describe_index says
    "Finished" at once; until the build ends, searches scan everything and share the CPU with it. The
    benchmark (only) waits on milvus-lite's own drain point. Returns the seconds waited."""
    t0 = time.perf_counter()
    try:
        from milvus_lite.engine.collection import Collection
    except ImportError:   # another milvus-lite version: measure without waiting
        log.warning("cannot wait for milvus-lite's index build: timings may include brute-force searches")
        return 0.0
    import warnings
    with warnings.catch_warnings():   # isinstance() on every live object wakes deprecated torch aliases
        warnings.simplefilter("ignore")
        found = [obj for obj in gc.get_objects() if isinstance(obj, Collection)]
    for obj in found:
        obj._wait_for_bg(timeout=timeout)
    return time.perf_counter() - t0


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bandwidth_floor(idx, repeats: int = 7) -> dict:
    """The fastest numpy sum over the feature bytes (already in the page cache): reading them once cannot
    be faster, so no scan can be either."""
    mm = idx.mapped
    words = np.frombuffer(mm, dtype=np.int64, count=mm.nbytes // 8) if mm is not None else idx.features.numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        words.sum()
        best = min(best, time.perf_counter() - t0)
    return {"bytes": int(mm.nbytes if mm is not None else words.nbytes), "ms": best * 1000,
            "gb_per_s": (mm.nbytes if mm is not None else words.nbytes) / best / 1e9}


def latencies(idx, q: torch.Tensor, k: int, exclude: list | None, batch: int, rounds: int,
              filters: np.ndarray | None = None) -> list[float]:
    """Per-call latency (ms) of searching `batch` queries at a time, cycling through the queries."""
    out = []
    for r in range(rounds):
        lo = (r * batch) % len(q)
        rows = [(lo + j) % len(q) for j in range(batch)]
        ex = None if exclude is None else [exclude[i] for i in rows]
        t0 = time.perf_counter()
        search(q[rows], idx, k, exclude=ex, filters=filters)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), p)) if xs else float("nan")


def measure(name: str, idx, q: torch.Tensor, truth: torch.Tensor, exclude: list | None, args, **extra) -> dict:
    # Every query once first (the recall run): warms the caches and faults in mapped pages, as a
    # server's first minutes would; then the timed runs.
    found = torch.cat([search(q[lo:lo + 32], idx, 10, exclude=None if exclude is None else exclude[lo:lo + 32])[1]
                       for lo in range(0, len(q), 32)])
    single = latencies(idx, q, 10, exclude, 1, len(q))
    batched = latencies(idx, q, 10, exclude, 32, args.batch_rounds)
    row = {"backend": name, "spec": idx.backend.label, "p50_ms": pct(single, 50), "p99_ms": pct(single, 99),
           "b32_p50_ms": pct(batched, 50), "b32_p99_ms": pct(batched, 99),
           "recall@10": ann_recall(found, truth), **extra}
    log.info("%s: %s", name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    return row


def _drop(idx) -> None:
    idx.backend = None
    gc.collect()


def faiss_rows(path: Path, q, truth, exclude, args, kind: str, spec: str) -> dict:
    """Build (timed), then reopen from the saved file as a server would, and measure that."""
    for f in list(path.glob(f"faiss-{kind}-*")) + list(path.glob(f".faiss-{kind}-*")):
        if args.rebuild:
            f.unlink()
    t0 = time.perf_counter()
    built = load_index(path, spec)
    wall = time.perf_counter() - t0
    meta, reused = built.backend.meta, built.backend.reused
    _drop(built)
    del built
    idx = load_index(path, spec)   # from the saved file, as a server opens it
    size = sum(f.stat().st_size for f in path.glob(f"faiss-{kind}-*.index") if f.name == meta.get("file"))
    row = measure(f"faiss {kind}", idx, q, truth, exclude, args, build_s=meta["build_seconds"], open_wall_s=wall,
                  index_mb=size / 2**20, tuned_recall=meta["recall@10"], search_params=meta["search_params"],
                  reused=reused, **open_cost(path, spec))
    _drop(idx)
    return row


def milvus_row(path: Path, q, truth, exclude, args) -> dict | None:
    import importlib.util
    if not (importlib.util.find_spec("pymilvus") and importlib.util.find_spec("milvus_lite")):
        log.warning("milvus: pymilvus / milvus-lite not installed, skipped")
        return None
    idx = load_index(path)
    n = len(idx)
    if args.fresh_milvus and (path / "milvus.db").exists():
        shutil.rmtree(path / "milvus.db", ignore_errors=True)
    # Loading rate on a first slice, to skip a load that would take too long.
    t0 = time.perf_counter()
    probe = min(n, 20_000)
    if args.skip_milvus_if_slow and n > probe:
        try:
            index_mod.load_into_milvus(idx, "milvus", batch=10_000, progress=False, _stop_after_rows=probe)
        except KeyboardInterrupt:
            pass
        rate = probe / (time.perf_counter() - t0)
        if n / rate > args.milvus_max_s:
            log.warning("milvus-lite: loading %d rows would take ~%.0f s (> %d s): skipped", n, n / rate,
                        args.milvus_max_s)
            return {"backend": "milvus-lite", "skipped": f"load estimated at {n / rate:.0f} s"}
    before = rss_anon_mb()
    summary = index_mod.load_into_milvus(idx, "milvus", batch=10_000, progress=False)
    load_s = time.perf_counter() - t0
    mil = load_index(path, "milvus")
    index_s = wait_for_milvus_lite_index(args.milvus_max_s)
    size = sum(f.stat().st_size for f in (path / "milvus.db").rglob("*") if f.is_file())
    # milvus-lite serves from this process: its memory is this process's growth (the server's, for a server)
    row = measure("milvus-lite", mil, q, truth, exclude, args, build_s=load_s + index_s, load_s=load_s,
                  index_wait_s=index_s, index_mb=size / 2**20, rss_anon_mb=rss_anon_mb() - before,
                  already_loaded=summary.get("already_loaded"))
    return row


def bench(label: str, path: Path, q: torch.Tensor, exclude: list | None, args) -> dict:
    idx = load_index(path)
    log.info("%s: %d x %d, %.0f MB of fp16 features", label, len(idx), idx.dim, idx.features.numel() * 2 / 2**20)
    t0 = time.perf_counter()
    truth = torch.cat([search(q[lo:lo + 64], idx, 10, exclude=None if exclude is None else exclude[lo:lo + 64])[1]
                       for lo in range(0, len(q), 64)])
    log.info("ground truth in %.1f s", time.perf_counter() - t0)
    floor = bandwidth_floor(idx)
    rows = [measure("exact (fp16 scan, mmap)", idx, q, truth, exclude, args, build_s=0.0, index_mb=0.0,
                    **open_cost(path, "exact"))]
    rows[0]["floor_ratio"] = rows[0]["p50_ms"] / floor["ms"]
    _drop(idx)
    backends = [b.strip() for b in args.backends.split(",")]
    if "hnsw" in backends:
        rows.append(faiss_rows(path, q, truth, exclude, args, "hnsw", args.hnsw))
    if "ivfpq" in backends:
        rows.append(faiss_rows(path, q, truth, exclude, args, "ivfpq", args.ivfpq))
    if "milvus" in backends:
        row = milvus_row(path, q, truth, exclude, args)
        if row:
            rows.append(row)
    return {"dataset": label, "rows": len(load_index(path)), "dim": q.shape[1], "queries": len(q),
            "floor": floor, "results": rows, "loadavg_after": os.getloadavg()}


def filtered(path: Path, q: torch.Tensor, args) -> list[dict]:
    """The filtered case: a facet filter keeping a share of the rows (a random mask, independent of the
    vectors), per backend: p50 / p99 of single queries and recall@10 against the exact filtered ranking.
    The exact scan gathers the kept rows of a filter keeping at most SUBSET_SHARE; faiss ranks one keeping
    under MIN_SELECTOR_SHARE that way (exactly), wider ones with an id selector."""
    n = len(load_index(path))
    backends = [b.strip() for b in args.backends.split(",")]
    specs = [("exact", "exact")] + [(f"faiss {b}", getattr(args, b)) for b in ("hnsw", "ivfpq") if b in backends]
    rows = []
    for share in [1.0] + [float(s) for s in args.filtered.split(",") if s]:   # 1.0: no filter, for comparison
        mask = None if share == 1.0 else np.random.default_rng(7).random(n) < share
        exact = load_index(path)
        truth = torch.cat([search(q[lo:lo + 64], exact, 10, filters=mask)[1] for lo in range(0, len(q), 64)])
        for name, spec in specs:
            idx = load_index(path, spec)
            found = torch.cat([search(q[lo:lo + 32], idx, 10, filters=mask)[1] for lo in range(0, len(q), 32)])
            single = latencies(idx, q, 10, None, 1, len(q), filters=mask)
            exact_subset = share <= SUBSET_SHARE if name == "exact" else share < MIN_SELECTOR_SHARE
            route = ("no filter" if mask is None else "subset (exact over kept rows)" if exact_subset
                     else "mask" if name == "exact" else "id selector")
            rows.append({"share": share, "kept": n if mask is None else int(mask.sum()), "backend": name,
                         "spec": idx.backend.label, "route": route, "p50_ms": pct(single, 50),
                         "p99_ms": pct(single, 99), "recall@10": ann_recall(found, truth),
                         "kept_only": mask is None or bool(mask[found.numpy()].all())})
            log.info("filtered %s: %s", share, rows[-1])
            _drop(idx)
    return rows


def filtered_table(label: str, rows: list[dict]) -> str:
    lines = [f"**{label}, filtered** (a facet filter keeping a share of the rows; recall@10 against the exact "
             "filtered ranking):", "", "| rows kept | route | backend | p50 ms | p99 ms | recall@10 |",
             "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {100 * r['share']:g}% ({r['kept']:,}) | {r['route']} | {r['backend']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['recall@10']:.3f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- report

def table(res: dict) -> str:
    f = res["floor"]
    lines = [f"**{res['dataset']}**: {res['rows']:,} x {res['dim']}, {res['queries']} queries, top 10. "
             f"Memory-bandwidth floor (fastest numpy sum over the same {f['bytes'] / 2**20:.0f} MB): "
             f"{f['ms']:.1f} ms ({f['gb_per_s']:.1f} GB/s).", "",
             "| backend | build s | index MB | RAM MB: private / mapped | p50 ms | p99 ms | batch 32 p50 ms "
             "| batch 32 p99 ms | recall@10 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        if r.get("skipped"):
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        name = r["backend"] + (f" ({', '.join(f'{k}={v}' for k, v in r['search_params'].items())})"
                               if r.get("search_params") else "")
        if "floor_ratio" in r:
            name += f", {r['floor_ratio']:.2f}x floor"
        lines.append(f"| {name} | {r.get('build_s', 0):.1f} | {r.get('index_mb', 0):.0f} | "
                     f"{r.get('rss_anon_mb', float('nan')):.0f} / {r.get('rss_file_mb', float('nan')):.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['b32_p50_ms']:.1f} | {r['b32_p99_ms']:.1f} | {r['recall@10']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: none)")
    p.add_argument("--dim", type=int, default=256, help="their dimension (the lite encoder's: 256)")
    p.add_argument("--queries", type=int, default=200, help="queries per dataset")
    p.add_argument("--batch-rounds", type=int, default=20, help="batches of 32 timed per backend")
    p.add_argument("--real", default=str(REPO_DIR / "features" / "catalog-all"),
                   help="a real feature folder to benchmark too (skipped when missing; '' for none)")
    p.add_argument("--backends", default="hnsw,ivfpq,milvus", help="besides exact: any of hnsw, ivfpq, milvus")
    p.add_argument("--hnsw", default="faiss:hnsw", help="faiss HNSW spec (default: M=32, tuned efSearch)")
    p.add_argument("--ivfpq", default="faiss:ivfpq", help="faiss IVF-PQ spec (default: sqrt(N) lists, tuned)")
    p.add_argument("--rebuild", action="store_true", help="rebuild faiss indexes instead of reusing saved ones")
    p.add_argument("--fresh-milvus", action="store_true", help="load Milvus afresh instead of reusing the file")
    p.add_argument("--skip-milvus-if-slow", action="store_true",
                   help="estimate the milvus-lite load time on 20,000 rows; skip it past --milvus-max-s")
    p.add_argument("--milvus-max-s", type=int, default=900, help="longest milvus-lite load / index wait, seconds")
    p.add_argument("--cache", default=str(REPO_DIR / ".cache" / "bench-search"), help="where synthetic data goes")
    p.add_argument("--filtered", default="0.5,0.1,0.02,0.005",
                   help="shares of rows a facet filter keeps, for the filtered case ('' for none)")
    p.add_argument("--only-filtered", action="store_true",
                   help="the filtered case alone (the faiss indexes are built or reused all the same)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args()
    setup_logging(args.verbose)
    t_start = time.time()
    load_before = os.getloadavg()
    results: list[dict] = []
    filtered_results: list[tuple[str, list[dict]]] = []
    if args.n:
        t0 = time.perf_counter()
        folder, q = synthetic(Path(args.cache), args.n, args.dim, args.queries)
        log.info("synthetic data ready in %.1f s", time.perf_counter() - t0)
        if args.only_filtered:
            for kind in ("hnsw", "ivfpq"):
                if kind in args.backends:
                    _drop(load_index(folder, getattr(args, kind)))    # built once (or reused)
        else:
            results.append(bench("synthetic (clustered, fresh queries)", folder, q, None, args))
        if args.filtered:
            label = f"synthetic {args.n:,} x {args.dim}"
            filtered_results.append((label, filtered(folder, q, args)))
    real = Path(args.real) if args.real and not args.only_filtered else None
    if real and (real / "manifest.json").is_file():
        # A copy under the cache: saved ANN indexes and milvus.db do not land in features/.
        work = Path(args.cache) / f"real-{real.name}"
        if not (work / "manifest.json").is_file() or \
                (work / "features.safetensors").stat().st_size != (real / "features.safetensors").stat().st_size:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            for f in ("features.safetensors", "names.json", "manifest.json"):
                shutil.copy(real / f, work / f)
        idx = load_index(work)
        rows = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:args.queries]
        q = idx.features[rows].float()
        results.append(bench(f"real: {real.name} (image -> image, query excluded)", work, q,
                             [[int(r)] for r in rows], args))
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "cpu": _cpu(), "torch_threads": torch.get_num_threads(), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "seconds": round(time.time() - t_start, 1),
            "command": "python3 benchmarks/bench_search.py " + " ".join(sys.argv[1:])}
    for res in results:
        print(table(res))
        print()
    for label, rows in filtered_results:
        print(filtered_table(label, rows))
        print()
    print(f"Command: `{info['command']}`; {info['machine']} ({info['cpu']}), torch threads "
          f"{info['torch_threads']}; load average before {', '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.2f}' for x in info['loadavg_after'])}; {info['seconds']:.0f} s in all.")
    print(json.dumps({**info, "results": results, "filtered": dict(filtered_results)}, default=float))
    return 0


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
