"""Real photos in the lite heads' training (`train.py align`): people's photos of clothes pulled to where the
catalogue's studio shots of the same garment are, so an upload finds its kind in the shop.

The real-photos train split has class labels only (cir.data.photos says which catalogue article types a
class accepts). Each photo is seen as it is or in an augmented view (crops, flips); its embedding is pulled
towards the batch's catalogue images of an accepted type (a supervised contrastive loss across the two
domains) and must be read as one of those types by the same article-type classifier as the catalogue. Val:
real-photos val photos against the catalogue's val images, type P@10. Test photos are never read here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cir.data.photos import PHOTO_CLASSES, photo_images, photos_root
from cir.encoders import LiteEncoder, LiteHeads


@dataclass
class PhotoSet:
    """Real photos' frozen-tower features (every view) and the article types each accepts."""
    pooled: torch.Tensor            # [views, N, 1280]
    colour: torch.Tensor            # [views, N, colour_dim]
    accepts: torch.Tensor           # [N, article types] bool over the classifier's articleType labels
    names: list[str]

    def __len__(self) -> int:
        return self.pooled.shape[1]


def accepted_types(labels: list[str], type_labels: list[str]) -> torch.Tensor:
    """[N, len(type_labels)] bool: which catalogue article types each photo class accepts."""
    col = {t: i for i, t in enumerate(type_labels)}
    out = torch.zeros(len(labels), len(type_labels), dtype=torch.bool)
    for row, label in enumerate(labels):
        for t in PHOTO_CLASSES[label].types:
            if t in col:
                out[row, col[t]] = True
    return out


def photo_set(enc: LiteEncoder, split: str, data_root: str | None, cached, views: int,
              type_labels: list[str]) -> PhotoSet:
    """The photos of `split` through the frozen towers; `cached(encoder, records, tag, view)` caches them."""
    recs = photo_images(photos_root(data_root), split)
    feats = [cached(enc, recs, f"photos-{split}", v) for v in range(views)]
    common = set.intersection(*(set(f["names"]) for f in feats))
    for f in feats:  # a photo one view failed to decode is dropped from all
        keep = [i for i, n in enumerate(f["names"]) if n in common]
        f.update(names=[f["names"][i] for i in keep], pooled=f["pooled"][keep], colour=f["colour"][keep])
    label = {r.name: r.attrs["label"] for r in recs}
    names = feats[0]["names"]
    return PhotoSet(torch.stack([f["pooled"] for f in feats]), torch.stack([f["colour"] for f in feats]),
                    accepted_types([label[n] for n in names], type_labels), names)


def photo_loss(heads: LiteHeads, type_head: torch.nn.Linear, photos: PhotoSet, rows: torch.Tensor,
               view: torch.Tensor, shop: torch.Tensor, shop_types: torch.Tensor, scale: float) -> torch.Tensor:
    """Photos `rows` (in views `view`) against the batch's catalogue embeddings `shop` [B, d] of article-type
    ids `shop_types` [B] (-1: unknown): the contrastive pull plus the any-of-the-accepted-types likelihood."""
    dev = shop.device
    emb = heads.image(photos.pooled[view, rows].to(dev), photos.colour[view, rows].to(dev))
    accepts = photos.accepts[rows].to(dev)
    known = shop_types >= 0
    pos = torch.zeros(len(rows), len(shop), dtype=torch.bool, device=dev)
    pos[:, known] = accepts[:, shop_types[known]]
    has = pos.any(1)
    loss = emb.sum() * 0
    if has.any():
        target = pos[has].float() / pos[has].sum(1, keepdim=True)
        loss = loss + F.cross_entropy(scale * emb[has] @ shop.T, target)
    logits = type_head(emb)
    any_of = torch.logsumexp(logits.masked_fill(~accepts, -1e4), 1) - torch.logsumexp(logits, 1)
    return loss - any_of[accepts.any(1)].mean()


@torch.no_grad()
def photo_type_precision(heads: LiteHeads, photos: PhotoSet, shop: torch.Tensor, shop_types: torch.Tensor,
                         k: int = 10) -> float:
    """Type P@k (%) of photos (view 0) searching catalogue embeddings `shop` of type ids `shop_types`."""
    dev = shop.device
    emb = heads.image(photos.pooled[0].to(dev), photos.colour[0].to(dev))
    top = (emb @ shop.T).topk(min(k, len(shop)), dim=1).indices
    types = shop_types[top]
    hit = torch.gather(photos.accepts.to(dev), 1, types.clamp(min=0)) & (types >= 0)
    return 100 * float(hit.float().mean())

