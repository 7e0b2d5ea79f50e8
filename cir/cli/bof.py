"""`bof.py fit`: the bof encoder's vocabulary and PCA fitted on a catalogue split; its help is cir.encoders.bof's
description."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from cir.cli.common import add_data_root, add_verbose, output_file, positive_int
from cir.data import catalog_images, resolve_data_root
from cir.encoders import bof
from cir.encoders.bof import BOF_WEIGHTS, BofConfig, fit
from cir.utils import run_cli, setup_logging, write_json

log = logging.getLogger("bof")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=bof.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the vocabulary and PCA on the catalogue's train split")
    add_data_root(f)
    f.add_argument("--split", default="train", help="split to fit on (never test)")
    f.add_argument("--out", default=str(BOF_WEIGHTS), type=output_file,
                   help="weights file to write (+ .json, .train.json)")
    f.add_argument("--words", type=positive_int, default=BofConfig.words, help="visual vocabulary size")
    f.add_argument("--dim", type=positive_int, default=BofConfig.dim, help="output dimension (PCA components)")
    f.add_argument("--vocab-images", type=positive_int, default=800,
                   help="images whose SIFT descriptors make the vocabulary")
    f.add_argument("--per-image", type=positive_int, default=64, help="SIFT descriptors sampled per vocabulary image")
    f.add_argument("--pca-images", type=positive_int, default=2500, help="images the PCA is fitted on")
    f.add_argument("--seed", type=int, default=0, help="random seed (sampling, k-means, PCA)")
    add_verbose(f)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.split == "test":
        raise ValueError("never fit on the test split: use train")
    root = resolve_data_root("catalog", args.data_root)
    records = catalog_images(root, args.split)
    model, summary = fit(records, BofConfig(words=args.words, dim=args.dim), vocab_images=args.vocab_images,
                         per_image=args.per_image, pca_images=args.pca_images, seed=args.seed)
    model.save(args.out)
    write_json(Path(args.out).with_suffix(".train.json"), {"split": args.split, **summary})
    log.info("bof fitted: %s -> %s", json.dumps(summary), args.out)
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
