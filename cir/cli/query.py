"""Command-line search over an extracted index (the web demo's queries, without the web).

    python query.py "a red casual t-shirt for men"            # text -> image
    python query.py --image my_photo.jpg                       # image -> image (any photo)
    python query.py --ref 15970                                # image -> image from an index image

The catalogue index is extracted first if it is missing (about two minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from cir import encoders
from cir.cli.common import add_data_root, add_device, add_encoder, add_features, image_file, index_store, positive_int
from cir.data import DATASETS
from cir.extraction import open_dataset_index
from cir.images import open_image
from cir.index import search
from cir.utils import run_cli, setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", default=None, help="a text query (omit when using --image or --ref)")
    p.add_argument("--image", default=None, type=image_file,
                   help="path of a query image (any photo; checked before the index is opened or extracted)")
    p.add_argument("--ref", default=None, help="name of an index image to query from (catalogue: the product id)")
    p.add_argument("--dataset", default="catalog", choices=DATASETS, help="dataset layout")
    add_data_root(p)
    p.add_argument("--split", default="all", help="split whose images form the index (catalog: all/train/val/test)")
    add_encoder(p, note="; bof answers --image and --ref only")
    add_features(p)
    p.add_argument("-k", type=positive_int, default=10, help="number of results")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    setup_logging()
    if sum(x is not None for x in (args.text, args.image, args.ref)) != 1:
        p.error("give exactly one of: a text query, --image PATH, --ref NAME")
    if args.text is not None and not args.text.strip():
        p.error("the text query is empty")
    enc = encoders.load(args.encoder, args.device)
    split = None if args.dataset == "folder" else args.split
    ds = open_dataset_index(enc, args.dataset, split, index_store(args), args.data_root)
    index, exclude = ds.index, None
    if args.text is not None:
        q = enc.encode_texts([args.text])
    elif args.image is not None:
        try:
            q = enc.encode_images([open_image(args.image)])
        except (OSError, ValueError) as e:
            print(f"error: cannot read image {args.image}: {e}", file=sys.stderr)
            return 2
    else:
        if args.ref not in index:
            print(f"error: {args.ref!r} is not in the index {ds.name}", file=sys.stderr)
            return 2
        row = index.id_of(args.ref)
        q, exclude = index.features[row:row + 1], [row]
    scores, ids = search(q, index, args.k, exclude=exclude)
    attrs = {r.name: r.attrs for r in ds.records}
    hits = [{"rank": i + 1, "name": index.names[j], "score": round(s, 4),
             "title": attrs.get(index.names[j], {}).get("productDisplayName", "")}
            for i, (s, j) in enumerate(zip(scores[0].tolist(), ids[0].tolist()))]
    if args.json:
        print(json.dumps({"query": args.text or args.image or args.ref, "results": hits}))
    else:
        for h in hits:
            print(f"{h['rank']:>3}  {h['score']:.3f}  {h['name']:<12} {h['title']}")
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
