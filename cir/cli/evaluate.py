"""Retrieval metrics, as the papers report them.

    python evaluate.py --task text2image  --dataset catalog --split test
    python evaluate.py --task image2image --dataset catalog --split test
    python evaluate.py --task composed --dataset catalog --split test --combiner sum
    python evaluate.py --task composed --dataset fashioniq --data-root DIR --split val --categories dress shirt toptee
    python evaluate.py --task composed --dataset cirr --data-root DIR --split val
    python evaluate.py --task composed --dataset cirr --data-root DIR --split test1 --submission out/sub.json

text2image: each product name queries the index of the split's images; R@1/5/10 (%) of its own photo.
image2image: precision@10 (%) of results sharing the query's articleType and baseColour (query removed).
composed: (reference image, relative caption) -> target, the query made by combiner.compose:
  catalog    triplets.generate over the split's images (seeded); R@1/10/50 of the target, reference removed,
             and attr@1/attr@10: the share (%) of the top K satisfying the triplet's condition (every wanted
             attribute, none of the unwanted ones), with attr@10_ceiling; per kind under "kinds".
  fashioniq  one index per category (its split's images); the two captions joined as CLIP4Cir does;
             <category>_R@10/R@50, their averages and "average" = their mean. The reference stays in the
             ranking, as in the original evaluation.
  cirr       R@1/5/10/50 with the reference removed, Rsubset@1/2/3 among the query's img_set members
             (reference removed), avg = (R@5 + Rsubset@1) / 2, and mean_arithmetic / mean_harmonic /
             mean_geometric of those seven (CLIP4Cir's selection). test1 has no targets: --submission writes
             the evaluation server's two files, recall_submission_<name>.json and
             recall_subset_submission_<name>.json, beside the given path.
  An annotation whose captions are all empty (the real files hold a few) is queried with its reference
  image alone, with a warning; the count is reported as "empty_captions" (--empty-captions encode: as
  CLIP4Cir, the empty text is encoded and fused instead).
--save-rankings writes the top-50 image names of every query, in annotation order. --plot FILE.png draws
recall@K (K = 1..50) and the per-kind bars; --compare M... evaluates more composed methods into the same plot.
Index features come from extracted files under --features when present, else are extracted (and kept).
All ranking goes through cir.index.search, by the backend of --index-backend (exact by default; faiss or milvus
measure an ANN index's effect on the metrics). The last printed line is one JSON object with the metrics.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from cir.cli.common import (
    add_data_root,
    add_device,
    add_dtype,
    add_encoder,
    add_features,
    add_transform,
    add_verbose,
    combiner_choice,
    index_store,
    output_file,
    positive_int,
)
from cir.cli.original import SUB, VAL, aliases
from cir.evaluation.protocols import EMPTY_CAPTIONS
from cir.evaluation.runs import DEFAULT_SPLITS, TASKS, EvalConfig, evaluate
from cir.utils import run_cli, setup_logging


def parser() -> argparse.ArgumentParser:
    """The command line of evaluate.py (every flag with its help)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS,
                   help="what to measure: product name -> photo, photo -> similar photos, or composed "
                        "retrieval (reference image + relative caption -> target)")
    p.add_argument("--dataset", default="catalog", choices=list(DEFAULT_SPLITS), type=str.lower,
                   help="dataset: catalog (all tasks; composed uses generated triplets), fashioniq or cirr "
                        "(composed only, from their annotation files)")
    add_data_root(p)
    p.add_argument("--split", default=None,
                   help="split whose images form the index and whose annotations are the queries "
                        "(default: test for catalog, val for fashioniq and cirr; cirr's test split is test1)")
    p.add_argument("--categories", nargs="+", default=None,
                   help="FashionIQ categories, in this order (default: every category found); each is "
                        "ranked in its own index")
    p.add_argument("--combiner", default="combiner", type=combiner_choice,
                   help="composed: how the reference and the caption are fused: a Combiner (combiner, "
                        "combiner-stage1: the shipped checkpoints; or a checkpoint path) or the baselines "
                        "sum (element-wise sum), image (reference only), text (caption only); default: combiner")
    p.add_argument("--text-encoder", *aliases("--text-encoder", VAL, SUB), "--stage1", dest="text_encoder",
                   default=None,
                   help="stage-1 side of the encoder: base, stage1 (shipped stage-1 checkpoint) or a checkpoint "
                        "path, or a CLIP fine-tuned by CLIP4Cir (.pt): its text side and, when it holds one, its "
                        "image side (indexes are then extracted again with it) (default: the one the combiner was "
                        "trained with; base for sum/image/text and the other tasks)")
    _composed_args(p)
    add_encoder(p, note="; bof: image2image only", original=(VAL, SUB))
    add_features(p)
    add_transform(p)
    add_dtype(p, "the features extracted here")
    p.add_argument("--empty-captions", default="image", choices=EMPTY_CAPTIONS,
                   help="composed: a query whose caption is empty is its reference image alone (image, default) or, "
                        "as CLIP4Cir, the fusion with the text encoder's features of \"\" (encode; FashionIQ's two "
                        "captions are then joined literally, as the original: 'Red and ')")
    add_device(p)
    p.add_argument("--index-backend", default="exact", metavar="SPEC",
                   help="how indexes are ranked (cir.index): exact (default), faiss[:hnsw|ivfpq][?param=value...], "
                        "milvus (milvus-lite beside the features, filled by `python3 -m cir.index load`), "
                        "milvus:http://host:19530")
    p.add_argument("--plot", default=None, metavar="FILE.png", type=output_file,
                   help="text2image, composed: draw recall@K for K = 1..50 of every method evaluated, and bars of "
                        "the per-kind metrics (catalog kinds, FashionIQ categories), into this PNG")
    p.add_argument("--compare", nargs="+", default=[], metavar="METHOD", type=combiner_choice,
                   help="composed: also evaluate these methods (as --combiner takes them), each printing its JSON "
                        "line before --combiner's, which stays last; --plot draws them all")
    add_verbose(p)
    return p


def _composed_args(p: argparse.ArgumentParser) -> None:
    """The flags of the composed task alone: generated triplets, rankings and CIRR submission files."""
    p.add_argument("--triplet-seed", type=int, default=0,
                   help="composed, catalog: seed of the generated triplets (same seed = same triplets)")
    p.add_argument("--per-kind", type=positive_int, default=500,
                   help="composed, catalog: at most this many triplets of each kind (cir.catalog.triplets kinds)")
    p.add_argument("--phrasings", default="all", choices=["all", "train", "heldout"],
                   help="composed, catalog: caption templates of the triplets; 'heldout' uses only those "
                        "`train.py --phrasings train` never trains on")
    p.add_argument("--save-rankings", default=None, metavar="FILE", type=output_file,
                   help="composed: write a JSON list with the top-50 image names of every query, in "
                        "annotation order (fashioniq: categories in the given order)")
    p.add_argument("--submission", default=None, metavar="FILE", type=output_file,
                   help="composed, cirr: write the evaluation server's files beside FILE: FILE=out/sub.json "
                        "gives out/recall_submission_sub.json (top 50) and out/recall_subset_submission_sub.json "
                        "(top 3 of the img_set); needed for test1, which has no targets")


def config(args: argparse.Namespace) -> EvalConfig:
    """The typed run the flags describe."""
    return EvalConfig(task=args.task, dataset=args.dataset, split=args.split, data_root=args.data_root,
                      categories=tuple(args.categories) if args.categories is not None else None,
                      combiner=args.combiner, text_encoder=args.text_encoder, triplet_seed=args.triplet_seed,
                      per_kind=args.per_kind, phrasings=args.phrasings, save_rankings=args.save_rankings,
                      submission=args.submission, encoder=args.encoder, device=args.device, store=index_store(args),
                      index_backend=args.index_backend, plot=args.plot, compare=tuple(args.compare),
                      transform=args.transform, target_ratio=args.target_ratio, empty_captions=args.empty_captions)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = config(args).resolved()   # a bad flag fails now, before logging is set up and models are loaded
    setup_logging(args.verbose)
    runs = evaluate(cfg, report=lambda metrics: print(json.dumps(metrics)))
    main_run = runs[cfg.combiner if cfg.task == "composed" else cfg.encoder]
    print(json.dumps(main_run[0]))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
