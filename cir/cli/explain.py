"""Why an image matches a query: Grad-CAM of the search's own score, drawn over the image.

    python3 explain.py --image shirt.jpg --text "red shirt" --out heat.png [--json heat.json]
    python3 explain.py --dataset catalog --id 15970 --text "navy blue shirt" --out heat.png
    python3 explain.py --dataset catalog --id 15970 --reference 10184 --caption "is blue" --out heat.png

The score explained is the one the search ranks by: the cosine between the image's embedding and the query
(a text, or a reference + caption composed by combiner.compose). Its gradient with respect to the last
convolutional feature map A of the image tower weighs each channel (alpha_k = mean of dS/dA_k over the grid),
and the map is relu(sum_k alpha_k A_k), upsampled to the image and scaled to 0..1 (Selvaraju et al., 2017).

What it means and what it does not:
  * bright = the grid cells whose features push this image's score for this query up; it is a rough
    localisation (lite: a 7x7 grid on the 224-px view), not a segmentation.
  * The lite image embedding also takes a colour descriptor computed from the pixels (cir.encoders.colour); that part
    of the score has no feature map and is not in the picture. The map shows the EfficientNet side.
  * A map is scaled to its own maximum: compare where heat is within one map, not heat between maps. The
    score itself (in --json / the API's JSON) says how well the image matches.
  * Backends: lite (EfficientNet-Lite0's head conv, plus its colour votes), hf: CLIP ViTs (the patch
    tokens entering the last block, reshaped to their grid) and openai: RN towers (the last residual stage,
    the input of the attention pool: 9x9 for RN50x4). openai: ViTs raise NotImplementedError (use hf:).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

from cir import encoders
from cir.cli.common import add_data_root, add_encoder, add_verbose, combiner_choice, image_file, output_file
from cir.combiner import load_method
from cir.data import DATASETS, ImageRecord, list_images, resolve_data_root
from cir.explain import Explainer, query_vector
from cir.images import open_image
from cir.utils import atomic_write, run_cli, setup_logging, write_json

log = logging.getLogger("explain")


def _record(dataset: str, data_root: str | None, name: str, split: str | None) -> ImageRecord:
    root = resolve_data_root(dataset, data_root)
    for rec in list_images(dataset, root, split):
        if rec.name == name:
            return rec
    raise ValueError(f"no image {name!r} in {dataset}" + (f" ({split})" if split else ""))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=image_file, help="the image to explain (a file); or --dataset and --id")
    p.add_argument("--dataset", choices=DATASETS, help="dataset layout the ids belong to")
    add_data_root(p)
    p.add_argument("--split", help="the dataset split to look the ids up in (default: all images)")
    p.add_argument("--id", help="the image to explain, by its id in --dataset")
    p.add_argument("--text", help="a text query (text -> image search)")
    p.add_argument("--reference", help="a reference image id in --dataset (composed query, with --caption)")
    p.add_argument("--caption", help="the relative caption of a composed query")
    p.add_argument("--combiner", default="combiner", type=combiner_choice,
                   help="fusion of a composed query: combiner, combiner-stage1, sum or a checkpoint path")
    add_encoder(p, note="; lite, hf: ViTs and openai: RN towers are explained")
    p.add_argument("--out", type=output_file, help="write the overlay PNG here")
    p.add_argument("--json", type=output_file, help="write the raw map (grid, score) as JSON here")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    if not args.out and not args.json:
        raise SystemExit("nothing to write: give --out PNG and/or --json FILE")
    if bool(args.image) == bool(args.id):
        raise SystemExit("give the image to explain: --image PATH, or --dataset D --id ID")
    if (args.id or args.reference) and not args.dataset:
        raise SystemExit("--id and --reference need --dataset")
    if bool(args.text) == bool(args.caption):
        raise SystemExit("give a query: --text, or --reference ID with --caption")
    if args.caption and not args.reference:
        raise SystemExit("--caption needs --reference (the image it modifies)")
    # The Combiner first: a damaged checkpoint is one line before the encoder is loaded.
    method, combiner = load_method(args.combiner) if args.caption else ("text", None)
    encoder = encoders.load(args.encoder, "cpu")
    explainer = Explainer(encoder)

    def lookup(name: str) -> Path:
        return _record(args.dataset, args.data_root, name, args.split).path

    image = open_image(Path(args.image) if args.image else lookup(args.id))
    reference = open_image(lookup(args.reference)) if args.reference else None
    query = query_vector(encoder, args.text, reference, args.caption, method, combiner)
    t0 = time.perf_counter()
    exp = explainer.explain(image, query)
    log.info("score %.4f, explained in %.1f ms", exp.score, (time.perf_counter() - t0) * 1000)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(exp.png())
    if args.json:
        write_json(args.json, exp.to_json())
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
