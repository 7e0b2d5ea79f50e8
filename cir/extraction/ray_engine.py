"""Distributed feature extraction with Ray Data: the engine behind `extract_features.py --engine ray`.

    python3 -m pip install -r requirements-ray.txt
    python3 extract_features.py --engine ray --dataset catalog --split all              # a local Ray
    RAY_ADDRESS=<head-ip>:6379 python3 extract_features.py --engine ray ...           # a Ray cluster
    python3 extract_features.py --engine ray --ray-address auto ...                  # on a cluster node

Per index, the rows of the shards still to do become a Ray dataset of (row, path) items, then
  1. decode: stateless Ray tasks open each image and run the encoder's own `preprocess` (a bad image is
     marked with its error, never raised);
  2. encode: an actor pool (one actor per GPU, or per CPU worker) loads the encoder once per actor from
     its name and options and returns raw float32 features with their row ids;
  3. the driver gathers results by row and writes each shard to .partial/ as soon as all its rows are in,
     with the same writer as the local engine, then joins the shards into the same output files.
A killed run therefore resumes from its finished shards (under either engine), and the output equals the
local engine's: same names, order and skipped list, features equal within float16 rounding.

On a cluster, every node must read the image paths the driver lists (a shared filesystem) and have the
requirements installed; the repository's code and weights are shipped to the workers by Ray.
Ray is imported only here and only when used (import_ray), so the default engine does not need it; the job
(shards, final files, the folder's lock) is cir.extraction.job's, as for the local engine.

Limits: each index (e.g. each FashionIQ category) starts its own actor pool, so the encoder loads again per
index (~10 s for lite); decoded pixels travel as float32 through Ray's object store (600 kB per 224 px
image); a CPU actor's ONNX Runtime session uses all cores of its node (encoders.load takes no thread count).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cir import encoders
from cir.data import ImageRecord
from cir.encoders import Encoder
from cir.extraction.job import ExtractJob, ExtractResult, ImageFiles, open_job
from cir.paths import REPO_DIR

log = logging.getLogger("extract.ray")

INSTALL_HINT = "the ray engine needs Ray: python3 -m pip install -r requirements-ray.txt"
# Shipped to the workers of a remote cluster: the code and weights, not data, caches or git history.
SHIP_EXCLUDES = [".git/", ".cache/", "features/", "uploads/", "docs/", "tests/", "benchmarks/", ".pytest_cache/",
                 ".benchmarks/", "__pycache__/", "*.pyc", "*.tmp"]


class RayNotInstalledError(ImportError, ValueError):
    """Ray is missing. A ValueError too, so that command lines print it as one line (utils.run_cli)."""


def import_ray():
    """The `ray` module with Ray Data, or RayNotInstalledError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks it)
    except ImportError as e:
        raise RayNotInstalledError(f"{INSTALL_HINT} ({e})") from e
    return ray


# ----------------------------------------------------------------------------------------------- the encoder, by name

@dataclass(frozen=True)
class EncoderSpec:
    """How to load an encoder: what each actor receives instead of the (large, device-bound) encoder object."""

    name: str = "lite"
    preprocess: str | None = None
    heads: str | None = None
    runtime: str = "auto"
    target_ratio: float | None = None
    stage1: str | None = None           # a stage-1 checkpoint (its image side matters here)

    def load(self, device: str = "auto") -> Encoder:
        return encoders.load(self.name, device, preprocess=self.preprocess, heads=self.heads, runtime=self.runtime,
                             target_ratio=self.target_ratio, text=self.stage1)


# ----------------------------------------------------------------------------------------------- the two stages

def decode_batch(batch: dict[str, np.ndarray], preprocess) -> dict[str, np.ndarray]:
    """Ray task: (row, path, problem) -> (row, pixels [B,3,S,S] float32, error; "" when decoded).

    Decoding goes through extraction.job.ImageFiles, so pixels and error messages are exactly the local
    engine's. A failed image gets zero pixels (the column must stay one tensor) and its error; a row with a
    problem known from its listing fails with it unopened. Paths come as bytes (file names need not be UTF-8).
    """
    files = ImageFiles([Path(os.fsdecode(p)) for p in batch["path"]], preprocess, [str(p) for p in batch["problem"]])
    pixels, errors = [], []
    for i in range(len(files)):
        _, x, err = files[i]
        pixels.append(x)
        errors.append(err)
    shape = next((x.shape for x in pixels if x is not None), (3, preprocess.size, preprocess.size))
    out = np.stack([np.zeros(shape, np.float32) if x is None else x.numpy() for x in pixels])
    return {"row": np.asarray(batch["row"], np.int64), "pixels": out, "error": np.asarray(errors, dtype=object)}


class EncodeActor:
    """Ray actor: loads the encoder once, then turns decoded batches into raw float32 features."""

    def __init__(self, spec: EncoderSpec, device: str, expected: dict):
        logging.basicConfig(level=logging.WARNING)
        self.encoder = spec.load(device)
        got = self.encoder.describe()
        if got != expected:  # e.g. other weights on this node: features would not match the driver's index
            raise ValueError(f"the encoder loaded on a Ray worker differs from the driver's: {got} != {expected}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([e == "" for e in batch["error"]], bool)
        feats = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            feats[ok] = self.encoder.encode_pixels(pixels, raw=True).numpy()
        return {"row": batch["row"], "features": feats, "error": batch["error"]}


# ----------------------------------------------------------------------------------------------- Ray itself

@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a `with` block, yielding the ray module.

    address: a cluster ("auto", "host:port"); None means $RAY_ADDRESS, else a new local
    Ray with `num_cpus` (default: all cores). Ray already initialised in this process (a test, a notebook)
    is used as it is and left running; one this function started is shut down at the end.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    opts: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        # Workers import this repository's modules; Ray only adds the driver's cwd and script folder to
        # their path, which is not the repository when run from elsewhere.
        path = os.pathsep.join(p for p in (str(REPO_DIR), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 runtime_env={"env_vars": {"PYTHONPATH": path}}, **opts)
    else:
        # Workers elsewhere need this repository's modules and weights: Ray ships them (a few MB).
        ray.init(address=address, runtime_env={"working_dir": str(REPO_DIR), "excludes": SHIP_EXCLUDES}, **opts)
    log.info("Ray at %s: %s", address, ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class ActorPlan:
    """The encoder actors for a cluster: how many, and what each reserves."""

    actors: int
    gpu: bool
    cpus: float  # CPUs each actor reserves


def plan_actors(ray, device: str = "auto", workers: int | None = None, decode_cpus: float = 0.5) -> ActorPlan:
    """Size the encoder actor pool for the connected cluster.

    device auto: GPUs when the cluster has any. Default actors: one per GPU, else one per CPU but one (that
    one is left to decoding). CPU actors reserve one CPU each, less when more actors were asked for than
    that leaves room for: decode tasks must always find `decode_cpus` free, or the pipeline would stall.
    """
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise ValueError(f"--device {device} asks for GPUs but the Ray cluster has none: {res}")
    if workers is None:
        workers = gpus if use_gpu else max(1, int(cpus) - 1)
    if workers < 1:
        raise ValueError("--ray-workers must be at least 1")
    if use_gpu and workers > gpus:
        raise ValueError(f"--ray-workers {workers} needs {workers} GPUs but the Ray cluster has {gpus}")
    actor_cpus = min(1.0, (cpus - decode_cpus) / workers)
    if actor_cpus <= 0:
        raise ValueError(f"the Ray cluster's {cpus:g} CPUs leave none for {workers} encoder actors")
    return ActorPlan(workers, use_gpu, round(actor_cpus, 3))


# ----------------------------------------------------------------------------------------------- the job

def extract_index_ray(records: Sequence[ImageRecord], encoder: Encoder, spec: EncoderSpec,
                      out_dir: str | os.PathLike, *, batch_size: int = 64, shard_size: int = 2048,
                      overwrite: bool = False, info: dict | None = None, device: str = "auto",
                      workers: int | None = None, decode_cpus: float = 0.5, dtype: str = "float16",
                      _stop_after_shards: int | None = None) -> ExtractResult:
    """Like extract_features.extract_index, through Ray Data (see the module docstring); same output files,
    same lock (extraction.job.OutputLockedError when another run holds out_dir).

    `encoder` is the driver's copy (its description, preprocessing and dim; it encodes nothing); `spec`
    loads the same encoder in each actor. Needs a connected Ray (`ray_session`). `decode_cpus` is what a
    decode task reserves: a fraction, so decoding never waits for the encoders' cores and Ray does not fuse
    decoding into the actors. `_stop_after_shards` simulates a kill once that many shards exist (tests only).
    """
    ray = import_ray()
    desc = encoder.describe()
    job = open_job(records, desc, out_dir, batch_size=batch_size, shard_size=shard_size, overwrite=overwrite,
                   dtype=dtype)
    if isinstance(job, ExtractResult):
        return job
    with job:  # holds the folder's lock until the files are written or the run fails
        t0 = time.time()
        todo = [s for s in range(job.n_shards) if not job.shard_done(s)]
        resumed = job.n_shards - len(todo)
        done = resumed
        if _stop_after_shards is not None and done >= _stop_after_shards and todo:
            raise KeyboardInterrupt(f"simulated kill after {done} shards")
        if todo:
            plan = plan_actors(ray, device, workers, decode_cpus)
            left = sum(job.bounds(s)[1] - job.bounds(s)[0] for s in todo)
            log.info("%s: %d images in %d shards through Ray, %d encoder actor(s) on %s", job.out_dir.name, left,
                     len(todo), plan.actors, "GPU" if plan.gpu else f"CPU ({plan.cpus:g} each)")
            bar = tqdm(total=len(records), initial=len(records) - left, desc=f"extract {job.out_dir.name} (ray)",
                       unit="img", dynamic_ncols=True)
            try:
                for s in _run_shards(ray, job, todo, encoder, spec, desc, batch_size, plan, decode_cpus, bar):
                    done += 1
                    if _stop_after_shards is not None and done >= _stop_after_shards and done < job.n_shards:
                        raise KeyboardInterrupt(f"simulated kill after {done} shards")
            finally:
                bar.close()
        return job.finish(encoder.dim, info, t0, resumed)


def _run_shards(ray, job: ExtractJob, todo: list[int], encoder: Encoder, spec: EncoderSpec, desc: dict,
                batch_size: int, plan: ActorPlan, decode_cpus: float, bar: tqdm) -> Iterator[int]:
    """Run the pipeline over the rows of shards `todo`; write each shard once complete and yield its number."""
    # Paths travel as bytes: Arrow strings must be UTF-8, file names need not be.
    items = [{"row": i, "path": os.fsencode(job.records[i].path), "problem": job.records[i].problem}
             for s in todo for i in range(*job.bounds(s))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
    ds = ds.map_batches(decode_batch, fn_kwargs={"preprocess": encoder.preprocess}, batch_size=None,
                        num_cpus=decode_cpus)
    ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={"spec": spec, "device": "cuda" if plan.gpu else "cpu",
                                                            "expected": desc},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=plan.actors),
                        num_cpus=plan.cpus, num_gpus=1 if plan.gpu else 0)

    pending: dict[int, dict[int, tuple[np.ndarray, str]]] = {s: {} for s in todo}
    with _quiet_ray_data(ray):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for row, feat, err in zip(batch["row"].tolist(), batch["features"], batch["error"]):
                pending[row // job.shard_size][row] = (feat, str(err))
            bar.update(len(batch["row"]))
            for s in [s for s in pending if len(pending[s]) == job.bounds(s)[1] - job.bounds(s)[0]]:
                _write(job, s, pending.pop(s), encoder.dim)
                yield s
    if pending:  # Ray lost rows: never write an index with holes
        raise RuntimeError(f"the Ray pipeline returned no result for some rows of shards {sorted(pending)}")


@contextlib.contextmanager
def _quiet_ray_data(ray) -> Iterator[None]:
    """Without --verbose: no Ray Data progress bars (our tqdm bar counts images) nor per-run INFO lines."""
    ctx = ray.data.DataContext.get_current()
    data_log = logging.getLogger("ray.data")
    bars, level = ctx.enable_progress_bars, data_log.level
    if not log.isEnabledFor(logging.DEBUG):
        ctx.enable_progress_bars = False
        data_log.setLevel(logging.ERROR)  # ERROR, not WARNING: Ray warns that its bars are off
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        data_log.setLevel(level)


def _write(job: ExtractJob, s: int, rows: dict[int, tuple[np.ndarray, str]], dim: int) -> None:
    """One shard from its rows' results, in row order, exactly as the local engine lays it out."""
    feats, kept, skipped = [], [], []
    for row in sorted(rows):
        feat, err = rows[row]
        if err:
            skipped.append(job.skip(row, err))
        else:
            feats.append(feat)
            kept.append(job.names[row])
    x = [torch.from_numpy(np.stack(feats).astype(np.float32))] if feats else []
    job.write_shard(s, x, kept, skipped, dim)
