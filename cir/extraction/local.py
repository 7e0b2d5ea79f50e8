"""The local extraction engine and the public API: `extract_index` encodes a dataset's index images
once into a feature folder (DataLoader workers decode, one encoder encodes), `ensure_index` loads it when up
to date and extracts it first otherwise; `index_name` and `plan_indexes` name and list the indexes a
command asks for. `IndexStore` and `open_dataset_index` are the one way the commands, training and the demo
open a dataset's index. The folder's format and the job (files, shards, lock) are extraction.job's."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from cir.data import ImageRecord, fashioniq_categories, list_images, resolve_data_root
from cir.encoders import Encoder
from cir.extraction.job import ExtractJob, ExtractResult, default_workers, iter_batches, open_job
from cir.index import FeatureIndex, IndexLoadError, load_index
from cir.index.files import MANIFEST_FILE

log = logging.getLogger("extract")


def extract_index(records: Sequence[ImageRecord], encoder: Encoder, out_dir: str | os.PathLike,
                  *, batch_size: int = 64, workers: int | None = None, shard_size: int = 2048,
                  overwrite: bool = False, redo: bool = False, info: dict | None = None,
                  dtype: str = "float16",
                  _stop_after_shards: int | None = None) -> ExtractResult:
    """Encode `records` with `encoder` into `out_dir` (features.safetensors, names.json, manifest.json), the
    unit rows stored in `dtype` (float16 or float32).

    Resumable: finished shards live in out_dir/.partial/ until the final files are written. One run at a
    time per folder (extraction.job.OutputLockedError otherwise). `overwrite` redoes a finished folder from
    scratch; `redo` extracts it again too but resumes an interrupted redo (see extraction.job.open_job). Either
    way the old files are replaced only when the new ones are complete. `_stop_after_shards` simulates a kill
    (tests only).
    """
    job = open_job(records, encoder.describe(), out_dir, batch_size=batch_size, shard_size=shard_size,
                   overwrite=overwrite, redo=redo, dtype=dtype)
    if isinstance(job, ExtractResult):
        return job
    with job:  # holds the folder's lock until the files are written or the run fails
        workers = default_workers() if workers is None else workers
        t0 = time.time()
        resumed = 0
        bar = tqdm(total=len(records), desc=f"extract {job.out_dir.name}", unit="img", dynamic_ncols=True)
        for s in range(job.n_shards):
            lo, hi = job.bounds(s)
            if job.shard_done(s):
                resumed += 1
                bar.update(hi - lo)
                continue
            if _stop_after_shards is not None and s >= _stop_after_shards:
                bar.close()
                raise KeyboardInterrupt(f"simulated kill after {s} shards")
            _encode_shard(job, s, encoder, batch_size, workers, bar)
        bar.close()
        return job.finish(encoder.dim, info, t0, resumed)


def _encode_shard(job: ExtractJob, s: int, encoder: Encoder, batch_size: int, workers: int,
                  bar: tqdm) -> None:
    """Decode and encode the rows of shard `s` in this process (and its DataLoader workers), then write it."""
    lo, hi = job.bounds(s)
    feats, kept, skipped = [], [], []
    paths = [r.path for r in job.records[lo:hi]]
    pin = encoder.device.type == "cuda"
    for idx, pixels, bad in iter_batches(paths, encoder.preprocess, batch_size, workers, pin, job.problems(lo, hi)):
        skipped += [job.skip(lo + i, err) for i, err in bad]
        if pixels is not None:
            feats.append(encoder.encode_pixels(pixels, raw=True))
            kept.extend(job.names[lo + i] for i in idx)
        bar.update(len(idx) + len(bad))
    job.write_shard(s, feats, kept, skipped, encoder.dim)


def ensure_index(records: Sequence[ImageRecord], encoder: Encoder, out_dir: str | os.PathLike,
                 **kw) -> FeatureIndex:
    """The index of `records` under `out_dir`: loaded when up to date, else extracted there first."""
    extract_index(records, encoder, out_dir, **kw)
    return load_index(out_dir)


def index_name(dataset: str, split: str | None, category: str | None = None, root: Path | None = None) -> str:
    """Folder name of an index: catalog-test, fashioniq-dress-val, cirr-val, folder-<dirname>."""
    if dataset == "folder":
        return f"folder-{root.name if root else 'images'}"
    return "-".join(p for p in (dataset, category, split) if p)


def plan_indexes(dataset: str, root: Path, split: str | None,
                 categories: Sequence[str] | None) -> Iterator[tuple[str, list[ImageRecord], dict]]:
    """(index name, records, info) for each index a command asks for; FashionIQ has one per category."""
    if dataset == "fashioniq":
        cats = list(categories) if categories else fashioniq_categories(root)
        for c in cats:
            yield (index_name(dataset, split, c), list_images(dataset, root, split, [c]),
                   {"dataset": dataset, "split": split, "category": c})
    else:
        yield (index_name(dataset, split, None, root), list_images(dataset, root, split, categories),
               {"dataset": dataset, "split": split})


@dataclass(frozen=True)
class IndexStore:
    """Where feature folders live and how a missing or stale one is extracted."""

    root: Path = Path("features")       # the features root: one subfolder per index
    batch_size: int = 64                # images per encoder batch, when an index must be extracted
    workers: int | None = None          # decoding workers, when an index must be extracted (None: min(4, cores))
    dtype: str = "float16"              # of the unit rows extracted (float32: exact, twice the size)

    def open(self, records: Sequence[ImageRecord], encoder: Encoder, name: str, redo: bool = False,
             **info: Any) -> FeatureIndex:
        """The index of `records` in the folder `name`: loaded when up to date, else extracted there first
        (`redo`: extracted again even when up to date); `info` (dataset, split, data_root ...) goes into its
        manifest."""
        return ensure_index(records, encoder, Path(self.root) / name, batch_size=self.batch_size,
                            workers=self.workers, redo=redo, info=info, dtype=self.dtype)


@dataclass
class DatasetIndex:
    """A dataset split's index with the records it was built from."""

    index: FeatureIndex
    records: list[ImageRecord]          # the split's images, in the dataset's order (with their attributes)
    root: Path                          # the dataset folder
    name: str                           # the index folder's name (index_name)


def open_dataset_index(encoder: Encoder, dataset: str, split: str | None, store: IndexStore,
                       data_root: str | os.PathLike | None = None, category: str | None = None,
                       redo: bool = False) -> DatasetIndex:
    """The index of one split of a dataset (one FashionIQ category), extracted first when missing or stale, or
    when `redo` (reextract_reason says why a finished one should be)."""
    root = resolve_data_root(dataset, data_root)
    records = list_images(dataset, root, split, [category] if category else None)
    name = index_name(dataset, split, category, root)
    info = {"dataset": dataset, "split": split, "data_root": str(root), **({"category": category} if category else {})}
    return DatasetIndex(store.open(records, encoder, name, redo=redo, **info), records, root, name)


def reextract_reason(folder: str | os.PathLike, verify: bool = True) -> str | None:
    """Why the finished feature folder `folder` should be extracted again: its manifest records no checksums
    (an older extraction: served unverified), or, with `verify`, it does not load (damaged or altered files,
    checked against its checksums: about 1 s per GB). None when it is fine, or when it has no manifest (never
    finished: it needs extracting, which extraction does by itself, not extracting again)."""
    folder = Path(folder)
    if not os.path.lexists(folder / MANIFEST_FILE):
        return None
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        manifest = None   # load_index says what is wrong with it
    if isinstance(manifest, dict) and "checksums" not in manifest:
        return "its manifest records no checksums (extracted by an older version): it is served unverified"
    if not verify:
        return None
    try:
        load_index(folder)
    except IndexLoadError as e:
        return str(e)
    return None
