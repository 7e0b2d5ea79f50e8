"""One-shot feature extraction: encode a dataset's index images once into feature files.

    python extract_features.py --dataset catalog --split test --out features

writes, per index, a folder `features/<dataset>[-<category>]-<split>/` with
  features.safetensors  L2-normalised float16 features [N, dim] (tensor "features")
  names.json            the N image names, in row order
  manifest.json         encoder, dim, preprocessing, count, skipped images and why
Images are decoded by DataLoader workers and encoded in batches (GPU with autocast when present).
A corrupt or unreadable image is skipped, counted and listed, never fatal. Work is written in shards as it
goes: killed mid-run, the same command resumes and produces the same files as an uninterrupted run.
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
FORMAT_VERSION = 1


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


def extract_index(records: Sequence[data_utils.ImageRecord], encoder, out_dir: str | os.PathLike, *,
                  batch_size: int = 64, workers: int | None = None, shard_size: int = 2048,
                  overwrite: bool = False, info: dict | None = None,
                  _stop_after_shards: int | None = None) -> ExtractResult:
    """Encode `records` with `encoder` into `out_dir` (features.safetensors, names.json, manifest.json).

    Resumable: finished shards live in out_dir/.partial/ until the final files are written.
    `_stop_after_shards` simulates a kill (tests only).
    """
    out_dir = Path(out_dir)
    names = [r.name for r in records]
    if records and not any(r.path.is_file() for r in records):
        data_utils.check_images(records)  # none exists: a wrong --data-root, not a few bad files
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate image names in the index for {out_dir.name}")
    desc = encoder.describe()
    key = _job_key(desc, names, shard_size, batch_size)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("job_key") == key:
            log.info("%s is up to date (%d features); use --overwrite to redo it", out_dir, old["count"])
            return ExtractResult(out_dir, old["count"], old.get("skipped", []))

    partial = out_dir / ".partial"
    job_file = partial / "job.json"
    if partial.exists() and (overwrite or not job_file.exists() or json.loads(job_file.read_text()).get("job_key") != key):
        log.info("discarding partial work in %s (different job)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(job_file, {"job_key": key})

    workers = default_workers() if workers is None else workers
    n_shards = (len(records) + shard_size - 1) // shard_size
    t0 = time.time()
    resumed = 0
    bar = tqdm(total=len(records), desc=f"extract {out_dir.name}", unit="img", dynamic_ncols=True)
    for s in range(n_shards):
        shard_file = partial / f"shard-{s:05d}.safetensors"
        meta_file = partial / f"shard-{s:05d}.json"
        lo, hi = s * shard_size, min(len(records), (s + 1) * shard_size)
        if shard_file.exists() and meta_file.exists():
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
                feats.append(encoder.encode_pixels(pixels).half())
                kept.extend(names[lo + i] for i in idx)
            bar.update(len(idx) + len(bad))
        x = torch.cat(feats) if feats else torch.zeros(0, encoder.dim, dtype=torch.float16)
        # The meta file is written last: a shard counts as done only when both exist.
        save_tensors(shard_file, {"features": x})
        write_json(meta_file, {"names": kept, "skipped": skipped})
    bar.close()

    from safetensors.torch import load_file
    feats, kept, skipped = [], [], []
    for s in range(n_shards):
        feats.append(load_file(partial / f"shard-{s:05d}.safetensors")["features"])
        meta = json.loads((partial / f"shard-{s:05d}.json").read_text())
        kept += meta["names"]
        skipped += meta["skipped"]
    x = torch.cat(feats) if feats else torch.zeros(0, encoder.dim, dtype=torch.float16)
    save_tensors(out_dir / "features.safetensors", {"features": x}, metadata={"format": "pt"})
    write_json(out_dir / "names.json", kept)
    manifest = {**desc, **(info or {}), "count": len(kept), "skipped_count": len(skipped), "skipped": skipped,
                "dtype": "float16", "normalized": True, "format_version": FORMAT_VERSION, "job_key": key}
    write_json(manifest_path, manifest)  # last: its presence means the folder is complete
    shutil.rmtree(partial, ignore_errors=True)
    secs = time.time() - t0
    log.info("%s: %d features, %d skipped, %.1f s (%d shards resumed)", out_dir, len(kept), len(skipped), secs,
             resumed)
    return ExtractResult(out_dir, len(kept), skipped, secs, resumed)


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
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    import encoders
    root = data_utils.resolve_data_root(args.dataset, args.data_root)
    if args.dataset == "catalog" and args.split is None:
        args.split = "all"
    plans = list(plan_indexes(args.dataset, root, args.split, args.categories))
    encoder = encoders.load(args.encoder, args.device, preprocess=args.preprocess)
    for name, records, info in plans:
        res = extract_index(records, encoder, Path(args.out) / name, batch_size=args.batch_size,
                            workers=args.workers, shard_size=args.shard_size, overwrite=args.overwrite,
                            info={**info, "data_root": str(root)})
        print(json.dumps({"index": str(res.out_dir), "count": res.count, "skipped": len(res.skipped),
                          "seconds": round(res.seconds, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
