"""Typed configs of the three training commands, one per stage; each field is the flag of the same name
(`python3 train.py <stage> --help` says more). A run records its config, as it ran (presets resolved), under
"args" in the checkpoint's .train.json, and keys its resume state on it.

    AlignConfig          train.py align     the lite encoder's projection heads
    TextStageConfig      train.py text      stage 1: the text side, the image side or both, sum fusion
    CombinerStageConfig  train.py combiner  stage 2: the Combiner on frozen features
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from cir.catalog import triplets
from cir.extraction import IndexStore
from cir.paths import WEIGHTS_DIR
from cir.utils import content_key

# Stage defaults: this project's (tuned on the catalogue's val split), the CLIP4Cir README's commands (clip4cir)
# and the CLIP4Cir scripts' argparse defaults (clip4cir-argparse). Combiner sizes may be multiples of the
# encoder's feature size (RN50x4: 640 -> 2560 / 5120). A key a config does not have is left out.
PRESETS: dict[str, dict[str, dict]] = {
    "project": {"text": {"epochs": 10, "lr": 3e-4, "batch": 256, "optimizer": "adam", "batch_size": 64,
                         "validation_frequency": 1, "empty_captions": "image", "side": "text"},
                "combiner": {"epochs": 40, "lr": 1e-3, "batch": 256, "optimizer": "adam", "projection_dim": 512,
                             "hidden_dim": 1024, "dropout": 0.2, "text_residual": 0.0, "batch_size": 64,
                             "validation_frequency": 1, "empty_captions": "image"}},
    # README: clip_fine_tune.py --num-epochs 100 --encoder both --learning-rate 2e-6 --batch-size 128
    # --transform targetpad --target-ratio 1.25 --validation-frequency 1; combiner_train.py --projection-dim 2560
    # --hidden-dim 5120 --num-epochs 300 --combiner-lr 2e-5 --batch-size 4096 --clip-bs 32 (same transform).
    # Stage 1 extracts its frozen features with stage 2's --clip-bs: a feature folder is keyed by its
    # extraction batch, so the two stages share theirs.
    "clip4cir": {"text": {"epochs": 100, "lr": 2e-6, "batch": 128, "optimizer": "adamw", "negatives": "batch",
                          "transform": "targetpad", "target_ratio": 1.25, "side": "both", "batch_size": 32,
                          "validation_frequency": 1, "select": "arithmetic", "empty_captions": "encode"},
                 "combiner": {"epochs": 300, "lr": 2e-5, "batch": 4096, "optimizer": "adam", "projection_dim": "4x",
                              "hidden_dim": "8x", "dropout": 0.5, "negatives": "batch", "text_residual": 0.0,
                              "transform": "targetpad", "target_ratio": 1.25, "batch_size": 32,
                              "validation_frequency": 1, "select": "arithmetic", "empty_captions": "encode"}},
    # The scripts run without flags: clip_fine_tune.py 300 epochs, batch 512, validation every epoch;
    # combiner_train.py batch 1024, projection 640 * 4 and hidden 640 * 8 (absolute), validation every 3rd epoch.
    "clip4cir-argparse": {
        "text": {"epochs": 300, "lr": 2e-6, "batch": 512, "optimizer": "adamw", "negatives": "batch",
                 "transform": "targetpad", "target_ratio": 1.25, "side": "both", "batch_size": 32,
                 "validation_frequency": 1, "select": "arithmetic", "empty_captions": "encode"},
        "combiner": {"epochs": 300, "lr": 2e-5, "batch": 1024, "optimizer": "adam", "projection_dim": 2560,
                     "hidden_dim": 5120, "dropout": 0.5, "negatives": "batch", "text_residual": 0.0,
                     "transform": "targetpad", "target_ratio": 1.25, "batch_size": 32, "validation_frequency": 3,
                     "select": "arithmetic", "empty_captions": "encode"}},
}
# The loss where the user and the preset say nothing: the gallery objective wins on the catalogue's val split
# (docs/benchmarks.md); elsewhere, without attributes to spread the target over, the papers' batch loss.
DEFAULT_NEGATIVES = {"catalog": "gallery", "fashioniq": "batch", "cirr": "batch"}
TRAIN_DATASETS = ("catalog", "fashioniq", "cirr")
# How the best epoch is picked, per dataset (--select; the first is the default): the validation metrics
# summed. FashionIQ: the original's average recall (mean R@10 and R@50 over the categories); CIRR: the
# arithmetic, harmonic or geometric mean of the seven metrics, as CLIP4Cir's scripts (which keep one best
# checkpoint per mean), or this project's R@5 + Rsubset@1 (the CIRR leaderboard's "avg").
SELECT_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "catalog": {"r10+attr10": ("R@10", "attr@10")},
    "fashioniq": {"average": ("average_R@10", "average_R@50")},
    "cirr": {"r5+rs1": ("R@5", "Rsubset@1"), "arithmetic": ("mean_arithmetic",),
             "harmonic": ("mean_harmonic",), "geometric": ("mean_geometric",)},
}
SELECT_CHOICES = tuple(dict.fromkeys(k for rules in SELECT_KEYS.values() for k in rules))
DTYPES = ("float16", "float32")     # checkpoint and feature storage (--dtype)
STAGE1_SIDES = ("both", "text", "image")   # what `train.py text --side` fine-tunes (CLIP4Cir's --encoder)
# Fields that do not change what a run computes: a resumed run may differ in them.
_NOT_IN_RESUME_KEY = {"restart", "verbose", "workers", "epochs", "cmd", "out", "save_training", "resume"}

C = TypeVar("C")


def record(cfg: Any) -> dict:
    """The config as .train.json records it under "args"."""
    return asdict(cfg)


@dataclass(frozen=True)
class AlignConfig:
    """`train.py align`: the lite encoder's heads on the catalogue's train split, the best epoch picked on val."""

    cmd: str = field(default="align", init=False)
    data_root: str | None = None        # catalogue folder (None: $CIR_DATA_ROOT or ../shared/data)
    out: str = str(WEIGHTS_DIR / "lite.safetensors")   # the heads (+ .json config beside them)
    cache_dir: str = ".cache/train"     # cache of frozen-tower features
    epochs: int = 40                    # passes over the train images
    batch: int = 512                    # contrastive batch size (more in-batch negatives)
    lr: float = 2e-3                    # peak learning rate (one-cycle schedule)
    weight_decay: float = 0.05          # AdamW weight decay
    embed_dim: int = 256                # shared space size
    hidden_dim: int = 1024              # hidden width of the heads
    dropout: float = 0.3                # dropout in the heads
    captions_per_image: int = 8         # texts per image (product name + attribute descriptions), one per epoch
    name_prob: float = 0.7              # probability that an image's text in an epoch is its product name
    colour: str = "lab"                 # colour descriptor: lab (CIELAB palette + HSV histogram) or hsv
    palette_size: int = 64              # lab: colours in the palette learned from train pixels
    augment_views: int = 2              # colour-preserving augmented views of each train image
    augment_p: float = 0.5              # probability an image is seen in an augmented view
    attr_weight: float = 0.5            # weight of the attribute losses on the image embedding
    i2i_weight: float = 0.1             # weight of the image-image loss (same type and colour are positives)
    i2i_scale: float = 10.0             # similarity scale of the image-image loss
    photo_weight: float = 0.25          # weight of the real-photos loss (training.photos; 0: catalogue only)
    photo_batch: int = 192              # real photos per catalogue batch
    photo_scale: float = 20.0           # similarity scale of the photo -> catalogue contrastive loss
    batch_size: int = 64                # images per tower batch when caching features
    workers: int | None = None          # decoding workers (None: min(4, cores))
    device: str = "auto"                # auto (CUDA when present), cpu, cuda
    seed: int = 0                       # seed for texts, shuffling and init
    verbose: bool = False               # debug logging


@dataclass(frozen=True)
class ComposedConfig:
    """What both composed stages share. Fields left None come from `preset` (see with_preset)."""

    cmd: str = field(default="", init=False)
    dataset: str = "catalog"            # catalog (generated triplets), fashioniq or cirr: train split, val split
    data_root: str | None = None        # dataset folder (None: $CIR_DATA_ROOT or ../shared/data)
    categories: tuple[str, ...] | None = None   # FashionIQ categories (None: every one found)
    encoder: str = "lite"               # encoder name (encoders.available_models())
    features: str = "features"          # features root: train/val indexes are read from (or extracted into) it
    out: str = ""                       # checkpoint path (.safetensors; .json beside it)
    cache_dir: str = ".cache/train"     # where per-epoch resume state is kept
    preset: str = "project"             # defaults of the None fields: project, clip4cir, clip4cir-argparse
    epochs: int | None = None           # passes over the train triplets (preset)
    lr: float | None = None             # learning rate
    optimizer: str | None = None        # adam or adamw
    weight_decay: float | None = None   # None: 0 for adam, 0.01 for adamw (torch's AdamW)
    batch: int | None = None            # triplets per batch
    negatives: str | None = None        # batch (the papers' loss) or gallery (this project's); None: by dataset
    per_kind: int = 1500                # catalog: train triplets of each kind drawn per epoch
    val_per_kind: int = 500             # catalog: val triplets of each kind (fixed seed 0)
    phrasings: str = "train"            # catalog: caption templates trained on (train keeps every 4th unseen)
    photo_like: float = 0.3             # catalog: share of triplets whose reference is seen in a photo-like view
                                        # (training.augment: other backgrounds, crops), as uploads are
    photo_triplets: int = 1500          # catalog: triplets per epoch with a real train photo as the reference and a
                                        # colour caption (real-photos/ beside the catalogue; 0: none)
    name_edits: int = 1500              # catalog: triplets per epoch mined from product-name differences
                                        # (catalog.name_edits; words of the "train" partition only; 0: none)
    exclude_kinds: tuple[str, ...] = ()  # catalog: triplet kinds neither trained nor validated on (a family's:
                                        # catalog.families), to measure how the path generalises to them
    batch_size: int | None = None       # images per batch if features must be extracted (preset; CLIP4Cir's --clip-bs)
    workers: int | None = None          # decoding workers if features must be extracted
    transform: str | None = None        # image preprocessing (PREPROCESS_MODES; preset, None: the encoder's own)
    target_ratio: float | None = None   # targetpad's ratio (preset, None: 1.25)
    validation_frequency: int | None = None  # validate (and so pick and keep) every n-th epoch, from the first
    select: str | None = None           # how the best epoch is picked (SELECT_KEYS; preset, else the dataset's own)
    empty_captions: str | None = None   # validation queries with an empty caption: image alone or encode "" (preset)
    save_training: bool = False         # also keep every validated epoch's checkpoint and the last training state
    resume: str | None = None           # continue from a last state (--save-training's <out>.last.pt, or a path)
    dtype: str = "float16"              # of the checkpoint and of features extracted here (float32: exact)
    device: str = "auto"                # auto (CUDA when present), cpu, cuda
    seed: int = 0                       # seed for triplets, caption draws, shuffling and init
    restart: bool = False               # ignore saved resume state and start over
    verbose: bool = False               # debug logging

    def __post_init__(self) -> None:
        _check_excluded(self.exclude_kinds, self.dataset)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        rules = SELECT_KEYS.get(self.dataset, {})
        if self.select is not None and self.select not in rules:
            raise ValueError(f"--select {self.select} does not apply to {self.dataset}; valid there: "
                             f"{', '.join(rules)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")

    @property
    def store(self) -> IndexStore:
        """Where the train and val indexes are, and how a missing one is extracted."""
        return IndexStore(Path(self.features), self.batch_size or 64, self.workers, self.dtype)

    def with_preset(self: C, feature_dim: int) -> C:
        """This config with the None fields filled from its preset; "4x" means 4 x the feature size. A CIRR
        selection rule of the preset gives way to the dataset's own rule elsewhere."""
        filled: dict[str, Any] = {}
        own = {f.name for f in fields(self)}
        for key, value in PRESETS[self.preset][self.cmd].items():
            if key in own and getattr(self, key) is None:
                filled[key] = (feature_dim * int(value[:-1]) if isinstance(value, str) and value.endswith("x")
                               else value)
        if self.negatives is None and "negatives" not in filled:
            filled["negatives"] = DEFAULT_NEGATIVES[self.dataset]
        rules = SELECT_KEYS[self.dataset]
        if filled.get("select", self.select) not in rules:
            filled["select"] = next(iter(rules))
        return replace(self, **filled)

    def resume_args(self) -> dict:
        """The settings a resume state is valid for: everything but the epochs asked for, the output path and
        the bookkeeping flags."""
        return {k: v for k, v in sorted(asdict(self).items()) if k not in _NOT_IN_RESUME_KEY}

    def resume_file(self) -> Path:
        """The resume state of this very run (its settings, not the epochs asked for or the output path)."""
        return Path(self.cache_dir) / f"{self.cmd}-{content_key(self.cmd, self.resume_args())}.resume.pt"

    def epoch_file(self, epoch: int) -> Path:
        """--save-training: the checkpoint of `epoch` beside --out (<stem>.epoch<N><suffix>)."""
        out = Path(self.out)
        return out.with_name(f"{out.stem}.epoch{epoch:03d}{out.suffix}")

    def last_file(self) -> Path:
        """--save-training: the training state after the last epoch done (what --resume continues from)."""
        out = Path(self.out)
        return out.with_name(f"{out.stem}.last.pt")


def _check_excluded(kinds: tuple[str, ...], dataset: str) -> None:
    """exclude_kinds names catalogue triplet kinds, leaves some to train on, and only where there are kinds."""
    if isinstance(kinds, str):  # a tuple of one string iterated as characters would name no kind
        raise ValueError(f"exclude_kinds is a tuple of triplet kinds, not the string {kinds!r}")
    unknown = [k for k in kinds if k not in triplets.KINDS]
    if unknown:
        raise ValueError(f"unknown triplet kind{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"in exclude_kinds; valid: {', '.join(triplets.KINDS)}")
    if kinds and dataset != "catalog":
        raise ValueError(f"exclude_kinds applies to the catalog dataset only (its generated triplet kinds), "
                         f"not {dataset}")
    if set(triplets.KINDS) <= set(kinds):
        raise ValueError("exclude_kinds leaves out every triplet kind: nothing to train on")


@dataclass(frozen=True)
class TextStageConfig(ComposedConfig):
    """`train.py text`: stage 1 of CLIP4Cir (TOMM 2023), the text side, the image side or both fine-tuned with
    sum fusion."""

    cmd: str = field(default="text", init=False)
    out: str = str(WEIGHTS_DIR / "lite-text.safetensors")
    side: str | None = None             # both, text or image (CLIP: the towers; lite: the projection heads);
                                        # preset: both for clip4cir (the authors' --encoder both), text for
                                        # project (the shipped lite-text checkpoint leaves every index valid)
    layers: int = 0                     # lite: top MiniLM layers also fine-tuned (0: the head only); hf: top layers
    logit_scale: float = 100.0          # similarity scale of the classification loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.side is not None and self.side not in STAGE1_SIDES:
            raise ValueError(f"unknown stage-1 side {self.side!r}; valid: {', '.join(STAGE1_SIDES)}")


@dataclass(frozen=True)
class CombinerStageConfig(ComposedConfig):
    """`train.py combiner`: stage 2, the Combiner on frozen, cached features."""

    cmd: str = field(default="combiner", init=False)
    out: str = str(WEIGHTS_DIR / "combiner.safetensors")
    text_encoder: str = "base"          # the text side trained on: base, stage1 or a checkpoint path
    projection_dim: int | None = None   # Combiner projection size (preset: 512, or 4x the feature size)
    hidden_dim: int | None = None       # fused / λ branch hidden size (preset: 1024, or 8x)
    dropout: float | None = None        # Combiner dropout (preset)
    text_residual: float | None = None  # weight of the caption's own text score in the output (preset; 0: CLIP4Cir)
