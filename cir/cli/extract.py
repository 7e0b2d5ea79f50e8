"""One-shot feature extraction: encode a dataset's index images once into feature files.

    python extract_features.py --dataset catalog --split test --out features

writes, per index, a folder `features/<dataset>[-<category>]-<split>/` with
  features.safetensors  L2-normalised features [N, dim] (tensor "features"; float16, or float32 with
                        --dtype float32) and the float32 norm of each raw feature [N] (tensor "norms"): rows *
                        norms = the encoder's raw output, what the Combiner and sum fusion take (CLIP4Cir feeds
                        raw CLIP features, ranks normalised)
  names.json            the N image names, in row order
  manifest.json         encoder, dim, preprocessing, count, skipped images and why, sha256 checksums of the
                        two other files; written last
Images are decoded by DataLoader workers and encoded in batches (on the GPU when present; CLIP in float32,
as CLIP4Cir extracts).
A corrupt or unreadable image, a FIFO or device named like one, or a file name that is not UTF-8 is skipped,
counted and listed, never fatal. Work is written in shards as it goes: killed mid-run, the same command
resumes and produces the same files as an uninterrupted run. One run at a time per index folder: a second
one fails at once saying which process holds it. The job itself (files, shards, lock) is cir.extraction.job's.

`--engine ray` runs the same job through Ray Data (cir.extraction.ray_engine; `pip install -r requirements-ray.txt`),
locally or on a cluster (`--ray-address` or $RAY_ADDRESS), and writes the same files.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from cir import encoders
from cir.cli.common import (
    add_data_root,
    add_device,
    add_dtype,
    add_encoder,
    add_features,
    add_transform,
    add_verbose,
    positive_int,
)
from cir.data import DATASETS, resolve_data_root
from cir.extraction.job import ExtractResult, check_not_held
from cir.extraction.local import extract_index, plan_indexes
from cir.extraction.ray_engine import EncoderSpec, extract_index_ray, import_ray, ray_session
from cir.utils import run_cli, setup_logging

log = logging.getLogger("extract")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="catalog",
                   help="dataset layout: the catalogue (styles.csv + images/), FashionIQ, CIRR, or any image folder")
    add_data_root(p)
    p.add_argument("--split", default=None,
                   help="split to index (catalog: train/val/test/all; fashioniq: train/val/test; "
                        "cirr: train/val/test1); "
                        "ignored for folder")
    p.add_argument("--categories", nargs="*", default=None,
                   help="FashionIQ categories (default: every category found); one index per category")
    add_encoder(p)
    add_transform(p, extra=("--preprocess",))
    add_dtype(p, "the feature rows (the norms are float32 either way)")
    p.add_argument("--stage1", default=None, metavar="CHECKPOINT",
                   help="a stage-1 checkpoint (train.py text, or CLIP4Cir's {'CLIP': state_dict} .pt) whose image "
                        "side the features come from; one without an image side changes nothing (default: the "
                        "encoder's own image side)")
    add_device(p)
    p.add_argument("--shard-size", type=positive_int, default=2048,
                   help="images per resumable shard (a killed run redoes at most one shard)")
    add_features(p, flag="--out")
    p.add_argument("--overwrite", action="store_true", help="redo the index even if it is up to date")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process and its DataLoader workers (default); ray: Ray Data, decoding in Ray "
                        "tasks and encoding in one actor per GPU or CPU worker, on a local Ray or a cluster "
                        "(needs `pip install -r requirements-ray.txt`); same output files")
    p.add_argument("--ray-address", default=None,
                   help="ray engine: the cluster to use (auto = the one running on this node, or head-ip:6379); "
                        "default $RAY_ADDRESS, else a local Ray started with this machine's cores")
    p.add_argument("--ray-workers", type=positive_int, default=None,
                   help="ray engine: encoder actors (default: one per GPU of the cluster, else one per CPU but one)")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)

    if args.engine == "ray":
        import_ray()  # fail now, with the install line, not after loading the encoder
    root = resolve_data_root(args.dataset, args.data_root)
    if args.dataset == "catalog" and args.split is None:
        args.split = "all"
    plans = list(plan_indexes(args.dataset, root, args.split, args.categories))
    for name, _, _ in plans:
        check_not_held(Path(args.out) / name)  # a folder being written: say so now, not after loading the encoder
    if args.engine == "local":
        encoder = encoders.load(args.encoder, args.device, preprocess=args.transform, target_ratio=args.target_ratio,
                                text=args.stage1)
        for name, records, info in plans:
            res = extract_index(records, encoder, Path(args.out) / name, batch_size=args.batch_size,
                                workers=args.workers, shard_size=args.shard_size, overwrite=args.overwrite,
                                info={**info, "data_root": str(root)}, dtype=args.dtype)
            _print_result(res)
        return 0
    # The driver's copy only describes the encoder and preprocesses nothing: CPU, so it holds no GPU
    # that an actor needs. The actors load the same encoder from its name and options.
    spec = EncoderSpec(args.encoder, args.transform, target_ratio=args.target_ratio, stage1=args.stage1)
    encoder = spec.load("cpu")
    with ray_session(args.ray_address):
        for name, records, info in plans:
            res = extract_index_ray(records, encoder, spec, Path(args.out) / name, batch_size=args.batch_size,
                                    shard_size=args.shard_size, overwrite=args.overwrite,
                                    info={**info, "data_root": str(root)}, device=args.device,
                                    workers=args.ray_workers, dtype=args.dtype)
            _print_result(res)
    return 0


def _print_result(res: ExtractResult) -> None:
    print(json.dumps({"index": str(res.out_dir), "count": res.count, "skipped": len(res.skipped),
                      "seconds": round(res.seconds, 2)}))


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
