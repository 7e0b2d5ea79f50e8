"""Write the catalogue's generated triplets into the real FashionIQ and CIRR dataset layouts.

    python layouts.py fashioniq --out layouts/fashionIQ_dataset
    python layouts.py cirr --out layouts/cirr_dataset --splits val

so the FashionIQ and CIRR code paths (cir.data loaders, extract_features.py, evaluate.py, train.py) run on
real images. Images are never copied: each is a symlink (a hard link where no symlink can be made) to
``<catalogue>/images/<id>.jpg``, named by its catalogue id with its true ``.jpg`` extension, which both
loaders accept. Only the catalogue's train and val splits are written; its test split is refused.

- FashionIQ: ``images/<id>.jpg``, ``captions/cap.<cat>.<split>.json`` (``{"candidate", "target",
  "captions": [c1, c2]}``), ``image_splits/split.<cat>.<split>.json`` (every catalogue image of the category
  in the split). Triplets are generated among one category's images, so reference and target share it.
  The two captions are two phrasings of the same edit: ``c1`` is ``triplets.generate``'s caption; ``c2``
  comes from running ``triplets.generate`` again on just the (reference, target) pair, keeping a triplet with
  the same condition (triplets.condition_key), with seeds derived from (seed, reference, target, try) until
  its wording differs.
- CIRR rc2: ``cirr/captions/cap.rc2.<split>.json``, ``cirr/image_splits/split.rc2.<split>.json`` mapping
  name -> ``./train/<n>/<id>.jpg`` (n = crc32(id) % 100) or ``./dev/<id>.jpg``. Each triplet has a unique
  pairid (``PAIRID_OFFSET[split] + i``), ``target_soft = {target: 1.0}`` and its own img_set (id = pairid)
  of 6 members as in the real files: the reference, the target and 4 images of the split drawn from the
  target's articleType, then the reference's, then the target's subCategory, then anything, never an image
  satisfying the triplet's condition (so the target is the one right answer in the set), shuffled.
  ``reference_rank`` / ``target_rank`` are their positions in ``members``.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from cir.catalog.layouts import CATEGORIES, DEFAULT_PER_KIND, SPLITS, write_cirr, write_fashioniq
from cir.utils import run_cli, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
