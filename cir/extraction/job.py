"""The extraction job shared by both engines: image files, batches, shards, the output folder and its lock.

As clip-retrieval splits reader / mapper / writer / distributor, extraction is split in three:
  extraction/job.py    (this module) the reader and the writer: decoding image files (ImageFiles,
                       iter_batches), one index's job (open_job -> ExtractJob: its rows, the resumable shards
                       under .partial/, the final files, the folder's lock) and its ExtractResult;
  extract_features.py  the local engine (DataLoader workers + one encoder), the CLI and the public API
                       (extract_index, ensure_index, index_name, plan_indexes);
  ray_engine.py        the Ray Data engine (decode tasks + encoder actors).
Both engines write shards and final files through ExtractJob, so they write the same files and a run killed
under one engine resumes under either. Training (cir.training.align) decodes its images with iter_batches too.

Only regular files are decoded (a symlink to one is fine: the FashionIQ and CIRR layouts are symlinks); a FIFO,
a device or a socket named like an image is skipped with its reason, never opened for reading (a FIFO would
block forever). A record whose name cannot be stored (cir.data.ImageRecord.problem, e.g. a file name
that is not UTF-8) is skipped with its reason too, never decoded.

One extraction at a time per index folder: open_job takes an exclusive, non-blocking flock on
<folder>/.extract.lock and a second run fails at once naming the holder's pid. The kernel drops the lock
when the holder exits or crashes, so a stale lock file is harmless and is never deleted (deleting a lock file
that another process has open would let two runs hold "the" lock).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file

from cir.data import ImageRecord, check_images
from cir.images import POLICY as DECODE_POLICY
from cir.images import open_image
from cir.index.files import CHECKSUMMED_FILES, FEATURES_FILE, MANIFEST_FILE, NAMES_FILE
from cir.utils import save_tensors, sha256_file, write_json

log = logging.getLogger("extract")
FORMAT_VERSION = 2   # 2: raw-feature norms stored beside the normalised rows
LOCK_NAME = ".extract.lock"

# (indices of decoded images, their pixels or None when none decoded, [(index, error)])
Batch = tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]


# ----------------------------------------------------------------------------------------------- reading files

def display_path(path: str | os.PathLike) -> str:
    """A path as text that JSON and terminals can hold: bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one image per item; a failure is returned, not raised.

    `problems[i]`, when given and not empty, is why item i cannot be indexed (known from its listing): the
    item fails with that reason without its file being opened.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Image.Image], torch.Tensor],
                 problems: Sequence[str] | None = None):
        self.paths, self.preprocess = list(paths), preprocess
        self.problems = list(problems) if problems is not None else [""] * len(self.paths)
        if len(self.problems) != len(self.paths):
            raise ValueError(f"{len(self.problems)} problems for {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        if self.problems[i]:
            return i, None, self.problems[i]
        try:
            return i, self.preprocess(open_image(self.paths[i])), ""  # decoded now: a truncated file fails here
        except Exception as e:  # any decoder error means "skip this image", never "stop the run"
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> Batch:
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, x, err in items if x is None]
    idx = [i for i, _ in good]
    pixels = torch.stack([x for _, x in good]) if good else None
    return idx, pixels, bad


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the encoder for cores


def iter_batches(paths: Sequence[Path], preprocess: Callable, batch_size: int, workers: int,
                 pin_memory: bool = False, problems: Sequence[str] | None = None) -> Iterator[Batch]:
    """Yield (indices of decoded images, their pixels, [(index, error)]) in order, batch by batch."""
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, preprocess, problems), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, worker_init_fn=_worker_init if workers else None, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def default_workers() -> int:
    """DataLoader decoding workers by default: up to 4, never more than the cores."""
    return min(4, os.cpu_count() or 1)


def skipped_record(name: str, path: str | os.PathLike, error: str) -> dict:
    """The manifest's entry for an image that was listed but not indexed (both engines write this one)."""
    return {"name": name, "path": display_path(path), "error": error}


# ----------------------------------------------------------------------------------------------- the folder lock

class OutputLockedError(ValueError):
    """Another extraction holds the output folder. A ValueError too, so command lines print it as one line."""


class OutputLock:
    """An exclusive flock on <folder>/.extract.lock, taken without waiting; the holder's pid is in the file."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # append: never truncate the holder's pid before we hold the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise OutputLockedError(
                f"{self.path.parent} is held by another extraction ({holder}, lock file {self.path}); wait for it "
                f"to finish, or stop it and run this command again: the work done so far is kept and resumed") from None
        except BaseException:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file: IO[str] | None = f

    def release(self) -> None:
        """Drop the lock (also done by the kernel when this process exits)."""
        if self._file is not None:
            # Unlock explicitly: forked DataLoader workers may still share this open file.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_not_held(folder: str | os.PathLike) -> None:
    """OutputLockedError now when another extraction holds `folder` (creates nothing): lets a command fail
    before loading an encoder. open_job still takes the lock itself; this is only the early answer."""
    if (Path(folder) / LOCK_NAME).exists():
        OutputLock(folder).release()


# ----------------------------------------------------------------------------------------------- the job

@dataclass
class ExtractResult:
    """What one index's extraction did: its folder, rows written, skipped images, time, shards resumed."""

    out_dir: Path
    count: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_shards: int = 0


def job_key(encoder_desc: dict, names: Sequence[str], shard_size: int, batch_size: int,
            dtype: str = "float16") -> str:
    """Identifies the work of a run: a resume is only valid for the very same inputs and settings."""
    # the decoding policy too: features of images read another way (e.g. unrotated) are never resumed or reused;
    # the storage dtype only when not the default, so folders written before it existed stay current
    parts = [encoder_desc, shard_size, batch_size, FORMAT_VERSION, DECODE_POLICY] + ([dtype] if dtype != "float16"
                                                                                     else [])
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    for n in names:
        # surrogatepass: a name that is not valid Unicode must not crash the run (valid names: same bytes)
        h.update(n.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}   # what --dtype may store


def split_raw(raw: torch.Tensor, dtype: str = "float16") -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features [B,d] -> (unit rows in `dtype`, float32 norms [B]): what a feature file stores. float16
    halves the file (rows are exact to ~1e-3); float32 keeps every digit the encoder gave."""
    raw = raw.float()
    norms = raw.norm(dim=1)
    return (raw / norms.clamp_min(1e-12).unsqueeze(1)).to(FEATURE_DTYPES[dtype]), norms


@dataclass
class ExtractJob:
    """One index being extracted: its rows, their shards under .partial/, and how the final files are written.

    Holds the folder's lock from open_job until closed: use it as `with job: ...` (both engines do).
    """
    out_dir: Path
    records: Sequence[ImageRecord]
    names: list[str]
    desc: dict
    key: str
    shard_size: int
    lock: OutputLock | None = field(default=None, repr=False)
    dtype: str = "float16"              # of the stored unit rows (FEATURE_DTYPES)

    def __enter__(self) -> ExtractJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the output folder's lock."""
        if self.lock is not None:
            self.lock.release()

    @property
    def partial(self) -> Path:
        return self.out_dir / ".partial"

    @property
    def n_shards(self) -> int:
        return (len(self.records) + self.shard_size - 1) // self.shard_size

    def bounds(self, s: int) -> tuple[int, int]:
        """Row range [lo, hi) of shard `s`."""
        return s * self.shard_size, min(len(self.records), (s + 1) * self.shard_size)

    def problems(self, lo: int, hi: int) -> list[str]:
        """Why rows lo..hi-1 cannot be indexed, known before decoding ("" for a row that can)."""
        return [r.problem for r in self.records[lo:hi]]

    def skip(self, row: int, error: str) -> dict:
        """The skipped-image record of `row`, logged."""
        log.warning("skipped %s: %s", self.names[row], error)
        return skipped_record(self.names[row], self.records[row].path, error)

    def shard_files(self, s: int) -> tuple[Path, Path]:
        return self.partial / f"shard-{s:05d}.safetensors", self.partial / f"shard-{s:05d}.json"

    def shard_done(self, s: int) -> bool:
        return all(f.exists() for f in self.shard_files(s))

    def write_shard(self, s: int, feats: list[torch.Tensor], kept: list[str], skipped: list[dict],
                    dim: int) -> None:
        """Store one finished shard: the kept rows' raw features (float32, row order) as unit rows (float16, or
        float32 by --dtype) plus float32 norms, their names, the skips."""
        shard_file, meta_file = self.shard_files(s)
        rows, norms = split_raw(torch.cat(feats) if feats else torch.zeros(0, dim), self.dtype)
        # The meta file is written last: a shard counts as done only when both exist.
        save_tensors(shard_file, {"features": rows, "norms": norms})
        write_json(meta_file, {"names": kept, "skipped": skipped})

    def finish(self, dim: int, info: dict | None, t0: float, resumed: int) -> ExtractResult:
        """Join the shards into features.safetensors, names.json, manifest.json (last), drop .partial/."""
        feats, norms, kept, skipped = [], [], [], []
        for s in range(self.n_shards):
            shard_file, meta_file = self.shard_files(s)
            shard = load_file(shard_file)
            feats.append(shard["features"])
            norms.append(shard["norms"])
            meta = json.loads(meta_file.read_text())
            kept += meta["names"]
            skipped += meta["skipped"]
        x = torch.cat(feats) if feats else torch.zeros(0, dim, dtype=FEATURE_DTYPES[self.dtype])
        n = torch.cat(norms) if norms else torch.zeros(0)
        save_tensors(self.out_dir / FEATURES_FILE, {"features": x, "norms": n}, metadata={"format": "pt"})
        write_json(self.out_dir / NAMES_FILE, kept)
        # Hashed from the files as written, so a loader can verify exactly what it reads.
        # what index.load_index verifies: manifest["checksums"][file] = sha256 hex of the final file
        checksums = {f: sha256_file(self.out_dir / f) for f in CHECKSUMMED_FILES}
        manifest = {**self.desc, **(info or {}), "count": len(kept), "skipped_count": len(skipped),
                    "skipped": skipped, "dtype": self.dtype, "normalized": True, "norms": True,
                    "format_version": FORMAT_VERSION, "decode": DECODE_POLICY, "job_key": self.key,
                    "checksums": checksums}
        write_json(self.out_dir / MANIFEST_FILE, manifest)  # last: its presence means the folder is complete
        shutil.rmtree(self.partial, ignore_errors=True)
        secs = time.time() - t0
        log.info("%s: %d features, %d skipped, %.1f s (%d shards resumed)", self.out_dir, len(kept), len(skipped),
                 secs, resumed)
        return ExtractResult(self.out_dir, len(kept), skipped, secs, resumed)


def open_job(records: Sequence[ImageRecord], encoder_desc: dict, out_dir: str | os.PathLike, *,
             batch_size: int, shard_size: int, overwrite: bool, redo: bool = False,
             dtype: str = "float16") -> ExtractJob | ExtractResult:
    """Check the inputs, lock out_dir and prepare out_dir/.partial/ for a run.

    Returns the finished ExtractResult instead (without taking the lock) when out_dir already holds this very
    job's output, unless `overwrite` or `redo`. Partial work of another job (other inputs or settings) is
    discarded; that of this job is kept to resume, under `redo` too: a folder extracted again because it has
    no checksums or is damaged (app.py does) resumes where an interrupted redo stopped, which `overwrite`
    (start afresh) does not. OutputLockedError, before anything is touched, when another extraction holds out_dir.
    """
    out_dir = Path(out_dir)
    names = [r.name for r in records]
    if records and not any(r.path.is_file() for r in records):
        check_images(records)  # none exists: a wrong --data-root, not a few bad files
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate image names in the index for {out_dir.name}")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"unknown feature dtype {dtype!r}; valid: {', '.join(FEATURE_DTYPES)}")
    key = job_key(encoder_desc, names, shard_size, batch_size, dtype)
    # A finished folder is only read: no lock, so a current index on a read-only mount (or one another
    # extraction is writing next to) can still be opened. Checked again once locked, in case a run just ended.
    if (done := _finished(out_dir, key, overwrite or redo)) is not None:
        return done
    lock = OutputLock(out_dir)
    try:
        if (done := _finished(out_dir, key, overwrite or redo)) is not None:
            lock.release()
            return done
        job = ExtractJob(out_dir, records, names, encoder_desc, key, shard_size, lock, dtype)
        _prepare_partial(job.partial, key, overwrite)
    except BaseException:
        lock.release()
        raise
    return job


def _finished(out_dir: Path, key: str, again: bool) -> ExtractResult | None:
    """The result recorded in out_dir when it already holds this very job's output (and it is not to be
    extracted `again`: --overwrite, or a redo whose old manifest may not even be readable)."""
    manifest_path = out_dir / MANIFEST_FILE
    if again or not manifest_path.exists():
        return None
    old = json.loads(manifest_path.read_text())
    if old.get("job_key") != key:
        return None
    log.info("%s is up to date (%d features); use --overwrite to redo it", out_dir, old["count"])
    return ExtractResult(out_dir, old["count"], old.get("skipped", []))


def _prepare_partial(partial: Path, key: str, overwrite: bool) -> None:
    """Keep .partial/ when it holds this job's shards, else start it afresh."""
    job_file = partial / "job.json"
    stale = overwrite or not job_file.exists() or json.loads(job_file.read_text()).get("job_key") != key
    if partial.exists() and stale:
        log.info("discarding partial work in %s (different job)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(job_file, {"job_key": key})
