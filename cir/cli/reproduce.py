"""A paper's whole pipeline with the authors' settings, in one command.

    python3 -m cir.reproduce fashioniq --data-root DIR --encoder openai:RN50x4 [--out runs/fiq]
    python3 -m cir.reproduce cirr --data-root DIR --encoder openai:RN50x4 [--out runs/cirr]

Steps, each skipped when it is up to date (re-run the same command after an interruption):
  1. features of the train and val splits (and CIRR's test1) in the dataset's real layout, under --features
  2. stage 1: train.py text --preset clip4cir (the authors' clip_fine_tune.py command)      (--skip-stage1: none)
  3. stage 2: train.py combiner --preset clip4cir on stage 1's text side (combiner_train.py)
  4. the papers' protocol on val: FashionIQ R@10/R@50 per category and their average; CIRR R@1/5/10/50 and
     Rsubset@1/2/3 (evaluate.py --task composed)
  5. CIRR: test1's submission files for the evaluation server, checked as the server reads them
Then a table of this run's numbers beside the papers' (only those a source gives) is printed and written to
<out>/results.md, the numbers to <out>/results.json. --quick or --epochs-scale shorten training for a smoke run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from cir.cli.common import (
    add_data_root,
    add_device,
    add_dtype,
    add_encoder,
    add_features,
    add_transform,
    add_verbose,
)
from cir.reproduce import ReproduceConfig, format_table, reproduce
from cir.reproduce.pipeline import DATASETS, QUICK_BATCH
from cir.training.config import PRESETS
from cir.utils import run_cli, setup_logging


def positive_float(value: str) -> float:
    """A number above 0 (--epochs-scale)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
    if not x > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return x


def parser() -> argparse.ArgumentParser:
    """The command line of `python3 -m cir.reproduce` (every flag with its help)."""
    p = argparse.ArgumentParser(prog="python3 -m cir.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, type=str.lower, help="which paper's benchmark to reproduce")
    add_data_root(p)
    add_encoder(p, default="openai:RN50x4", note="; the papers' is openai:RN50x4")
    p.add_argument("--out", default=None,
                   help="run folder: feature folders, checkpoints, metrics, submission files, results "
                        "(default: runs/<dataset>-<preset>-<encoder>)")
    add_features(p, batch_default=None, root_default=None, root_note="<out>/features, the run's own")
    p.add_argument("--categories", nargs="+", default=None,
                   help="fashioniq: the categories to train and evaluate on (default: every category found)")
    p.add_argument("--preset", default="clip4cir", choices=list(PRESETS),
                   help="both stages' settings: clip4cir (default: the authors' README commands), clip4cir-argparse "
                        "(their scripts' defaults) or project (this project's); docs/training.md")
    short = p.add_mutually_exclusive_group()
    short.add_argument("--epochs-scale", type=positive_float, default=1.0, metavar="F",
                       help="train each stage for its preset's epochs times F, at least 1 (e.g. 0.1 for a tenth)")
    short.add_argument("--quick", action="store_true",
                       help=f"smoke run: 1 epoch per stage, batches of at most {QUICK_BATCH} triplets")
    p.add_argument("--skip-stage1", action="store_true",
                   help="no text fine-tuning: stage 2 trains the Combiner on the base text side (CVPR 2022's "
                        "Combiner on frozen CLIP)")
    add_transform(p, default_note="the preset's (clip4cir: targetpad), else the encoder's own")
    add_dtype(p, "the features and checkpoints")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="seed of both stages' shuffling, caption draws and init")
    p.add_argument("--restart", action="store_true",
                   help="run every step again, training from its first epoch, even where it is up to date")
    add_verbose(p)
    return p


def config(args: argparse.Namespace) -> ReproduceConfig:
    """The typed run the flags describe."""
    return ReproduceConfig(
        dataset=args.dataset, data_root=args.data_root, encoder=args.encoder, out=args.out, features=args.features,
        categories=tuple(args.categories) if args.categories else None, preset=args.preset,
        epochs_scale=args.epochs_scale, quick=args.quick, skip_stage1=args.skip_stage1, batch_size=args.batch_size,
        workers=args.workers, transform=args.transform, target_ratio=args.target_ratio, dtype=args.dtype,
        device=args.device, seed=args.seed, restart=args.restart)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = config(args)   # a bad combination fails now, before anything is loaded
    setup_logging(args.verbose)
    results = reproduce(cfg)
    print(format_table(cfg.dataset, results["name"], results["metrics"]))
    print(json.dumps({"run": results["run"], "results": str(Path(results["run"]) / "results.json"),
                      "steps": results["steps"], "submission": results["submission"]}))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
