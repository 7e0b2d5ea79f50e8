"""Training commands.

    python train.py align      train the lite encoder's projection heads (locked towers, contrastive loss)
                               on the catalogue's train split; picks the best epoch on val.
    python train.py text       stage 1 of CLIP4Cir (TOMM 2023): fine-tune the text side on composed
                               triplets with sum fusion -> a text checkpoint (weights/lite-text.safetensors)
    python train.py combiner   stage 2: train the Combiner on frozen, cached features
                               -> weights/combiner.safetensors (+ .json config, .train.json history)

Each command writes its history's curve beside it (.train.png: loss and validation metrics per epoch).

Composed training uses triplets generated from the catalogue's train split (triplets.py), fresh ones
(new targets, new phrasings) each epoch; the best epoch is picked on val triplets. Frozen features are
computed once and cached, so every command runs in minutes on a small CPU and uses the GPU when present.
The test split is never read here.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from cir.catalog import triplets
from cir.paths import WEIGHTS_DIR
from cir.training.align import run_align
from cir.training.data import TRAIN_DATASETS
from cir.training.stages import PRESETS, cmd_combiner, cmd_text
from cir.utils import run_cli, setup_logging


def _composed_args(sp: argparse.ArgumentParser, out: str, epochs: int) -> None:
    """Options shared by both stages. Those defaulting to None come from --preset (see PRESETS)."""
    sp.add_argument("--dataset", default="catalog", choices=TRAIN_DATASETS,
                    help="what to train on: the catalogue's generated triplets, FashionIQ or CIRR (train split; "
                         "validation on val)")
    sp.add_argument("--data-root", default=None,
                    help="dataset folder (default: $CIR_DATA_ROOT or ../shared/data, descending into the "
                         "dataset's usual subfolder)")
    sp.add_argument("--categories", nargs="*", default=None,
                    help="FashionIQ categories to train and validate on (default: every category found)")
    sp.add_argument("--encoder", default="lite", help="encoder name: lite, hf:<id or dir>, openai:<model>")
    sp.add_argument("--features", default="features",
                    help="features root: the train/val indexes are read from (or extracted into) its subfolders")
    sp.add_argument("--out", default=str(WEIGHTS_DIR / out), help="checkpoint path (.safetensors; .json beside it)")
    sp.add_argument("--cache-dir", default=".cache/train", help="where per-epoch resume state is kept")
    sp.add_argument("--preset", default="project", choices=sorted(PRESETS),
                    help="defaults for the options below left unset: project (tuned here) or clip4cir (the "
                         "original scripts: stage 1 AdamW lr 2e-6 batch 512; stage 2 Adam lr 2e-5 batch 1024, "
                         "projection 4x and hidden 8x the feature size, dropout 0.5; both the batch loss)")
    sp.add_argument("--epochs", type=int, default=epochs, help="passes over the train triplets")
    sp.add_argument("--lr", type=float, default=None, help="learning rate (default: from --preset)")
    sp.add_argument("--optimizer", default=None, choices=["adam", "adamw"], help="default: from --preset")
    sp.add_argument("--weight-decay", type=float, default=None,
                    help="weight decay (default 0 for adam, 0.01 for adamw as torch's AdamW)")
    sp.add_argument("--batch", type=int, default=None,
                    help="triplets per batch (default: from --preset); with --negatives batch the other targets "
                         "of the batch are the negatives")
    sp.add_argument("--negatives", default=None, choices=["gallery", "batch"],
                    help="batch: the papers' loss, cross-entropy with one-hot labels over the batch's targets, "
                         "logit scale 100; gallery: this project's, over all train images, on the catalogue "
                         "every item with the wanted attributes a positive (default: gallery on catalog, batch on "
                         "fashioniq/cirr, or the preset's)")
    sp.add_argument("--per-kind", type=int, default=1500,
                    help="catalog: train triplets of each kind drawn per epoch (triplets.py kinds)")
    sp.add_argument("--val-per-kind", type=int, default=500, help="catalog: val triplets of each kind (fixed seed 0)")
    sp.add_argument("--phrasings", default="train", choices=triplets.PHRASINGS,
                    help="catalog: caption templates to train on; 'train' keeps every 4th template unseen, so "
                         "`evaluate.py --phrasings heldout` measures generalisation to new wordings")
    sp.add_argument("--batch-size", type=int, default=64, help="images per batch if features must be extracted")
    sp.add_argument("--workers", type=int, default=None, help="decoding workers if features must be extracted")
    sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    sp.add_argument("--seed", type=int, default=0, help="seed for triplets, caption draws, shuffling and init")
    sp.add_argument("--restart", action="store_true", help="ignore saved resume state and start over")
    sp.add_argument("--verbose", action="store_true", help="debug logging")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("align", help="train the lite encoder's projection heads on the catalogue")
    a.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    a.add_argument("--out", default=str(WEIGHTS_DIR / "lite.safetensors"),
                   help="where the heads go (a .json config is written beside them)")
    a.add_argument("--cache-dir", default=".cache/train", help="cache for frozen-tower features")
    a.add_argument("--epochs", type=int, default=40, help="passes over the train images")
    a.add_argument("--batch", type=int, default=512, help="contrastive batch size (more in-batch negatives)")
    a.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    a.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    a.add_argument("--embed-dim", type=int, default=256, help="shared space size")
    a.add_argument("--hidden-dim", type=int, default=1024, help="hidden width of the heads")
    a.add_argument("--dropout", type=float, default=0.3, help="dropout in the heads")
    a.add_argument("--captions-per-image", type=int, default=8,
                   help="captions per image (product name + attribute phrasings), one drawn per epoch")
    a.add_argument("--name-prob", type=float, default=0.7,
                   help="probability that an image's caption in an epoch is its product name, not a phrasing")
    a.add_argument("--colour", default="lab", choices=["lab", "hsv"],
                   help="colour descriptor of the image side: lab (CIELAB palette of the item's own pixels plus the "
                        "HSV histogram) or hsv (the histogram alone, as the first heads)")
    a.add_argument("--palette-size", type=int, default=64, help="lab: colours in the palette learned from train pixels")
    a.add_argument("--augment-views", type=int, default=2,
                   help="colour-preserving augmented views of each train image (other backgrounds, crops, flips)")
    a.add_argument("--augment-p", type=float, default=0.5, help="probability an image is seen in an augmented view")
    a.add_argument("--attr-weight", type=float, default=0.5,
                   help="weight of the attribute losses (gender, type, colour, usage, pattern) on the image embedding")
    a.add_argument("--i2i-weight", type=float, default=0.1,
                   help="weight of the image-image loss (same type and colour are positives: 'more like this')")
    a.add_argument("--i2i-scale", type=float, default=10.0,
                   help="similarity scale of the image-image loss (lower than the caption loss's: groups stay loose "
                        "enough for product names to tell their items apart)")
    a.add_argument("--batch-size", type=int, default=64, help="images per tower batch when caching features")
    a.add_argument("--workers", type=int, default=None, help="decoding workers (default: min(4, cores))")
    a.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a.add_argument("--seed", type=int, default=0, help="seed for captions, shuffling and init")
    a.add_argument("--verbose", action="store_true", help="debug logging")

    t = sub.add_parser("text", help="stage 1: fine-tune the text side on composed triplets (sum fusion)")
    _composed_args(t, "lite-text.safetensors", epochs=10)
    t.add_argument("--layers", type=int, default=0,
                   help="lite: also fine-tune this many top MiniLM layers (0 = the text head only); "
                        "hf: top text-transformer layers (0 = the whole text encoder)")
    t.add_argument("--logit-scale", type=float, default=100.0, help="similarity scale of the classification loss")

    c = sub.add_parser("combiner", help="stage 2: train the Combiner on frozen cached features")
    _composed_args(c, "combiner.safetensors", epochs=40)
    c.add_argument("--text-encoder", default="base",
                   help="text side to train on: base, stage1 (weights/lite-text.safetensors) or a checkpoint path")
    c.add_argument("--projection-dim", type=int, default=None,
                   help="Combiner projection size (default: from --preset: 512, or 4x the feature size)")
    c.add_argument("--hidden-dim", type=int, default=None,
                   help="Combiner fused/λ branch hidden size (default: from --preset: 1024, or 8x)")
    c.add_argument("--dropout", type=float, default=None,
                   help="Combiner dropout (default: from --preset; the paper's 0.5 underfits the catalogue's "
                        "~6k triplets per epoch, 0.2 does not)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return {"align": run_align, "text": cmd_text, "combiner": cmd_combiner}[args.cmd](args)


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
