"""Training commands.

    python train.py align      train the lite encoder's projection heads (locked towers, contrastive loss)
                               on the catalogue's train split; picks the best epoch on val.
    python train.py text       stage 1 of CLIP4Cir (TOMM 2023): fine-tune both sides (--side both, as the
                               authors' --encoder both, --preset clip4cir's default), the text side (the
                               project preset's default) or the image side on composed
                               triplets with sum fusion -> a stage-1 checkpoint (weights/lite-text.safetensors)
    python train.py combiner   stage 2: train the Combiner on frozen, cached features
                               -> weights/combiner.safetensors (+ .json config, .train.json history)

Each command writes its history's curve beside it (.train.png: loss and validation metrics per epoch).

Composed training uses triplets generated from the catalogue's train split (cir.catalog.triplets), fresh ones
(new targets, new phrasings) each epoch; the best epoch is picked on val triplets. Frozen features are
computed once and cached, so every command runs in minutes on a small CPU and uses the GPU when present.
The test split is never read here.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any, Sequence, TypeVar

from cir.catalog import triplets
from cir.cli.common import (
    add_data_root,
    add_device,
    add_dtype,
    add_encoder,
    add_features,
    add_transform,
    add_verbose,
    non_negative_int,
    output_file,
    positive_int,
)
from cir.cli.original import COMB, FT, aliases
from cir.evaluation.protocols import EMPTY_CAPTIONS
from cir.training.align import train_align
from cir.training.config import (
    PRESETS,
    SELECT_CHOICES,
    STAGE1_SIDES,
    TRAIN_DATASETS,
    AlignConfig,
    CombinerStageConfig,
    ComposedConfig,
    TextStageConfig,
)
from cir.training.stages import train_combiner, train_text
from cir.utils import run_cli, setup_logging

C = TypeVar("C")


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config of `cls` from the parsed flags of the same names (lists become tuples: configs are frozen)."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.init and hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def _align_args(a: argparse.ArgumentParser) -> None:
    """`train.py align`'s flags; defaults are AlignConfig's."""
    d = AlignConfig()
    add_data_root(a)
    a.add_argument("--out", default=d.out, type=output_file,
                   help="where the heads go (a .json config is written beside them)")
    a.add_argument("--cache-dir", default=d.cache_dir, help="cache for frozen-tower features")
    a.add_argument("--epochs", type=positive_int, default=d.epochs, help="passes over the train images")
    a.add_argument("--batch", type=positive_int, default=d.batch,
                   help="contrastive batch size (more in-batch negatives)")
    a.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (one-cycle schedule)")
    a.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    a.add_argument("--embed-dim", type=positive_int, default=d.embed_dim, help="shared space size")
    a.add_argument("--hidden-dim", type=positive_int, default=d.hidden_dim, help="hidden width of the heads")
    a.add_argument("--dropout", type=float, default=d.dropout, help="dropout in the heads")
    a.add_argument("--captions-per-image", type=positive_int, default=d.captions_per_image,
                   help="texts per image (product name + attribute descriptions), one drawn per epoch")
    a.add_argument("--name-prob", type=float, default=d.name_prob,
                   help="probability that an image's text in an epoch is its product name, not a description")
    a.add_argument("--colour", default=d.colour, choices=["lab", "hsv"],
                   help="colour descriptor of the image side: lab (CIELAB palette of the item's own pixels plus the "
                        "HSV histogram) or hsv (the histogram alone, as the first heads)")
    a.add_argument("--palette-size", type=positive_int, default=d.palette_size,
                   help="lab: colours in the palette learned from train pixels")
    a.add_argument("--augment-views", type=non_negative_int, default=d.augment_views,
                   help="colour-preserving augmented views of each train image (other backgrounds, crops, flips)")
    a.add_argument("--augment-p", type=float, default=d.augment_p,
                   help="probability an image is seen in an augmented view")
    a.add_argument("--attr-weight", type=float, default=d.attr_weight,
                   help="weight of the attribute losses (gender, type, colour, usage, pattern) on the image embedding")
    a.add_argument("--i2i-weight", type=float, default=d.i2i_weight,
                   help="weight of the image-image loss (same type and colour are positives: 'more like this')")
    a.add_argument("--i2i-scale", type=float, default=d.i2i_scale,
                   help="similarity scale of the image-image loss (lower than the caption loss's: groups stay loose "
                        "enough for product names to tell their items apart)")
    a.add_argument("--photo-weight", type=float, default=d.photo_weight,
                   help="weight of the real-photos loss (real-photos/ beside the catalogue, train split: uploads land "
                        "where the studio shots of their kind are); 0 trains on the catalogue alone")
    a.add_argument("--photo-batch", type=int, default=d.photo_batch, help="real photos drawn per catalogue batch")
    a.add_argument("--photo-scale", type=float, default=d.photo_scale,
                   help="similarity scale of the photo -> catalogue contrastive loss")
    a.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="images per tower batch when caching features")
    a.add_argument("--workers", type=non_negative_int, default=d.workers,
                   help="decoding workers (default: min(4, cores))")
    add_device(a)
    a.add_argument("--seed", type=int, default=d.seed, help="seed for texts, shuffling and init")
    add_verbose(a)


ORIGINAL_SCRIPT = {"text": (FT,), "combiner": (COMB,)}   # the CLIP4Cir script each stage stands for


def _composed_args(sp: argparse.ArgumentParser, d: ComposedConfig) -> None:
    """Flags shared by both composed stages; defaults are the stage config's (None ones come from --preset)."""
    original = ORIGINAL_SCRIPT[d.cmd]
    sp.add_argument("--dataset", default=d.dataset, choices=TRAIN_DATASETS, type=str.lower,
                    help="what to train on: the catalogue's generated triplets, FashionIQ or CIRR (train split; "
                         "validation on val)")
    add_data_root(sp)
    sp.add_argument("--categories", nargs="*", default=None,
                    help="FashionIQ categories to train and validate on (default: every category found)")
    add_encoder(sp, note="; bof has no text side to train", original=original)
    add_features(sp, batch_default=None, original=original)
    sp.add_argument("--out", default=d.out, type=output_file, help="checkpoint path (.safetensors; .json beside it)")
    sp.add_argument("--cache-dir", default=d.cache_dir, help="where per-epoch resume state is kept")
    sp.add_argument("--preset", default=d.preset, choices=list(PRESETS),
                    help="defaults for the options left unset: project (tuned here), clip4cir (the CLIP4Cir "
                         "README's commands: stage 1 100 epochs, AdamW lr 2e-6, batch 128; stage 2 300 epochs, Adam "
                         "lr 2e-5, batch 4096, projection 4x and hidden 8x the feature size, dropout 0.5, --clip-bs "
                         "32; both the batch loss, targetpad 1.25) or clip4cir-argparse (the scripts' own defaults: "
                         "batch 512 / 1024, 300 epochs, stage 2 validated every 3rd epoch); docs/training.md")
    sp.add_argument("--epochs", *aliases("--epochs", *original), type=positive_int, default=None,
                    help="passes over the train triplets (default: from --preset)")
    sp.add_argument("--lr", *aliases("--lr", *original), type=float, default=None,
                    help="learning rate (default: from --preset)")
    sp.add_argument("--optimizer", default=None, choices=["adam", "adamw"], help="default: from --preset")
    sp.add_argument("--weight-decay", type=float, default=None,
                    help="weight decay (default 0 for adam, 0.01 for adamw as torch's AdamW)")
    sp.add_argument("--batch", type=positive_int, default=None,
                    help="triplets per batch (default: from --preset); with --negatives batch the other targets "
                         "of the batch are the negatives")
    sp.add_argument("--negatives", default=None, choices=["gallery", "batch"],
                    help="batch: the papers' loss, cross-entropy with one-hot labels over the batch's targets, "
                         "logit scale 100; gallery: this project's, over all train images, on the catalogue "
                         "every item with the wanted attributes a positive (default: gallery on catalog, batch on "
                         "fashioniq/cirr, or the preset's)")
    sp.add_argument("--per-kind", type=positive_int, default=d.per_kind,
                    help="catalog: train triplets of each kind drawn per epoch (cir.catalog.triplets kinds)")
    sp.add_argument("--val-per-kind", type=positive_int, default=d.val_per_kind,
                    help="catalog: val triplets of each kind (fixed seed 0)")
    sp.add_argument("--phrasings", default=d.phrasings, choices=triplets.PHRASINGS,
                    help="catalog: caption templates to train on; 'train' keeps every 4th template unseen, so "
                         "`evaluate.py --phrasings heldout` measures generalisation to new wordings")
    sp.add_argument("--photo-like", type=float, default=d.photo_like,
                    help="catalog: share of triplets whose reference is seen in a photo-like augmented view")
    sp.add_argument("--photo-triplets", type=int, default=d.photo_triplets,
                    help="catalog: triplets per epoch with a real train photo as the reference and a colour caption "
                         "(real-photos/ beside the catalogue; 0: none)")
    sp.add_argument("--name-edits", type=int, default=d.name_edits,
                    help="catalog: triplets per epoch mined from product-name differences ('the same from nike'), "
                         "words of the train partition only, so held-out words measure generalisation; 0: none")
    sp.add_argument("--exclude-kinds", nargs="+", default=d.exclude_kinds, choices=triplets.KINDS, metavar="KIND",
                    help="catalog: triplet kinds neither trained nor validated on, to measure how the model "
                         "generalises to edits it was never taught (cir.catalog.families: the kinds teaching each "
                         "change; benchmarks/bench_generalisation.py); valid: " + ", ".join(triplets.KINDS))
    add_device(sp)
    sp.add_argument("--seed", type=int, default=d.seed, help="seed for triplets, caption draws, shuffling and init")
    sp.add_argument("--restart", action="store_true", help="ignore saved resume state and start over")
    _run_args(sp, original)
    add_verbose(sp)


def _run_args(sp: argparse.ArgumentParser, original: tuple[str, ...]) -> None:
    """The composed stages' flags named as CLIP4Cir's scripts name them: preprocessing, validation, selection,
    what is kept on disk."""
    add_transform(sp, default_note="from --preset (clip4cir: targetpad), else the encoder's own")
    sp.add_argument("--validation-frequency", type=positive_int, default=None, metavar="N",
                    help="validate the first epoch, then every N-th (only those can be kept; default: from --preset, "
                         "1 but clip4cir-argparse's stage 2: 3)")
    sp.add_argument("--select", default=None, choices=SELECT_CHOICES,
                    help="how the best epoch is picked: catalog r10+attr10; fashioniq average (mean R@10 + R@50 over "
                         "the categories, as the original); cirr arithmetic, harmonic or geometric mean of R@1/5/10/50 "
                         "and Rsubset@1/2/3 (the original's three) or r5+rs1 (R@5 + Rsubset@1); default: from "
                         "--preset (clip4cir: arithmetic) or the dataset's first")
    sp.add_argument("--empty-captions", default=None, choices=EMPTY_CAPTIONS,
                    help="validation queries whose caption is empty: image (the reference alone, this project's) or "
                         "encode (the text encoder encodes \"\", as the original); default: from --preset")
    sp.add_argument("--save-training", action="store_true",
                    help="also keep every validated epoch's checkpoint (<out stem>.epochNNN.safetensors) and the last "
                         "training state (<out stem>.last.pt), which --resume continues from")
    sp.add_argument("--save-best", action="store_true",
                    help="accepted for the original scripts' command lines: the best epoch is always --out")
    sp.add_argument("--resume", nargs="?", const="last", default=None, metavar="STATE",
                    help="continue a run from a training state (default: --save-training's <out stem>.last.pt), e.g. "
                         "with more --epochs; the other settings must be the run's")
    add_dtype(sp, "the checkpoints and of the features extracted here")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    _align_args(sub.add_parser("align", help="train the lite encoder's projection heads on the catalogue"))
    t = sub.add_parser("text", help="stage 1: fine-tune the text and image sides on composed triplets (sum fusion)")
    _composed_args(t, TextStageConfig())
    t.add_argument("--side", default=None, choices=STAGE1_SIDES,
                   help="what is fine-tuned: both, text or image (default: the preset's: both with --preset "
                        "clip4cir, as CLIP4Cir's README: --encoder both; text with the project preset, which keeps "
                        "the shipped indexes valid). "
                        "CLIP: the text and image towers; lite: the text and image projection heads (its towers "
                        "stay frozen). A checkpoint with an image side changes the encoder's image features "
                        "wherever it loads: indexes are extracted again with it, and the demo cannot offer it as "
                        "a per-query text encoder")
    t.add_argument("--layers", type=non_negative_int, default=0,
                   help="lite: also fine-tune this many top MiniLM layers (0 = the text head only); "
                        "hf: top text-transformer layers (0 = the whole text encoder)")
    t.add_argument("--logit-scale", type=float, default=100.0, help="similarity scale of the classification loss")
    c = sub.add_parser("combiner", help="stage 2: train the Combiner on frozen cached features")
    _composed_args(c, CombinerStageConfig())
    c.add_argument("--text-encoder", *aliases("--text-encoder", COMB), "--stage1", dest="text_encoder",
                   default="base",
                   help="stage-1 side to train on: base, stage1 (weights/lite-text.safetensors), a checkpoint path, "
                        "or a CLIP fine-tuned by CLIP4Cir's clip_fine_tune.py (.pt); its image side too when it has "
                        "one (the features are then extracted with it)")
    c.add_argument("--projection-dim", type=positive_int, default=None,
                   help="Combiner projection size (default: from --preset: 512, 4x the feature size, or 2560)")
    c.add_argument("--hidden-dim", type=positive_int, default=None,
                   help="Combiner fused/λ branch hidden size (default: from --preset: 1024, 8x, or 5120)")
    c.add_argument("--dropout", type=float, default=None,
                   help="Combiner dropout (default: from --preset; the paper's 0.5 underfits the catalogue's "
                        "~6k triplets per epoch, 0.2 does not)")
    c.add_argument("--text-residual", type=float, default=None,
                   help="weight of the caption's own text score in the Combiner's output, trained with it (default: "
                        "from --preset: 0 in each, the paper's Combiner; > 0 trades taught edits for untaught ones, "
                        "docs/benchmarks.md)")
    return p


STAGES = {"align": (AlignConfig, train_align), "text": (TextStageConfig, train_text),
          "combiner": (CombinerStageConfig, train_combiner)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    config_cls, train = STAGES[args.cmd]
    print(json.dumps(train(from_args(config_cls, args))))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
