"""`layouts.py fashioniq|cirr`: the catalogue's triplets written into a FashionIQ or CIRR layout; its help is
cir.catalog.layouts's description."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from cir.catalog import layouts
from cir.catalog.layouts import CATEGORIES, DEFAULT_PER_KIND, SPLITS, write_cirr, write_fashioniq
from cir.utils import run_cli, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=layouts.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="layout", required=True, metavar="{fashioniq,cirr}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="folder to write the dataset layout into")
    common.add_argument("--catalog-root", default=None,
                        help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data, descending into "
                             "fashion-catalog)")
    common.add_argument("--seed", type=int, default=0, help="triplet generation seed (same seed, same files)")
    common.add_argument("--per-kind", type=int, default=DEFAULT_PER_KIND,
                        help="at most this many triplets of each kind per split (and FashionIQ category)")
    common.add_argument("--splits", nargs="+", default=list(SPLITS),
                        help="catalogue splits to write (the test split is never written)")
    common.add_argument("--verbose", action="store_true", help="debug logging")
    fiq = sub.add_parser("fashioniq", parents=[common], help="FashionIQ layout (images/, captions/, image_splits/)")
    fiq.add_argument("--categories", nargs="+", default=None, choices=list(CATEGORIES),
                     help="FashionIQ categories to write (default: all; see layouts.CATEGORIES)")
    sub.add_parser("cirr", parents=[common], help="CIRR rc2 layout (cirr/captions/, cirr/image_splits/, train/, dev/)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    kw = dict(splits=args.splits, seed=args.seed, per_kind=args.per_kind)
    if args.layout == "fashioniq":
        summary = write_fashioniq(args.catalog_root, args.out, categories=args.categories, **kw)
    else:
        summary = write_cirr(args.catalog_root, args.out, **kw)
    print(json.dumps(summary, indent=2))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
