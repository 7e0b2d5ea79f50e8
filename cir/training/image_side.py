"""Stage 1's image side (`train.py text --side image|both`), as CLIP4Cir fine-tunes CLIP's image encoder:
each batch's references and targets are encoded by the image side being trained, and the validation indexes
are encoded again with its current weights before every validation (in float32, no gradient).

What is trained is the encoder's `image_forward` over `image_stem` rows: CLIP's whole image tower over the
pixels (decoded again every time they are needed), lite's image head over its frozen towers' features (kept
per image: computed once). The gallery loss (`--negatives gallery`, every train image a candidate) takes the
batch's targets as they are encoded now and the other train images as encoded at the last validation: encoding
every train image at every step is out of reach for CLIP; the papers' batch loss needs only the batch.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from cir.encoders import BaseEncoder
from cir.extraction.job import default_workers
from cir.images import open_image
from cir.training.augment import Augmented
from cir.training.config import TextStageConfig
from cir.training.data import Source, TrainData

log = logging.getLogger("train")


class TrainingImages:
    """The images behind the training rows, encoded by the image side being fine-tuned."""

    def __init__(self, encoder: BaseEncoder, data: TrainData, cfg: TextStageConfig, batch: int = 64):
        self.encoder, self.data, self.batch = encoder, data, batch
        self.gallery_loss = cfg.negatives == "gallery"
        self.refs, self.targets = data.reference_sources(), data.train_sources()
        # view 1 is the photo-like view references.photo_like_features encodes (same seed, same view number)
        self.views: dict[int, Callable[[Image.Image], torch.Tensor]] = {
            0: encoder.preprocess, 1: Augmented(encoder.preprocess, cfg.seed, 1)}
        self.stems: dict[Source, torch.Tensor] = {}    # kept when the encoder's stems are small (lite)
        workers = default_workers() if cfg.workers is None else cfg.workers
        self.pool = ThreadPoolExecutor(workers) if workers else None   # decoding: PIL releases the GIL
        self.unit = F.normalize(data.train.raw_matrix(), dim=-1).to(encoder.device)

    def _pixels(self, source: Source) -> torch.Tensor:
        path, view = source
        try:
            return self.views[view](open_image(path))
        except Exception as e:  # noqa: BLE001 -- a decoder error names the file; the index had decoded it
            raise ValueError(f"cannot read training image {path}: {type(e).__name__}: {e}") from None

    @torch.no_grad()
    def _stems(self, sources: Sequence[Source]) -> torch.Tensor:
        """image_stem rows of `sources` (computed, or kept from before)."""
        todo = [s for s in dict.fromkeys(sources) if s not in self.stems]
        pixels = list(self.pool.map(self._pixels, todo) if self.pool else map(self._pixels, todo))
        fresh = dict(zip(todo, self.encoder.image_stem(torch.stack(pixels)))) if todo else {}
        if self.encoder.stems_cacheable:
            self.stems.update({s: row.cpu() for s, row in fresh.items()})
        got = {**self.stems, **fresh} if self.encoder.stems_cacheable else fresh
        return torch.stack([got[s] for s in sources])

    def features(self, sources: Sequence[Source]) -> torch.Tensor:
        """Raw image features of `sources` from the current weights, differentiable."""
        return self.encoder.image_forward(self._stems(sources))

    def references(self, rows: torch.Tensor) -> torch.Tensor:
        """Raw features of reference rows (TrainData.reference_matrix's numbering)."""
        return self.features([self.refs[i] for i in rows.tolist()])

    def gallery(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit target features the loss ranks against: the batch's targets ([B, d], the batch loss) or every
        train image with the batch's targets as encoded now ([N, d], the gallery loss). A target met twice in a
        batch is encoded once."""
        unique, inverse = torch.unique(rows, return_inverse=True)
        live = F.normalize(self.features([self.targets[i] for i in unique.tolist()]), dim=-1)
        if not self.gallery_loss:
            return live[inverse.to(live.device)]
        return self.unit.to(live.dtype).index_put((unique.to(live.device),), live)

    @torch.no_grad()
    def refresh(self) -> None:
        """Encode the validation indexes (and, for the gallery loss, the train index) again with the current
        weights, in memory: what validation ranks and what the gallery loss compares with."""
        for opened in self.data.opened:
            if opened.split == "train" and not (self.gallery_loss and opened.index is self.data.train):
                continue
            sources = [(opened.paths[n], 0) for n in opened.index.names]
            raw = torch.cat([self.features(sources[lo:lo + self.batch]).float().cpu()
                             for lo in range(0, len(sources), self.batch)])
            opened.index.replace_raw(raw)
        if self.gallery_loss:
            self.unit = F.normalize(self.data.train.raw_matrix(), dim=-1).to(self.encoder.device)
        log.debug("image side: %d indexes encoded again", len(self.data.opened))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
