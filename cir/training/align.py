"""Training of the lite encoder's projection heads (`python train.py align`): locked towers, trained heads.

On the catalogue's train split: a contrastive loss between each image and one of its texts (the product
name or a description of its attributes, cir.catalog.descriptions), plus attribute losses on the image
embedding (a linear classifier each for gender, type, colour, usage and pattern), so what shoppers ask for
is linearly readable from the embedding. The image side sees each item's frozen EfficientNet-Lite0 features and its
colour descriptor (cir.encoders.colour; the CIELAB palette is learned here from train pixels and shipped with the
heads). Train images also come in colour-preserving augmented views (cir.training.augment: other backgrounds, crops,
flips), so photos that are not studio shots land near their items. Frozen-tower features of every view are
computed once and cached. The epoch is picked on val: text->image R@1 and R@10 and image->image P@10 of
the same type and colour. The test split is never read here.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from cir.catalog.descriptions import training_descriptions
from cir.data import ImageRecord, catalog_images, known, resolve_data_root
from cir.encoders import LiteConfig, LiteEncoder, LiteHeads
from cir.encoders.colour import learn_palette
from cir.evaluation.metrics import recall_at_k
from cir.evaluation.plots import plot_training
from cir.evaluation.protocols import image2image
from cir.extraction.job import default_workers, iter_batches
from cir.index import FeatureIndex, search
from cir.training.augment import Augmented
from cir.training.config import AlignConfig, record
from cir.training.photos import PhotoSet, photo_loss, photo_set, photo_type_precision
from cir.utils import content_key, get_device, save_tensors, write_json

log = logging.getLogger("train")
ATTRIBUTES = ("gender", "articleType", "baseColour", "usage", "pattern")  # the attribute losses' labels


def cached_image_backbone(encoder: LiteEncoder, records: Sequence[ImageRecord], cache_dir: Path,
                          tag: str, batch_size: int = 64, workers: int | None = None, view: int = 0,
                          seed: int = 0) -> dict:
    """Frozen lite-tower features {names, pooled, colour} of `records` (view 0: as they are; view v > 0: the
    v-th augmented view), computed once and cached under a key of everything they depend on."""
    names = [r.name for r in records]
    heads = encoder.heads
    colour_state = [asdict(heads.cfg), heads.palette.tolist() if hasattr(heads, "palette") else None]
    key = content_key(encoder.preprocess.describe(), names, colour_state, view, seed)
    f = cache_dir / f"{tag}-v{view}-{key}.safetensors"
    if f.exists():
        return {"names": json.loads(f.with_suffix(".json").read_text()), **load_file(f)}
    prep = encoder.preprocess if view == 0 else Augmented(encoder.preprocess, seed, view)
    pooled, colour, kept = [], [], []
    workers = default_workers() if workers is None else workers
    for idx, pixels, bad in tqdm(iter_batches([r.path for r in records], prep, batch_size, workers),
                                 total=(len(records) + batch_size - 1) // batch_size, desc=f"towers {tag} v{view}"):
        for i, err in bad:
            log.warning("skipped %s: %s", names[i], err)
        if pixels is not None:
            p, c = encoder.image_backbone(pixels)
            pooled.append(p)
            colour.append(c)
            kept += [names[i] for i in idx]
    data = {"pooled": torch.cat(pooled), "colour": torch.cat(colour)}
    save_tensors(f, data)
    write_json(f.with_suffix(".json"), kept)
    return {"names": kept, **data}


def cached_text_backbone(encoder: LiteEncoder, texts: Sequence[str], cache_dir: Path, tag: str) -> torch.Tensor:
    """Frozen MiniLM embeddings of `texts`, cached by content."""
    f = cache_dir / f"{tag}-{content_key(list(texts))}.safetensors"
    if f.exists():
        return load_file(f)["text"]
    out = [encoder.text_backbone(list(texts[i:i + 512])) for i in tqdm(range(0, len(texts), 512), desc=f"text {tag}")]
    x = torch.cat(out)
    save_tensors(f, {"text": x})
    return x


def fit_palette(encoder: LiteEncoder, records: Sequence[ImageRecord], k: int, seed: int,
                sample: int = 1500, workers: int | None = None) -> torch.Tensor:
    """The CIELAB palette of the colour descriptor, learned from the item pixels of `sample` train images."""
    rng = random.Random(seed)
    recs = rng.sample(list(records), min(sample, len(records)))
    workers = default_workers() if workers is None else workers
    rgb = [encoder.preprocess.unnormalize(px) for _, px, _ in
           iter_batches([r.path for r in recs], encoder.preprocess, 64, workers) if px is not None]
    return learn_palette(torch.cat(rgb), k, seed)


class AttributeClassifiers(nn.Module):
    """A linear classifier per attribute on the image embedding (training only; not shipped)."""

    def __init__(self, dim: int, labels: dict[str, list[str]]):
        super().__init__()
        self.labels = labels
        self.linear = nn.ModuleDict({a: nn.Linear(dim, len(v)) for a, v in labels.items()})

    def loss(self, emb: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over attributes; label -1 (unknown or too rare) is ignored."""
        losses = [F.cross_entropy(self.linear[a](emb), t, ignore_index=-1) for a, t in targets.items()
                  if (t >= 0).any()]
        return torch.stack(losses).mean() if losses else emb.sum() * 0


def attribute_targets(attrs: Sequence[dict],
                      min_count: int = 5) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    """Per attribute: the values seen at least `min_count` times, and each item's class index (-1: none)."""
    labels, targets = {}, {}
    for a in ATTRIBUTES:
        counts: dict[str, int] = {}
        for x in attrs:
            v = x.get(a, "")
            if known(v):
                counts[v] = counts.get(v, 0) + 1
        values = sorted(v for v, c in counts.items() if c >= min_count)
        if len(values) < 2:  # nothing to classify (e.g. a catalogue without the attribute)
            continue
        labels[a] = values
        index = {v: i for i, v in enumerate(labels[a])}
        targets[a] = torch.tensor([index.get(x.get(a, ""), -1) for x in attrs])
    return labels, targets


def same_item_loss(img: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Image-image supervised contrastive loss: other images of the batch with the same `key` (type and
    colour) are the positives of each image, so "more like this" finds the same kind of item in its colour."""
    logits = scale * img @ img.T
    eye = torch.eye(len(img), dtype=torch.bool, device=img.device)
    pos = (key[:, None] == key[None, :]) & ~eye
    rows = pos.any(1)
    if not rows.any():
        return img.sum() * 0
    logits = logits.masked_fill(eye, -1e4)  # not -inf: a zero target times -inf would be NaN
    target = pos[rows].float() / pos[rows].sum(1, keepdim=True)
    return F.cross_entropy(logits[rows], target)


def _val_metrics(heads: LiteHeads, va: dict, va_text: torch.Tensor, va_recs: list, device,
                 photos: tuple[PhotoSet, torch.Tensor] | None = None) -> dict:
    """Val text->image recall, image->image P@10; with (val photos, val images' type ids): photo type P@10."""
    with torch.no_grad():
        gi = heads.image(va["pooled"].to(device), va["colour"].to(device)).cpu()
        qt = heads.text(va_text.to(device)).cpu()
    _, ranked = search(qt, gi, 10)
    metrics = recall_at_k(ranked, torch.arange(len(qt)), (1, 5, 10))
    metrics["i2i_type_colour_P@10"] = image2image(FeatureIndex(gi, list(va["names"])), va_recs)["P@10"]
    if photos is not None:
        metrics["photo_type_P@10"] = round(photo_type_precision(heads, photos[0], gi.to(device), photos[1]), 2)
    return metrics


def _score(m: dict) -> float:
    return (m["R@1"] + m["R@10"]) / 2 + m["i2i_type_colour_P@10"] + m.get("photo_type_P@10", 0.0)


def _features(enc: LiteEncoder, root: Path, cfg: AlignConfig) -> tuple[list[dict], list[dict], dict, list]:
    """(train views, train attrs, val features, val records in feature order); every train view holds the same
    names in order."""
    cache = Path(cfg.cache_dir)
    recs = {s: catalog_images(root, s) for s in ("train", "val")}  # never test
    views = [cached_image_backbone(enc, recs["train"], cache, "catalog-train", cfg.batch_size, cfg.workers, v,
                                   cfg.seed) for v in range(cfg.augment_views + 1)]
    common = set.intersection(*(set(v["names"]) for v in views))
    for v in views:  # an image one view failed to decode is dropped from all
        keep = [i for i, n in enumerate(v["names"]) if n in common]
        v.update(names=[v["names"][i] for i in keep], pooled=v["pooled"][keep], colour=v["colour"][keep])
    va = cached_image_backbone(enc, recs["val"], cache, "catalog-val", cfg.batch_size, cfg.workers)
    by_name = {r.name: r for s in recs for r in recs[s]}
    return views, [by_name[n].attrs for n in views[0]["names"]], va, [by_name[n] for n in va["names"]]


@dataclass
class _TrainSet:
    """Everything an epoch draws from, on the training device."""
    pooled: torch.Tensor            # [views, N, 1280] frozen-tower features
    colour: torch.Tensor            # [views, N, colour_dim] colour descriptors
    text_ids: torch.Tensor          # [N, texts]: ids into text_feats; column 0 is the product name
    text_feats: torch.Tensor        # [vocabulary, 384] frozen MiniLM embeddings of every text
    targets: dict[str, torch.Tensor]  # attribute -> class per item (-1: unknown)
    same_key: torch.Tensor          # [N] id of (type, colour): the image-image loss's groups
    photos: PhotoSet | None = None  # real photos (train split) and the types they accept; None: not used


def _train_set(enc: LiteEncoder, views: list[dict], attrs: list[dict], cfg: AlignConfig,
               device) -> tuple[_TrainSet, dict]:
    """The train set (texts fixed by the seed) and the attribute label lists."""
    rng = random.Random(cfg.seed)
    texts = [training_descriptions(a, rng, cfg.captions_per_image) for a in attrs]
    vocab = sorted({t for ts in texts for t in ts})
    text_id = {t: i for i, t in enumerate(vocab)}
    labels, targets = attribute_targets(attrs)
    groups: dict[tuple, int] = {}
    data = _TrainSet(
        pooled=torch.stack([v["pooled"] for v in views]).to(device),
        colour=torch.stack([v["colour"] for v in views]).to(device),
        text_ids=torch.tensor([[text_id[t] for t in ts] for ts in texts]),
        text_feats=cached_text_backbone(enc, vocab, Path(cfg.cache_dir), "texts").to(device),
        targets=targets,
        same_key=torch.tensor([groups.setdefault((a.get("articleType"), a.get("baseColour")), len(groups))
                               for a in attrs]))
    return data, labels


def _train_epoch(heads: LiteHeads, clf: AttributeClassifiers, data: _TrainSet, opt, sched, g: torch.Generator,
                 cfg: AlignConfig, device) -> float:
    """One pass over the train images; returns the mean loss."""
    heads.train()
    n = data.pooled.shape[1]
    perm = torch.randperm(n, generator=g)
    # Column 0 is the product name (what people paste into a search box); the rest are phrasings.
    pick = torch.where(torch.rand(n, generator=g) < cfg.name_prob, 0,
                       torch.randint(1, data.text_ids.shape[1], (n,), generator=g))
    views = data.pooled.shape[0]
    view = torch.where(torch.rand(n, generator=g) < cfg.augment_p,
                       torch.randint(1, views, (n,), generator=g) if views > 1 else 0, 0)
    total = 0.0
    for b in range(0, n, cfg.batch):
        idx = perm[b:b + cfg.batch]
        v, tid, rows = view[idx].to(device), data.text_ids[idx, pick[idx]], idx.to(device)
        img = heads.image(data.pooled[v, rows], data.colour[v, rows])
        txt = heads.text(data.text_feats[tid.to(device)])
        logits = heads.logit_scale.exp().clamp(max=100) * img @ txt.T
        # Identical texts in a batch ("black t-shirt") are all correct: soft multi-positive targets.
        same = (tid[:, None] == tid[None, :]).float().to(device)
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        loss = loss + cfg.attr_weight * clf.loss(img, {a: t[idx].to(device) for a, t in data.targets.items()})
        if cfg.i2i_weight:
            loss = loss + cfg.i2i_weight * same_item_loss(img, data.same_key[idx].to(device), cfg.i2i_scale)
        if data.photos is not None and cfg.photo_weight:
            loss = loss + cfg.photo_weight * _photo_step(heads, clf, data, img, idx, g, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / n


def _photo_step(heads: LiteHeads, clf: AttributeClassifiers, data: _TrainSet, img: torch.Tensor, idx: torch.Tensor,
                g: torch.Generator, cfg: AlignConfig) -> torch.Tensor:
    """The real-photos loss of one batch: a random draw of photos, each in a random view."""
    photos = data.photos
    rows = torch.randint(0, len(photos), (cfg.photo_batch,), generator=g)
    view = torch.randint(0, photos.pooled.shape[0], (cfg.photo_batch,), generator=g)
    types = data.targets["articleType"][idx].to(img.device)
    return photo_loss(heads, clf.linear["articleType"], photos, rows, view, img, types, cfg.photo_scale)


def _photos(enc: LiteEncoder, cfg: AlignConfig, data: _TrainSet, labels: dict,
            va_recs: list) -> tuple[PhotoSet, torch.Tensor]:
    """Sets data.photos (the train photos, every view); returns the val photos and the val images' type ids."""
    cache = Path(cfg.cache_dir)

    def cached(encoder, recs, tag, view):
        return cached_image_backbone(encoder, recs, cache, tag, cfg.batch_size, cfg.workers, view, cfg.seed)

    types = labels["articleType"]
    data.photos = photo_set(enc, "train", cfg.data_root, cached, cfg.augment_views + 1, types)
    col = {t: i for i, t in enumerate(types)}
    va_types = torch.tensor([col.get(r.attrs.get("articleType"), -1) for r in va_recs])
    log.info("real photos: %d train, types per class from cir.data.photos", len(data.photos))
    return photo_set(enc, "val", cfg.data_root, cached, 1, types), va_types


def train_align(cfg: AlignConfig) -> dict:
    """`python train.py align`: train, pick the best epoch on val, save the heads (+ .train.json history);
    returns a summary."""
    torch.manual_seed(cfg.seed)
    device = get_device(cfg.device)
    root = resolve_data_root("catalog", cfg.data_root)
    lite_cfg = LiteConfig(embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout, colour=cfg.colour,
                          palette_size=cfg.palette_size)
    heads = LiteHeads(lite_cfg)
    enc = LiteEncoder(heads, device)  # towers are frozen; only `heads` learns
    if lite_cfg.colour == "lab":
        heads.palette.copy_(fit_palette(enc, catalog_images(root, "train"), lite_cfg.palette_size, cfg.seed,
                                        workers=cfg.workers))
    views, tr_attrs, va, va_recs = _features(enc, root, cfg)
    data, labels = _train_set(enc, views, tr_attrs, cfg, device)
    va_names = [r.attrs["productDisplayName"] for r in va_recs]
    va_text = cached_text_backbone(enc, va_names, Path(cfg.cache_dir), "val-names")
    clf = AttributeClassifiers(lite_cfg.embed_dim, labels).to(device)
    photos_va = _photos(enc, cfg, data, labels, va_recs) if cfg.photo_weight else None
    heads.to(device).train()
    opt = torch.optim.AdamW(list(heads.parameters()) + list(clf.parameters()), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(tr_attrs) + cfg.batch - 1) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    best, best_state, history = None, None, []
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        loss = _train_epoch(heads, clf, data, opt, sched, g, cfg, device)
        heads.eval()
        metrics = _val_metrics(heads, va, va_text, va_recs, device, photos_va)
        history.append({"epoch": epoch + 1, "loss": round(loss, 4), **metrics})
        log.info("epoch %d loss %.4f val %s", epoch + 1, loss, metrics)
        if best is None or _score(metrics) > _score(best):
            best, best_state = history[-1], {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}
    heads.load_state_dict(best_state)
    heads.cpu().eval()
    out = Path(cfg.out)
    heads.save(out)
    history_path = out.with_name(out.stem + ".train.json")
    write_json(history_path, {"args": record(cfg), "config": asdict(lite_cfg), "best": best, "history": history})
    log.info("wrote %s", plot_training(history_path, history, f"train.py align: {out.name}", best))
    return {"saved": str(out), "best_val": best}
