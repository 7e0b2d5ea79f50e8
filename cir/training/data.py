"""What the composed training stages (`train.py text`, `train.py combiner`) learn from and are validated on.

    catalog    triplets generated from the catalogue's train split, fresh ones each epoch (catalog.triplets); val
               triplets fixed; every item satisfying a triplet's condition is a positive of the gallery objective
    fashioniq  the annotation files' train triplets, the two captions randomised each epoch as CLIP4Cir does;
               validation: the FashionIQ protocol on val (R@10 / R@50 per category and their average)
    cirr       the train split's triplets (cap.rc2.train.json); validation: the CIRR protocol on val, the best
               epoch picked by --select (the means of its seven metrics, or R@5 + Rsubset@1)

Every split's images are extracted once into a feature folder (IndexStore.open) by the encoder
being trained, and read raw (FeatureIndex.raw_matrix): what the Combiner and sum fusion take. Each index is
kept with its image files (`opened`), and each reference row with the image behind it (`reference_sources`):
stage 1 encodes those when it fine-tunes the image side (training.image_side). The test splits are never read
here.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cir.catalog import families, name_edits, triplets
from cir.data import (
    ImageRecord,
    catalog_images,
    cirr_file,
    cirr_triplets,
    fashioniq_categories,
    fashioniq_images,
    fashioniq_triplets,
    list_images,
    randomized_fiq_caption,
    resolve_data_root,
)
from cir.data.fashioniq import fashioniq_image_records
from cir.data.photos import photo_images, photos_root
from cir.encoders import Encoder
from cir.evaluation.metrics import attribute_match_at_k, recall_at_k
from cir.evaluation.protocols import compose_queries, composed_cirr, composed_fashioniq, fashioniq_indexes
from cir.extraction import index_name
from cir.index import FeatureIndex, search
from cir.training import references
from cir.training.config import SELECT_KEYS, TRAIN_DATASETS, ComposedConfig

log = logging.getLogger("train")


Source = tuple[Path, int]   # an image file and its view: 0 the image itself, 1 its photo-like view


@dataclass
class Opened:
    """An index the training data read, with what stage 1 needs to encode it again."""
    index: FeatureIndex
    paths: dict[str, Path]          # row name -> image file
    split: str | None               # train, val ...


@dataclass
class Item:
    """One training triplet, resolved to rows of the train index."""
    ref: int                        # reference row of TrainData.reference_matrix()
    tgt: int                        # target row
    caption: str                    # the relative caption of this epoch
    wanted: tuple | None = None     # catalogue: triplets.condition_key; every item satisfying it is a positive
    rows: np.ndarray | None = None  # catalogue name edits: the train rows satisfying it (instead of `wanted`)


class TrainData:
    """The shared interface: the train index, each epoch's items, soft targets, validation."""

    dataset: str
    train: FeatureIndex

    def __init__(self, encoder: Encoder, cfg: ComposedConfig):
        self.encoder, self.cfg = encoder, cfg
        self.root = resolve_data_root(self.dataset, cfg.data_root)
        self._epochs: dict[int, list[Item]] = {}
        self.opened: list[Opened] = []  # every index read, with its image files and split

    def index(self, records: Sequence[ImageRecord], name: str, **info: Any) -> FeatureIndex:
        """The feature folder of `records` under --features: extracted by the encoder once, then loaded."""
        idx = self.cfg.store.open(records, self.encoder, name, dataset=self.dataset, data_root=str(self.root), **info)
        self.opened.append(Opened(idx, {r.name: r.path for r in records}, info.get("split")))
        return idx

    def image_paths(self, index: FeatureIndex) -> dict[str, Path]:
        """The image file of each row name of an index this data opened."""
        return next(o.paths for o in self.opened if o.index is index)

    def train_sources(self) -> list[Source]:
        """The image behind each train row (view 0: the image itself)."""
        paths = self.image_paths(self.train)
        return [(paths[n], 0) for n in self.train.names]

    def reference_sources(self) -> list[Source]:
        """The image and view behind each reference_matrix row (the train rows by default)."""
        return self.train_sources()

    def epoch(self, epoch: int) -> list[Item]:
        """The train items of `epoch` (made once, then kept: a resumed run sees the same ones)."""
        if epoch not in self._epochs:
            self._epochs[epoch] = self._make_epoch(epoch)
        return self._epochs[epoch]

    def _make_epoch(self, epoch: int) -> list[Item]:
        raise NotImplementedError

    def reference_matrix(self) -> torch.Tensor:
        """Raw features of every reference row an Item's `ref` may name (the train index's rows by default)."""
        return self.train.raw_matrix()

    def positives(self, items: Sequence[Item], rows: torch.Tensor) -> torch.Tensor:
        """Target distribution [B, N] over all train rows (the gallery objective): the own target alone."""
        pos = torch.zeros(len(items), len(self.train))
        pos[torch.arange(len(items)), rows] = 1.0
        return pos

    def validate(self, texts, method: str, combiner=None) -> dict:
        """Val metrics of queries composed by combiner.compose from raw val features and `texts` (anything with
        encode_texts(texts, raw=True): the frozen or the training text side)."""
        raise NotImplementedError

    @property
    def score_keys(self) -> tuple[str, ...]:
        """The validation metrics whose sum picks the best epoch (--select: config.SELECT_KEYS)."""
        rules = SELECT_KEYS[self.dataset]
        return rules[self.cfg.select] if self.cfg.select in rules else next(iter(rules.values()))

    def score(self, metrics: dict) -> float | None:
        """What the best epoch maximises; None for an epoch that was not validated (--validation-frequency)."""
        if not all(k in metrics for k in self.score_keys):
            return None
        return sum(metrics[k] for k in self.score_keys)


class CatalogData(TrainData):
    """Catalogue triplets (catalog.triplets) over the train and val splits, with references as shoppers give
    them (training.references): photo-like views of the train images and real photos with colour captions."""

    dataset = "catalog"

    def __init__(self, encoder: Encoder, cfg: ComposedConfig):
        super().__init__(encoder, cfg)
        self.records, self.indexes, self.attrs = {}, {}, {}
        for split in ("train", "val"):  # never test
            recs = catalog_images(self.root, split)
            idx = self.index(recs, index_name("catalog", split), split=split)
            self.records[split], self.indexes[split] = recs, idx
            by_name = {r.name: r.attrs for r in recs}
            self.attrs[split] = [by_name.get(n, {}) for n in idx.names]  # per index row
        self.train = self.indexes["train"]
        self.photos = {s: references.real_photos(encoder, cfg.store, cfg.data_root, s) if cfg.photo_triplets else None
                       for s in ("train", "val")}
        for split, got in self.photos.items():
            if got is not None:
                recs = photo_images(photos_root(cfg.data_root), split)
                self.opened.append(Opened(got[0], {r.name: r.path for r in recs}, split))
        self._refs: torch.Tensor | None = None  # made when training asks (reference_matrix)
        self._held_changes = families.held_out_changes(cfg.exclude_kinds)
        if cfg.exclude_kinds:
            log.info("leaving out triplet kinds (train and val): %s; changes no kind left teaches (photo and "
                     "name-edit triplets of them left out too): %s", ", ".join(cfg.exclude_kinds),
                     ", ".join(sorted(self._held_changes)) or "none")
        # Val leaves them out too: picking the best epoch must not peek at the held-out kinds.
        val = self._kept(triplets.generate(self.records["val"], seed=0, per_kind=cfg.val_per_kind))
        self.val = [t for t in val if t.reference in self.indexes["val"] and t.target in self.indexes["val"]]
        if self.photos["val"] is not None:
            index, labels = self.photos["val"]
            self.val += references.photo_triplets(index.names, labels, self._in_index("val"), cfg.val_per_kind,
                                                  random.Random(0))
        self.val_edits = [e for e in name_edits.mine(self._in_index("val"), seed=0, limit=cfg.val_per_kind)
                          if e.family not in self._held_changes and e.target in self.indexes["val"]] \
            if cfg.name_edits else []
        self._masks = triplets.ConditionMasks(self.attrs["train"])  # per condition, once: positives stay fast

    def _kept(self, trips: list[triplets.CatalogTriplet]) -> list[triplets.CatalogTriplet]:
        """The triplets of kinds not in --exclude-kinds. Every kind is drawn, then the excluded ones dropped: the
        other kinds' triplets are then the very ones a run on every kind draws, so the two runs differ only in
        what was left out."""
        return [t for t in trips if t.kind not in self.cfg.exclude_kinds]

    def _in_index(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records[split] if r.name in self.indexes[split]]

    def _reference_matrix(self) -> torch.Tensor:
        """Raw reference features: train rows, then their photo-like views (a failed view: the clean row), then
        the train photos."""
        clean = self.train.raw_matrix()
        parts = [clean]
        if self.cfg.photo_like:
            recs = {r.name: r for r in self.records["train"]}
            view = references.photo_like_features(self.encoder, [recs[n] for n in self.train.names],
                                                  Path(self.cfg.cache_dir), self.cfg.seed, 1, self.cfg.store.batch_size,
                                                  self.cfg.workers)
            parts.append(torch.where(torch.isnan(view), clean, view))
        if self.photos["train"] is not None:
            parts.append(self.photos["train"][0].raw_matrix())
        return torch.cat(parts)

    def reference_sources(self) -> list[Source]:
        """As _reference_matrix: the train images, their photo-like views (view 1), the train photos."""
        clean = self.train_sources()
        out = clean + ([(path, 1) for path, _ in clean] if self.cfg.photo_like else [])
        if self.photos["train"] is not None:
            photos = self.photos["train"][0]
            paths = self.image_paths(photos)
            out += [(paths[n], 0) for n in photos.names]
        return out

    def reference_matrix(self) -> torch.Tensor:
        if self._refs is None:
            self._refs = self._reference_matrix()
        return self._refs

    def _make_epoch(self, epoch: int) -> list[Item]:
        seed = self.cfg.seed * 1000 + epoch
        trips = self._kept(triplets.generate(self.records["train"], seed=seed, per_kind=self.cfg.per_kind,
                                             phrasings=self.cfg.phrasings))
        idx, n = self.train, len(self.train)
        rng = random.Random(seed)
        photo_like = n if self.cfg.photo_like else None  # where the photo-like rows start
        items = [Item(self._ref_row(t.reference, photo_like, rng), idx.id_of(t.target), t.caption,
                      triplets.condition_key(t)) for t in trips if t.reference in idx and t.target in idx]
        if self.photos["train"] is not None and "colour" not in self._held_changes:
            photos, labels = self.photos["train"]
            start = n * (2 if photo_like else 1)
            for t in references.photo_triplets(photos.names, labels, self._in_index("train"),
                                               self.cfg.photo_triplets, rng, self.cfg.phrasings):
                items.append(Item(start + photos.id_of(t.reference), idx.id_of(t.target), t.caption,
                                  triplets.condition_key(t)))
        return items + self._name_edit_items(seed, photo_like, rng)

    def _name_edit_items(self, seed: int, photo_like: int | None, rng: random.Random) -> list[Item]:
        """Triplets of product-name differences (train-partition words; none of a change held out of training)."""
        if not self.cfg.name_edits:
            return []
        idx = self.train
        edits = [e for e in name_edits.mine(self._in_index("train"), seed=seed, words="train",
                                            phrasings=self.cfg.phrasings) if e.family not in self._held_changes]
        edits = edits[:self.cfg.name_edits]
        sat = name_edits.satisfying(edits, self.attrs["train"])
        return [Item(self._ref_row(e.reference, photo_like, rng), idx.id_of(e.target), e.caption,
                     rows=np.flatnonzero(s)) for e, s in zip(edits, sat)]

    def _ref_row(self, name: str, photo_like: int | None, rng: random.Random) -> int:
        """A train reference's row: its photo-like view's (offset `photo_like`) a --photo-like share of the time."""
        row = self.train.id_of(name)
        return row + photo_like if photo_like and rng.random() < self.cfg.photo_like else row

    def positives(self, items: Sequence[Item], rows: torch.Tensor) -> torch.Tensor:
        """Half the mass on the own target, half spread over every train item satisfying the triplet's condition
        (the own target included): both the specific item and attribute matches are right answers."""
        own = super().positives(items, rows)
        keyed = [i for i, it in enumerate(items) if it.rows is None]
        pos = torch.zeros_like(own)
        pos[keyed] = torch.from_numpy(self._masks.stack([items[i].wanted for i in keyed]).astype(np.float32))
        for i, it in enumerate(items):
            if it.rows is not None:
                pos[i, torch.from_numpy(it.rows)] = 1.0
        pos = torch.maximum(pos, own)
        return 0.5 * own + 0.5 * pos / pos.sum(1, keepdim=True)

    def validate(self, texts, method: str, combiner=None) -> dict:
        """R@K of the targets and attr@10 (the share of the top 10 satisfying the condition) over every val
        query: the kinds' triplets, the photo triplets and the name edits."""
        val = self.indexes["val"]
        photos = self.photos["val"][0] if self.photos["val"] is not None else None
        trips = self.val + self.val_edits
        refs = torch.stack([val.raw([val.id_of(t.reference)])[0] if t.reference in val
                            else photos.raw([photos.id_of(t.reference)])[0] for t in trips])
        queries, _ = compose_queries(texts, refs, [t.caption for t in trips], method, combiner)
        ref_rows = [[val.id_of(t.reference)] if t.reference in val else [] for t in trips]
        _, ranked = search(queries, val, 50, exclude=ref_rows)
        tgts = torch.tensor([val.id_of(t.target) for t in trips])
        n = len(self.val)
        attr = attribute_match_at_k(ranked[:n], [t.wanted for t in self.val], self.attrs["val"], 10,
                                    [t.unwanted for t in self.val]) * n
        if self.val_edits:
            sat = torch.from_numpy(name_edits.satisfying(self.val_edits, self.attrs["val"]))
            attr += 100 * float(torch.gather(sat, 1, ranked[n:, :10]).float().mean()) * len(self.val_edits)
        return {**recall_at_k(ranked, tgts, (1, 10, 50)), "attr@10": round(attr / len(trips), 2)}


class FashionIQData(TrainData):
    """FashionIQ's train triplets of the chosen categories; val with the FashionIQ protocol."""

    dataset = "fashioniq"

    def __init__(self, encoder: Encoder, cfg: ComposedConfig):
        super().__init__(encoder, cfg)
        self.categories = list(cfg.categories or fashioniq_categories(self.root))
        self.triplets = [t for t in fashioniq_triplets(self.root, "train", self.categories)
                         if t.target is not None and any(c.strip() for c in t.captions)]
        # The train index: every train image of the categories, and every reference and target.
        recs = fashioniq_images(self.root, "train", self.categories)
        known = {r.name for r in recs}
        names = [n for t in self.triplets for n in (t.reference, t.target) if n not in known]
        recs = recs + fashioniq_image_records(self.root, names)
        self.train = self.index(recs, index_name("fashioniq", "train", "-".join(self.categories)) + "-training",
                                split="train", categories=self.categories)
        self.triplets = [t for t in self.triplets if t.reference in self.train and t.target in self.train]
        self.val = fashioniq_triplets(self.root, "val", self.categories)
        self.val_indexes, self.val_extra = fashioniq_indexes(
            self.val, self.root, "val", lambda recs, name, searched=True, **info: self.index(recs, name, split="val",
                                                                                           **info))

    def _make_epoch(self, epoch: int) -> list[Item]:
        rng = random.Random(self.cfg.seed * 1000 + epoch)
        return [Item(self.train.id_of(t.reference), self.train.id_of(t.target), randomized_fiq_caption(t.captions, rng))
                for t in self.triplets]

    def validate(self, texts, method: str, combiner=None) -> dict:
        return composed_fashioniq(texts, self.val_indexes, self.val, method, combiner, self.val_extra,
                                  self.cfg.empty_captions or "image").metrics


class CIRRData(TrainData):
    """CIRR's train triplets; val with the CIRR protocol (recall with the reference removed, Rsubset)."""

    dataset = "cirr"

    def __init__(self, encoder: Encoder, cfg: ComposedConfig):
        super().__init__(encoder, cfg)
        captions = cirr_file(self.root, "captions", "train")
        if not captions.is_file():
            raise FileNotFoundError(f"CIRR training needs the train captions {captions}, which are absent under "
                                    f"{self.root} (CIRR's cap.rc2.train.json); the val and test1 files alone "
                                    "only evaluate")
        self.train = self.index(list_images("cirr", self.root, "train"), index_name("cirr", "train"),
                                split="train")
        self.triplets = [t for t in cirr_triplets(self.root, "train")
                         if t.target in self.train and t.reference in self.train and t.captions[0].strip()]
        self.val_index = self.index(list_images("cirr", self.root, "val"), index_name("cirr", "val"),
                                    split="val")
        self.val = cirr_triplets(self.root, "val")

    def _make_epoch(self, epoch: int) -> list[Item]:
        return [Item(self.train.id_of(t.reference), self.train.id_of(t.target), t.captions[0]) for t in self.triplets]

    def validate(self, texts, method: str, combiner=None) -> dict:
        return composed_cirr(texts, self.val_index, self.val, method, combiner,
                             self.cfg.empty_captions or "image").metrics


def load_train_data(encoder: Encoder, cfg: ComposedConfig) -> TrainData:
    """The training data of --dataset."""
    kinds = {"catalog": CatalogData, "fashioniq": FashionIQData, "cirr": CIRRData}
    if cfg.dataset not in kinds:
        raise ValueError(f"unknown training dataset {cfg.dataset!r}; valid: {', '.join(TRAIN_DATASETS)}")
    data = kinds[cfg.dataset](encoder, cfg)
    log.info("%s: %d train images, %d train triplets per epoch, %d val queries", cfg.dataset, len(data.train),
             len(data.epoch(0)), len(data.val))
    if not data.epoch(0):
        raise ValueError(f"no usable {cfg.dataset} train triplets under {data.root}")
    return data


class TrainingTexts:
    """The text side being fine-tuned (stage 1), as combiner.compose uses it: its current weights, no gradient."""

    def __init__(self, encoder, batch: int = 512):
        self.encoder, self.batch = encoder, batch

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        texts = [t.strip() for t in texts]
        if not texts:
            return torch.zeros(0, self.encoder.dim)
        out = torch.cat([self.encoder.text_forward(texts[i:i + self.batch]).float().cpu()
                         for i in range(0, len(texts), self.batch)])
        return out if raw else torch.nn.functional.normalize(out, dim=-1)
