"""The two composed training stages of CLIP4Cir: stage 1 fine-tunes the text side, the image side or both
with sum fusion, stage 2 trains the Combiner on frozen, cached features; the shared epoch loop (fresh items per
epoch, best epoch on val, resumable) and the losses. Both train float32 weights, under autocast on CUDA
(cir.precision)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cir import encoders
from cir.combiner import Combiner, CombinerConfig, element_wise_sum
from cir.encoders.texts import CachedTexts, StoredMemo, text_fingerprint
from cir.evaluation.plots import plot_training
from cir.precision import Precision
from cir.training.checkpoints import TORCH_DTYPES, Checkpointer, widen
from cir.training.config import PRESETS, CombinerStageConfig, ComposedConfig, TextStageConfig, record
from cir.training.data import Item, TrainData, TrainingTexts, load_train_data
from cir.training.image_side import TrainingImages
from cir.utils import get_device, write_json

log = logging.getLogger("train")


def composed_loss(logits: torch.Tensor, data: TrainData, batch: list[Item], tgts: torch.Tensor,
                  negatives: str) -> torch.Tensor:
    """batch: the papers' classification, one-hot over the batch's own targets (logits [B, B]); gallery: this
    project's, over every train image (logits [B, N]) with the dataset's soft targets."""
    if negatives == "batch":
        return F.cross_entropy(logits, torch.arange(len(batch), device=logits.device))
    return F.cross_entropy(logits, data.positives(batch, tgts).to(logits.device))


def _optimizer(cfg: ComposedConfig, params: list) -> torch.optim.Optimizer:
    """Adam, or AdamW as CLIP4Cir's stage 1 (eps 1e-7, torch's default decay 0.01); an explicit decay wins."""
    if cfg.optimizer == "adamw":
        decay = 0.01 if cfg.weight_decay is None else cfg.weight_decay
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=decay, eps=1e-7)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0)


def _batches(n: int, size: int, drop_last: bool, generator: torch.Generator) -> list[list[int]]:
    """Shuffled index batches; drop_last as the papers' loaders (unless that would leave no batch)."""
    perm = torch.randperm(n, generator=generator).tolist()
    out = [perm[b:b + size] for b in range(0, n, size)]
    if drop_last and len(out) > 1 and len(out[-1]) < size:
        out.pop()
    return [b for b in out if len(b) >= 2]


def _fit(cfg: ComposedConfig, module: torch.nn.Module, params: list, data: TrainData, step, validate,
         precision: Precision, export=None) -> tuple:
    """The shared epoch loop: fresh items per epoch, validated every --validation-frequency epochs, best-on-val,
    resumable; `export(path)` writes a checkpoint (--save-training's per-epoch files). Returns (best, history,
    ckpt). `step` runs its forward pass under precision.autocast() where it wants it; the update is precision's."""
    torch.manual_seed(cfg.seed)
    opt = _optimizer(cfg, params)
    ckpt = Checkpointer(cfg)
    kind = cfg.cmd
    state = ckpt.load()
    start, best, best_state, history = 0, None, None, []
    if state:
        module.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        start, history, best_state = state["epoch"], state["history"], state["best_state"]
        best = max((h for h in history if data.score(h) is not None), key=data.score, default=None)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    for epoch in range(start, cfg.epochs):
        items = data.epoch(epoch)
        batches = _batches(len(items), cfg.batch, cfg.negatives == "batch",
                           torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        module.train()
        total, seen, t0 = 0.0, 0, time.time()
        bar = tqdm(batches, desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for ib in bar:
            loss = step([items[i] for i in ib])
            precision.backward_step(opt, loss)
            total, seen = total + loss.item() * len(ib), seen + len(ib)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        module.eval()
        validated = epoch % cfg.validation_frequency == 0  # as CLIP4Cir: the first epoch, then every n-th
        with torch.no_grad():
            metrics = validate() if validated else {}
        row = {"epoch": epoch + 1, "loss": round(total / max(seen, 1), 4), "triplets": len(items),
               "seconds": round(time.time() - t0, 1), **metrics}
        history.append(row)
        log.info("%s epoch %d: %s", kind, epoch + 1, row)
        if validated and (best is None or data.score(row) > data.score(best)):
            best = row
            best_state = _trainable_state(module, trainable)
        if validated and cfg.save_training and export is not None:
            export(cfg.epoch_file(epoch + 1))
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


def train_combiner(cfg: CombinerStageConfig) -> dict:
    """Stage 2: the Combiner on frozen features, the best epoch on val, saved to cfg.out; returns a summary."""
    device = get_device(cfg.device)
    encoder = _load_encoder(cfg, device, text=cfg.text_encoder)
    cfg = cfg.with_preset(encoder.dim)
    precision = Precision.for_device(device)
    data = load_train_data(encoder, cfg)
    # Stage 2: the text side is frozen, each caption encoded once, and kept for the next run with this text side.
    memo = StoredMemo(Path(cfg.cache_dir) / f"captions-{text_fingerprint(encoder)}.safetensors")
    texts = CachedTexts(encoder, memo)
    # Raw features in, as the papers: recorded, so compose gives the Combiner what it was trained on; the text
    # side as TextSide records it, so the server and evaluate.py pair it with the same side.
    model_cfg = CombinerConfig(feature_dim=encoder.dim, projection_dim=cfg.projection_dim, hidden_dim=cfg.hidden_dim,
                               dropout=cfg.dropout, encoder=encoder.name, text_encoder=encoder.text_side.record,
                               inputs="raw", text_residual=cfg.text_residual)
    combiner = precision.master_weights(Combiner(model_cfg).to(device))
    ref_raw = data.reference_matrix().to(device)
    unit = F.normalize(data.train.raw_matrix().to(device), dim=-1)

    def step(batch: list[Item]) -> torch.Tensor:
        refs, tgts = _rows(batch, device)
        text = texts.encode_texts([it.caption for it in batch], raw=True).to(device)  # float32, frozen
        gallery = unit if cfg.negatives == "gallery" else unit[tgts]
        with precision.autocast():   # the Combiner alone, as CLIP4Cir's stage 2
            return composed_loss(combiner(ref_raw[refs], text, gallery), data, batch, tgts.cpu(), cfg.negatives)

    t0 = time.time()
    best, history, ckpt = _fit(cfg, combiner, list(combiner.parameters()), data, step,
                               lambda: _validate_on_cpu(data, texts, combiner, device), precision,
                               lambda path: combiner.save(path, TORCH_DTYPES[cfg.dtype]))
    memo.save()
    combiner.cpu().save(cfg.out, TORCH_DTYPES[cfg.dtype])
    return _finish(cfg, ckpt, best, history, time.time() - t0, {"config": asdict(model_cfg)})


def _load_encoder(cfg: ComposedConfig, device: torch.device, text: str | None = None):
    """--encoder with the preprocessing of --transform / --target-ratio (or its preset's)."""
    preset = PRESETS[cfg.preset][cfg.cmd]
    transform = cfg.transform or preset.get("transform")
    ratio = cfg.target_ratio if cfg.target_ratio is not None else preset.get("target_ratio")
    return encoders.load(cfg.encoder, device, text=text, preprocess=transform, target_ratio=ratio)


def _validate_on_cpu(data: TrainData, texts, module: torch.nn.Module, device) -> dict:
    """Validation runs where the indexes are (CPU); the module goes back to the training device after."""
    try:
        return data.validate(texts, "combiner", module.cpu())
    finally:
        module.to(device)


def stage1_prefixes(encoder, side: str, layers: int = 0) -> list[str]:
    """State-dict prefixes of what `train.py text --side` fine-tunes: the text side (+ its top `layers`), the
    image side (CLIP: the image tower; lite: the image head) or both. ValueError for an encoder without it."""
    try:
        return ((encoder.text_prefixes(layers) if side in ("text", "both") else [])
                + (encoder.image_prefixes() if side in ("image", "both") else []))
    except (NotImplementedError, AttributeError) as e:   # bof implements neither side
        raise ValueError(f"train.py text --side {side}: {encoder.name} cannot be fine-tuned here ({e})") from None


def _unfreeze(encoder: torch.nn.Module, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """Only the parameters under `prefixes` train."""
    encoder.requires_grad_(False)
    params = [p for n, p in encoder.named_parameters() if n.startswith(tuple(prefixes))]
    for p in params:
        p.requires_grad_(True)
    return params


def _stage1_step(cfg: TextStageConfig, encoder, data: TrainData, images: TrainingImages | None,
                 precision: Precision, device: torch.device):
    """One batch's loss: sum fusion of raw reference and caption features ranked against unit targets, the
    reference and target images encoded by the image side being trained, else read from the indexes."""
    ref_raw = data.reference_matrix().to(device) if images is None else None
    unit = F.normalize(data.train.raw_matrix().to(device), dim=-1) if images is None else None

    def step(batch: list[Item]) -> torch.Tensor:
        refs, tgts = _rows(batch, device)
        with precision.autocast():
            text = encoder.text_forward([it.caption for it in batch])  # raw, as CLIP's encode_text
            if images is None:
                ref, gallery = ref_raw[refs], (unit if cfg.negatives == "gallery" else unit[tgts])
            else:
                ref, gallery = images.references(refs), images.gallery(tgts)
            q = element_wise_sum(ref, text)  # CLIP4Cir's stage 1: sum fusion of raw features
            return composed_loss(cfg.logit_scale * q @ gallery.T, data, batch, tgts.cpu(), cfg.negatives)
    return step


def train_text(cfg: TextStageConfig) -> dict:
    """Stage 1: the text side, the image side or both (cfg.side) fine-tuned with sum fusion, the best epoch on
    val, saved to cfg.out; returns a summary."""
    device = get_device(cfg.device)
    encoder = _load_encoder(cfg, device)
    cfg = cfg.with_preset(encoder.dim)
    prefixes = stage1_prefixes(encoder, cfg.side, cfg.layers)   # an unsupported side fails before any work
    precision = Precision.for_device(device)
    precision.master_weights(encoder)   # clip.load gives float16 weights on CUDA: AdamW must update float32 ones
    data = load_train_data(encoder, cfg)
    params = _unfreeze(encoder, prefixes)
    images = TrainingImages(encoder, data, cfg) if cfg.side != "text" else None

    def validate() -> dict:
        if images is not None:
            images.refresh()   # validation ranks val images encoded by the image side as it is now
        return data.validate(TrainingTexts(encoder), "sum")

    t0 = time.time()
    def export(path, info: dict | None = None) -> None:
        encoder.save_text(path, prefixes, info or {"layers": cfg.layers, "side": cfg.side, "dataset": cfg.dataset})
        widen(path, encoder.state_dict(), cfg.dtype)

    try:
        best, history, ckpt = _fit(cfg, encoder, params, data, _stage1_step(cfg, encoder, data, images, precision,
                                                                            device), validate, precision, export)
    finally:
        if images is not None:
            images.close()
    encoder.cpu()
    export(cfg.out, {"best_val": best, "layers": cfg.layers, "side": cfg.side, "dataset": cfg.dataset})
    return _finish(cfg, ckpt, best, history, time.time() - t0, {"prefixes": prefixes, "side": cfg.side})


def _finish(cfg: ComposedConfig, ckpt: Checkpointer, best: dict, history: list, seconds: float,
            extra: dict) -> dict:
    """The .train.json history (with the config as it ran) and its curve beside the checkpoint; the summary."""
    out = Path(cfg.out)
    history_path = out.with_name(out.stem + ".train.json")
    write_json(history_path, {"args": record(cfg), "best": best, "history": history, "seconds": round(seconds, 1),
                              **extra})
    log.info("wrote %s", plot_training(history_path, history, f"train.py {cfg.cmd} on {cfg.dataset}: {out.name}",
                                          best))
    ckpt.done()
    return {"saved": str(out), "best_val": best, "seconds": round(seconds, 1)}
