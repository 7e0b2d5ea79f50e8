"""One-shot feature extraction: encode a dataset's index images once into feature files.

    python extract_features.py --dataset catalog --split test --out features

writes, per index, a folder `features/<dataset>[-<category>]-<split>/` with
  features.safetensors  L2-normalised float16 features [N, dim] (tensor "features") and the float32 norm of
                        each raw feature [N] (tensor "norms"): rows * norms = the encoder's raw output, what
                        the Combiner and sum fusion take (CLIP4Cir feeds raw CLIP features, ranks normalised)
  names.json            the N image names, in row order
  manifest.json         encoder, dim, preprocessing, count, skipped images and why
Images are decoded by DataLoader workers and encoded in batches (GPU with autocast when present).
A corrupt or unreadable image is skipped, counted and listed, never fatal. Work is written in shards as it
goes: killed mid-run, the same command resumes and produces the same files as an uninterrupted run.

`--engine ray` runs the same job through Ray Data (ray_extract.py; `pip install -r requirements-ray.txt`),
locally or on a cluster (`--ray-address` or $RAY_ADDRESS), and writes the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

import data_utils
from utils import run_cli, save_tensors, setup_logging, write_json

log = logging.getLogger("extract")
FORMAT_VERSION = 2   # 2: raw-feature norms stored beside the normalised rows


# ----------------------------------------------------------------------------------------------- decoding

class ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one image per item; a failure is returned, not raised."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as im:
                im.load()  # decode now, so truncated files fail here and not later
                return i, self.preprocess(im), ""
        except Exception as e:  # any decoder error means "skip this image", never "stop the run"
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, x, err in items if x is None]
    idx = [i for i, _ in good]
    pixels = torch.stack([x for _, x in good]) if good else None
    return idx, pixels, bad


def _worker_init(_):
    torch.set_num_threads(1)  # decoding workers must not fight the encoder for cores


def iter_batches(paths: Sequence[Path], preprocess: Callable, batch_size: int, workers: int,
                 pin_memory: bool = False) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Yield (indices of decoded images, their pixels, [(index, error)]) in order, batch by batch."""
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, preprocess), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, worker_init_fn=_worker_init if workers else None, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- the job

@dataclass
class ExtractResult:
    out_dir: Path
    count: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0


def _job_key(encoder_desc: dict, names: Sequence[str], shard_size: int, batch_size: int) -> str:
    """Identifies the work of a run: a resume is only valid for the very same inputs and settings."""
    h = hashlib.sha256(json.dumps([encoder_desc, shard_size, batch_size, FORMAT_VERSION], sort_keys=True).encode())
    for n in names:
        h.update(n.encode() + b"\0")
    return h.hexdigest()


@dataclass
class ExtractJob:
    """One index being extracted: its rows, their shards under .partial/, and how the final files are written.

    Shared by the engines (local here, Ray in ray_extract.py), so both write the same shard and output
    files, and a run killed under one engine resumes under either.
    """
    out_dir: Path
    records: Sequence[data_utils.ImageRecord]
    names: list[str]
    desc: dict
    key: str
    shard_size: int

    @property
    def partial(self) -> Path:
        return self.out_dir / ".partial"

    @property
    def n_shards(self) -> int:
        return (len(self.records) + self.shard_size - 1) // self.shard_size

    def bounds(self, s: int) -> tuple[int, int]:
        """Row range [lo, hi) of shard `s`."""
        return s * self.shard_size, min(len(self.records), (s + 1) * self.shard_size)

    def shard_files(self, s: int) -> tuple[Path, Path]:
        return self.partial / f"shard-{s:05d}.safetensors", self.partial / f"shard-{s:05d}.json"

    def shard_done(self, s: int) -> bool:
        return all(f.exists() for f in self.shard_files(s))

    def write_shard(self, s: int, feats: list[torch.Tensor], kept: list[str], skipped: list[dict],
                    dim: int) -> None:
        """Store one finished shard: the kept rows' raw features (float32, row order) as float16 unit rows
        plus float32 norms, their names, the skips."""
        shard_file, meta_file = self.shard_files(s)
        rows, norms = split_raw(torch.cat(feats) if feats else torch.zeros(0, dim))
        # The meta file is written last: a shard counts as done only when both exist.
        save_tensors(shard_file, {"features": rows, "norms": norms})
        write_json(meta_file, {"names": kept, "skipped": skipped})

    def finish(self, dim: int, info: dict | None, t0: float, resumed: int) -> ExtractResult:
        """Join the shards into features.safetensors, names.json, manifest.json (last), drop .partial/."""
        from safetensors.torch import load_file
        feats, norms, kept, skipped = [], [], [], []
        for s in range(self.n_shards):
            shard_file, meta_file = self.shard_files(s)
            shard = load_file(shard_file)
            feats.append(shard["features"])
            norms.append(shard["norms"])
            meta = json.loads(meta_file.read_text())
            kept += meta["names"]
            skipped += meta["skipped"]
        x = torch.cat(feats) if feats else torch.zeros(0, dim, dtype=torch.float16)
        n = torch.cat(norms) if norms else torch.zeros(0)
        save_tensors(self.out_dir / "features.safetensors", {"features": x, "norms": n}, metadata={"format": "pt"})
        write_json(self.out_dir / "names.json", kept)
        manifest = {**self.desc, **(info or {}), "count": len(kept), "skipped_count": len(skipped),
                    "skipped": skipped, "dtype": "float16", "normalized": True, "norms": True,
                    "format_version": FORMAT_VERSION, "job_key": self.key}
        write_json(self.out_dir / "manifest.json", manifest)  # last: its presence means the folder is complete
        shutil.rmtree(self.partial, ignore_errors=True)
        secs = time.time() - t0
        log.info("%s: %d features, %d skipped, %.1f s (%d shards resumed)", self.out_dir, len(kept), len(skipped),
                 secs, resumed)
        return ExtractResult(self.out_dir, len(kept), skipped, secs, resumed)


def split_raw(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features [B,d] -> (float16 unit rows, float32 norms [B]): what a feature file stores."""
    raw = raw.float()
    norms = raw.norm(dim=1)
    return (raw / norms.clamp_min(1e-12).unsqueeze(1)).half(), norms


def open_job(records: Sequence[data_utils.ImageRecord], encoder_desc: dict, out_dir: str | os.PathLike, *,
             batch_size: int, shard_size: int, overwrite: bool) -> ExtractJob | ExtractResult:
    """Check the inputs and prepare out_dir/.partial/ for a run.

    Returns the finished ExtractResult instead when out_dir already holds this very job's output.
    Partial work of another job (other inputs or settings) is discarded; that of this job is kept to resume.
    """
    out_dir = Path(out_dir)
    names = [r.name for r in records]
    if records and not any(r.path.is_file() for r in records):
        data_utils.check_images(records)  # none exists: a wrong --data-root, not a few bad files
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate image names in the index for {out_dir.name}")
    key = _job_key(encoder_desc, names, shard_size, batch_size)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("job_key") == key:
            log.info("%s is up to date (%d features); use --overwrite to redo it", out_dir, old["count"])
            return ExtractResult(out_dir, old["count"], old.get("skipped", []))

    job = ExtractJob(out_dir, records, names, encoder_desc, key, shard_size)
    partial = job.partial
    job_file = partial / "job.json"
    if partial.exists() and (overwrite or not job_file.exists() or json.loads(job_file.read_text()).get("job_key") != key):
        log.info("discarding partial work in %s (different job)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(job_file, {"job_key": key})
    return job


def extract_index(records: Sequence[data_utils.ImageRecord], encoder, out_dir: str | os.PathLike, *,
                  batch_size: int = 64, workers: int | None = None, shard_size: int = 2048,
                  overwrite: bool = False, info: dict | None = None,
                  _stop_after_shards: int | None = None) -> ExtractResult:
    """Encode `records` with `encoder` into `out_dir` (features.safetensors, names.json, manifest.json).

    Resumable: finished shards live in out_dir/.partial/ until the final files are written.
    `_stop_after_shards` simulates a kill (tests only).
    """
    job = open_job(records, encoder.describe(), out_dir, batch_size=batch_size, shard_size=shard_size,
                   overwrite=overwrite)
    if isinstance(job, ExtractResult):
        return job
    out_dir, names = job.out_dir, job.names

    workers = default_workers() if workers is None else workers
    t0 = time.time()
    resumed = 0
    bar = tqdm(total=len(records), desc=f"extract {out_dir.name}", unit="img", dynamic_ncols=True)
    for s in range(job.n_shards):
        lo, hi = job.bounds(s)
        if job.shard_done(s):
            resumed += 1
            bar.update(hi - lo)
            continue
        if _stop_after_shards is not None and s >= _stop_after_shards:
            bar.close()
            raise KeyboardInterrupt(f"simulated kill after {s} shards")
        feats, kept, skipped = [], [], []
        paths = [r.path for r in records[lo:hi]]
        pin = encoder.device.type == "cuda"
        for idx, pixels, bad in iter_batches(paths, encoder.preprocess, batch_size, workers, pin):
            for i, err in bad:
                log.warning("skipped %s: %s", names[lo + i], err)
                skipped.append({"name": names[lo + i], "path": str(paths[i]), "error": err})
            if pixels is not None:
                feats.append(encoder.encode_pixels(pixels, raw=True))
                kept.extend(names[lo + i] for i in idx)
            bar.update(len(idx) + len(bad))
        job.write_shard(s, feats, kept, skipped, encoder.dim)
    bar.close()
    return job.finish(encoder.dim, info, t0, resumed)


def ensure_index(records: Sequence[data_utils.ImageRecord], encoder, out_dir: str | os.PathLike, **kw):
    """The index of `records` under `out_dir`: loaded when up to date, else extracted there first."""
    from index import load_index
    extract_index(records, encoder, out_dir, **kw)
    return load_index(out_dir)


def index_name(dataset: str, split: str | None, category: str | None = None, root: Path | None = None) -> str:
    """Folder name of an index: catalog-test, fashioniq-dress-val, cirr-val, folder-<dirname>."""
    if dataset == "folder":
        return f"folder-{root.name if root else 'images'}"
    return "-".join(p for p in (dataset, category, split) if p)


def plan_indexes(dataset: str, root: Path, split: str | None, categories: Sequence[str] | None):
    """(index name, records, info) for each index a command asks for; FashionIQ has one per category."""
    if dataset == "fashioniq":
        cats = list(categories) if categories else data_utils.fashioniq_categories(root)
        for c in cats:
            yield (index_name(dataset, split, c), data_utils.list_images(dataset, root, split, [c]),
                   {"dataset": dataset, "split": split, "category": c})
    else:
        yield (index_name(dataset, split, None, root), data_utils.list_images(dataset, root, split, categories),
               {"dataset": dataset, "split": split})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=data_utils.DATASETS, default="catalog",
                   help="dataset layout: the catalogue (styles.csv + images/), FashionIQ, CIRR, or any image folder")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: $CIR_DATA_ROOT or ../shared/data, descending into the "
                        "dataset's usual subfolder)")
    p.add_argument("--split", default=None,
                   help="split to index (catalog: train/val/test/all; fashioniq: train/val/test; cirr: train/val/test1); "
                        "ignored for folder")
    p.add_argument("--categories", nargs="*", default=None,
                   help="FashionIQ categories (default: every category found); one index per category")
    p.add_argument("--encoder", default="lite", help="encoder name: lite, hf:<id or dir>, openai:<model>")
    p.add_argument("--preprocess", default=None, choices=["targetpad", "squarepad", "resize"],
                   help="override the encoder's preprocessing")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--workers", type=int, default=None, help="DataLoader decoding workers (default: min(4, cores))")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--shard-size", type=int, default=2048,
                   help="images per resumable shard (a killed run redoes at most one shard)")
    p.add_argument("--out", default="features", help="features root; each index gets a subfolder")
    p.add_argument("--overwrite", action="store_true", help="redo the index even if it is up to date")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process and its DataLoader workers (default); ray: Ray Data, decoding in Ray "
                        "tasks and encoding in one actor per GPU or CPU worker, on a local Ray or a cluster "
                        "(needs `pip install -r requirements-ray.txt`); same output files")
    p.add_argument("--ray-address", default=None,
                   help="ray engine: the cluster to use (auto = the one running on this node, or head-ip:6379); "
                        "default $RAY_ADDRESS, else a local Ray started with this machine's cores")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="ray engine: encoder actors (default: one per GPU of the cluster, else one per CPU but one)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    ray_extract = None
    if args.engine == "ray":
        import ray_extract  # lazily: the local engine does not need Ray
        ray_extract.import_ray()  # fail now, with the install line, not after loading the encoder
    import encoders
    root = data_utils.resolve_data_root(args.dataset, args.data_root)
    if args.dataset == "catalog" and args.split is None:
        args.split = "all"
    plans = list(plan_indexes(args.dataset, root, args.split, args.categories))
    if ray_extract is None:
        encoder = encoders.load(args.encoder, args.device, preprocess=args.preprocess)
        for name, records, info in plans:
            res = extract_index(records, encoder, Path(args.out) / name, batch_size=args.batch_size,
                                workers=args.workers, shard_size=args.shard_size, overwrite=args.overwrite,
                                info={**info, "data_root": str(root)})
            _print_result(res)
        return 0
    # The driver's copy only describes the encoder and preprocesses nothing: CPU, so it holds no GPU
    # that an actor needs. The actors load the same encoder from its name and options.
    spec = ray_extract.EncoderSpec(args.encoder, args.preprocess)
    encoder = spec.load("cpu")
    with ray_extract.ray_session(args.ray_address):
        for name, records, info in plans:
            res = ray_extract.extract_index_ray(records, encoder, spec, Path(args.out) / name,
                                                batch_size=args.batch_size, shard_size=args.shard_size,
                                                overwrite=args.overwrite, info={**info, "data_root": str(root)},
                                                device=args.device, workers=args.ray_workers)
            _print_result(res)
    return 0


def _print_result(res: ExtractResult) -> None:
    print(json.dumps({"index": str(res.out_dir), "count": res.count, "skipped": len(res.skipped),
                      "seconds": round(res.seconds, 2)}))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
