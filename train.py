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
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

import encoders
import triplets
from model import Combiner, CombinerConfig, element_wise_sum
from plots import plot_training
from train_align import run_align
from train_data import TRAIN_DATASETS, FrozenTexts, Item, TrainData, TrainingTexts, load_train_data
from utils import WEIGHTS_DIR, atomic_write, content_key, get_device, run_cli, setup_logging, write_json

log = logging.getLogger("train")


# ----------------------------------------------------------------------------------------------- composed

# Stage defaults: this project's (tuned on the catalogue's val split) and the original CLIP4Cir scripts'.
# Combiner sizes may be multiples of the encoder's feature size (RN50x4: 640 -> 2560 / 5120).
PRESETS: dict[str, dict[str, dict]] = {
    "project": {"text": {"lr": 3e-4, "batch": 256, "optimizer": "adam"},
                "combiner": {"lr": 1e-3, "batch": 256, "optimizer": "adam", "projection_dim": 512,
                             "hidden_dim": 1024, "dropout": 0.2}},
    "clip4cir": {"text": {"lr": 2e-6, "batch": 512, "optimizer": "adamw", "negatives": "batch"},
                 "combiner": {"lr": 2e-5, "batch": 1024, "optimizer": "adam", "projection_dim": "4x",
                              "hidden_dim": "8x", "dropout": 0.5, "negatives": "batch"}},
}
# The loss where the user and the preset say nothing: the gallery objective wins on the catalogue's val split
# (README); elsewhere, without attributes to spread the target over, the papers' batch classification.
DEFAULT_NEGATIVES = {"catalog": "gallery", "fashioniq": "batch", "cirr": "batch"}


def resolve_defaults(args, stage: str, feature_dim: int) -> None:
    """Fill the options left unset (None) from --preset, in place; "4x" means 4 x the feature size."""
    for key, value in PRESETS[args.preset][stage].items():
        if getattr(args, key, None) is None:
            setattr(args, key, feature_dim * int(value[:-1]) if isinstance(value, str) and value.endswith("x")
                    else value)
    if args.negatives is None:
        args.negatives = DEFAULT_NEGATIVES[args.dataset]


def composed_loss(logits: torch.Tensor, data: TrainData, batch: list[Item], tgts: torch.Tensor,
                  negatives: str) -> torch.Tensor:
    """batch: the papers' classification, one-hot over the batch's own targets (logits [B, B]); gallery: this
    project's, over every train image (logits [B, N]) with the dataset's soft targets."""
    if negatives == "batch":
        return F.cross_entropy(logits, torch.arange(len(batch), device=logits.device))
    return F.cross_entropy(logits, data.positives(batch, tgts).to(logits.device))


class Checkpointer:
    """Per-epoch training state under the cache dir, so an interrupted run resumes where it stopped."""

    def __init__(self, args, kind: str):
        skip = {"restart", "verbose", "workers", "epochs", "func", "cmd", "out"}
        key = content_key(kind, {k: v for k, v in sorted(vars(args).items()) if k not in skip})
        self.path = Path(args.cache_dir) / f"{kind}-{key}.resume.pt"
        if args.restart and self.path.exists():
            self.path.unlink()

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        log.info("resuming from %s (epoch %d done)", self.path, state["epoch"])
        return state

    def save(self, state: dict) -> None:
        with atomic_write(self.path) as f:
            torch.save(state, f)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _optimizer(args, params: list) -> torch.optim.Optimizer:
    """Adam, or AdamW as CLIP4Cir's stage 1 (eps 1e-7, torch's default decay 0.01); an explicit decay wins."""
    if args.optimizer == "adamw":
        decay = 0.01 if args.weight_decay is None else args.weight_decay
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=decay, eps=1e-7)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay or 0.0)


def _batches(n: int, size: int, drop_last: bool, generator: torch.Generator) -> list[list[int]]:
    """Shuffled index batches; drop_last as the papers' loaders (unless that would leave no batch)."""
    perm = torch.randperm(n, generator=generator).tolist()
    out = [perm[b:b + size] for b in range(0, n, size)]
    if drop_last and len(out) > 1 and len(out[-1]) < size:
        out.pop()
    return [b for b in out if len(b) >= 2]


def _fit(args, kind: str, module: torch.nn.Module, params: list, data: TrainData, step, validate) -> tuple:
    """The shared epoch loop: fresh items per epoch, best-on-val, resumable. Returns (best, history, ckpt)."""
    torch.manual_seed(args.seed)
    opt = _optimizer(args, params)
    ckpt = Checkpointer(args, kind)
    state = ckpt.load()
    start, best, best_state, history = 0, None, None, []
    if state:
        module.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        start, history, best_state = state["epoch"], state["history"], state["best_state"]
        best = max(history, key=data.score) if history else None
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    for epoch in range(start, args.epochs):
        items = data.epoch(epoch)
        batches = _batches(len(items), args.batch, args.negatives == "batch",
                           torch.Generator().manual_seed(args.seed * 1000 + epoch))
        module.train()
        total, seen, t0 = 0.0, 0, time.time()
        bar = tqdm(batches, desc=f"{kind} epoch {epoch + 1}/{args.epochs}", leave=False)
        for ib in bar:
            loss = step([items[i] for i in ib])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(ib), seen + len(ib)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        module.eval()
        with torch.no_grad():
            metrics = validate()
        row = {"epoch": epoch + 1, "loss": round(total / max(seen, 1), 4), "triplets": len(items),
               "seconds": round(time.time() - t0, 1), **metrics}
        history.append(row)
        log.info("%s epoch %d: %s", kind, epoch + 1, row)
        if best is None or data.score(row) > data.score(best):
            best = row
            best_state = _trainable_state(module, trainable)
        ckpt.save({"epoch": epoch + 1, "model": _trainable_state(module, trainable),
                   "opt": opt.state_dict(), "history": history, "best_state": best_state})
    module.load_state_dict(best_state, strict=False)
    module.eval()
    return best, history, ckpt


def _trainable_state(module: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if n in names}


def _rows(batch: list[Item], device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([it.ref for it in batch], device=device),
            torch.tensor([it.tgt for it in batch], device=device))


def cmd_combiner(args) -> int:
    device = get_device(args.device)
    encoder = encoders.load(args.encoder, device, text=args.text_encoder)
    resolve_defaults(args, "combiner", encoder.dim)
    data = load_train_data(encoder, args)
    texts = FrozenTexts(encoder)  # stage 2: the text side is frozen, each caption encoded once
    # Raw features in, as the papers: recorded, so compose gives the Combiner what it was trained on; the text
    # side as TextSide records it, so the server and evaluate.py pair it with the same side.
    cfg = CombinerConfig(feature_dim=encoder.dim, projection_dim=args.projection_dim, hidden_dim=args.hidden_dim,
                         dropout=args.dropout, encoder=encoder.name, text_encoder=encoder.text_side.record,
                         inputs="raw")
    combiner = Combiner(cfg).to(device)
    raw = data.train.raw_matrix().to(device)
    unit = F.normalize(raw, dim=-1)

    def step(batch: list[Item]) -> torch.Tensor:
        refs, tgts = _rows(batch, device)
        text = texts.encode_texts([it.caption for it in batch], raw=True).to(device)
        gallery = unit if args.negatives == "gallery" else unit[tgts]
        return composed_loss(combiner(raw[refs], text, gallery), data, batch, tgts.cpu(), args.negatives)

    t0 = time.time()
    best, history, ckpt = _fit(args, "combiner", combiner, list(combiner.parameters()), data, step,
                               lambda: _validate_on_cpu(data, texts, combiner, device))
    combiner.cpu().save(args.out)
    _finish(args, ckpt, best, history, time.time() - t0, {"config": asdict(cfg)})
    return 0


def _validate_on_cpu(data: TrainData, texts, module: torch.nn.Module, device) -> dict:
    """Validation runs where the indexes are (CPU); the module goes back to the training device after."""
    try:
        return data.validate(texts, "combiner", module.cpu())
    finally:
        module.to(device)


def cmd_text(args) -> int:
    device = get_device(args.device)
    encoder = encoders.load(args.encoder, device)
    resolve_defaults(args, "text", encoder.dim)
    data = load_train_data(encoder, args)
    prefixes = encoder.text_prefixes(args.layers)
    encoder.requires_grad_(False)
    params = [p for n, p in encoder.named_parameters() if n.startswith(tuple(prefixes))]
    for p in params:
        p.requires_grad_(True)
    raw = data.train.raw_matrix().to(device)
    unit = F.normalize(raw, dim=-1)

    def step(batch: list[Item]) -> torch.Tensor:
        refs, tgts = _rows(batch, device)
        text = encoder.text_forward([it.caption for it in batch])  # raw, as CLIP's encode_text
        q = element_wise_sum(raw[refs], text)  # CLIP4Cir's stage 1: sum fusion of raw features
        gallery = unit if args.negatives == "gallery" else unit[tgts]
        return composed_loss(args.logit_scale * q @ gallery.T, data, batch, tgts.cpu(), args.negatives)

    t0 = time.time()
    best, history, ckpt = _fit(args, "text", encoder, params, data, step,
                               lambda: data.validate(TrainingTexts(encoder), "sum"))
    encoder.cpu()
    encoder.save_text(args.out, prefixes, {"best_val": best, "layers": args.layers, "dataset": args.dataset})
    _finish(args, ckpt, best, history, time.time() - t0, {"prefixes": prefixes})
    return 0


def _finish(args, ckpt: Checkpointer, best: dict, history: list, seconds: float, extra: dict) -> None:
    out = Path(args.out)
    history_path = out.with_name(out.stem + ".train.json")
    write_json(history_path,
               {"args": {k: v for k, v in vars(args).items() if k != "func"}, "best": best, "history": history,
                "seconds": round(seconds, 1), **extra})
    log.info("wrote %s", plot_training(history_path, history, f"train.py {args.cmd} on {args.dataset}: {out.name}",
                                          best))
    ckpt.done()
    print(json.dumps({"saved": str(out), "best_val": best, "seconds": round(seconds, 1)}))


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


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
