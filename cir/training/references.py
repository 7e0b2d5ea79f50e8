"""References as shoppers give them, for composed training on the catalogue (`train.py text|combiner`).

The catalogue's triplets have studio shots as references; shoppers upload photos. Two sources close the gap:
- photo-like views of the train images (training.augment: other backgrounds, crops, flips), encoded once
  and cached: a share of each epoch's triplets takes its reference in that view;
- real photos (real-photos train split, class labels only) as references of colour changes ("this in red"):
  the wanted items are the catalogue's items of a type the photo's class accepts (cir.data.photos) in that
  colour. Val photos make the same triplets for validation. Test photos are never read here.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from cir.catalog import phrasings as ph
from cir.catalog.triplets import CatalogTriplet
from cir.data import ImageRecord, known
from cir.data.photos import PHOTO_CLASSES, photo_images, photos_root
from cir.encoders import Encoder
from cir.extraction import IndexStore
from cir.extraction.job import default_workers, iter_batches
from cir.index import FeatureIndex
from cir.training.augment import Augmented
from cir.utils import content_key, save_tensors

log = logging.getLogger("train")
MIN_POOL = 2  # a wanted colour needs this many items of an accepted type among the split's catalogue items


def photo_like_features(encoder: Encoder, records: Sequence[ImageRecord], cache_dir: Path, seed: int = 0,
                        view: int = 1, batch_size: int = 64, workers: int | None = None) -> torch.Tensor:
    """Raw features [len(records), d] of one augmented, photo-like view of each image, computed once and cached by
    content; an image whose view cannot be made (it failed to decode) keeps a row of NaN."""
    names = [r.name for r in records]
    f = Path(cache_dir) / f"photo-like-v{view}-{content_key(encoder.describe(), names, seed, view)}.safetensors"
    if f.exists():
        return load_file(f)["raw"]
    prep = Augmented(encoder.preprocess, seed, view)
    feats, kept = [], []
    workers = default_workers() if workers is None else workers
    for idx, pixels, bad in tqdm(iter_batches([r.path for r in records], prep, batch_size, workers),
                                 total=(len(records) + batch_size - 1) // batch_size, desc="photo-like views"):
        for i, err in bad:
            log.warning("skipped %s: %s", names[i], err)
        if pixels is not None:
            feats.append(encoder.encode_pixels(pixels, raw=True))
            kept += [names[i] for i in idx]
    raw = torch.full((len(names), encoder.dim), float("nan"))
    row = {n: i for i, n in enumerate(names)}
    raw[[row[n] for n in kept]] = torch.cat(feats)
    save_tensors(f, {"raw": raw})
    return raw


def real_photos(encoder: Encoder, store: IndexStore, data_root: str | None,
                split: str) -> tuple[FeatureIndex, dict[str, str]] | None:
    """The real photos of `split`: their index (raw features) and each photo's class; None (warned) when there
    is no real-photos folder."""
    try:
        root = photos_root(data_root)
    except FileNotFoundError as e:
        log.warning("training without real photos: %s", e)
        return None
    recs = photo_images(root, split)
    index = store.open(recs, encoder, f"real-photos-{split}", dataset="real-photos", split=split, data_root=str(root))
    return index, {r.name: r.attrs["label"] for r in recs}


def photo_triplets(photos: Sequence[str], labels: dict[str, str], catalog: Sequence[ImageRecord], n: int,
                   rng: random.Random, phrasings: str = "all") -> list[CatalogTriplet]:
    """`n` triplets (photo, "in <colour>", an item of an accepted type in that colour) among `catalog`."""
    pools: dict[tuple[str, str], list[str]] = {}
    for r in catalog:
        for label, pc in PHOTO_CLASSES.items():
            if r.attrs.get("articleType") in pc.types and known(r.attrs.get("baseColour")):
                pools.setdefault((label, r.attrs["baseColour"]), []).append(r.name)
    colours: dict[str, list[str]] = {}
    for (label, colour), items in sorted(pools.items()):
        if len(items) >= MIN_POOL:
            colours.setdefault(label, []).append(colour)
    usable = [p for p in photos if labels[p] in colours]
    out = []
    for _ in range(n if usable else 0):
        photo = rng.choice(usable)
        label = labels[photo]
        colour = rng.choice(colours[label])
        wanted = {"articleType": PHOTO_CLASSES[label].types, "baseColour": colour}
        out.append(CatalogTriplet(photo, ph.photo_colour_caption(rng, colour, phrasings),
                                  rng.choice(pools[(label, colour)]), "photo_colour", wanted))
    return out
