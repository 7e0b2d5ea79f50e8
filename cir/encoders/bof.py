"""The classical image-only encoder `bof` (Kmeans-IR's features): a bag of visual words and hand-made histograms.

Per image (RGB, resized to `BofConfig.image_size`):
  words   dense SIFT descriptors (OpenCV) on a regular grid, each assigned to its nearest visual word of a
          k-means vocabulary (scikit-learn MiniBatchKMeans), as a normalised word histogram
  hog     a HOG descriptor (OpenCV) of the grey image at `hog_size`
  colour  an HSV colour histogram (OpenCV calcHist)
  shape   an edge-orientation histogram: gradient orientations at Canny edge pixels, weighted by magnitude
each block is L2-normalised and weighted, the blocks are concatenated, PCA-reduced (scikit-learn PCA, fitted
on the catalogue's train split) and L2-normalised. The vocabulary and the PCA ship in weights/bof.safetensors
(+ bof.json, bof.train.json); refit them with

    python3 bof.py fit --data-root ../shared/data/fashion-catalog --out weights/bof.safetensors

The encoder has no text side: `encode_texts` raises TextUnsupported, which the server answers as a 400.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from threadpoolctl import threadpool_limits

from cir.data.common import ImageRecord
from cir.encoders.preprocess import Preprocess
from cir.images import open_image, to_rgb
from cir.paths import WEIGHTS_DIR
from cir.utils import config_from_dict, save_checkpoint

log = logging.getLogger("bof")


BOF_WEIGHTS = WEIGHTS_DIR / "bof.safetensors"


TEXT_REFUSED = ("the bof encoder (the classical bag-of-visual-words baseline) is image-only: it cannot encode "
                "text; search by image, or serve/evaluate with --encoder lite")


class TextUnsupported(ValueError):
    """A text (or composed) query against an image-only encoder."""


@dataclass
class BofConfig:
    image_size: int = 128           # images are resized (squashed) to this square before any descriptor
    sift_step: int = 8              # dense SIFT grid step (pixels)
    sift_size: float = 12.0         # dense SIFT keypoint diameter (pixels)
    words: int = 256                # visual vocabulary size (k-means clusters of SIFT descriptors)
    hog_size: int = 64              # HOG window: the grey image resized to hog_size x hog_size
    hsv_bins: tuple = (8, 4, 4)     # colour histogram bins: hue, saturation, value
    edge_bins: int = 18             # shape histogram: edge orientation bins over 0..180 degrees
    weights: tuple = (1.0, 1.0, 1.0, 0.5)  # block weights: words, hog, colour, shape
    dim: int = 128                  # output dimension (PCA components)

    @classmethod
    def from_dict(cls, d: dict) -> "BofConfig":
        cfg = config_from_dict(cls, d)
        cfg.hsv_bins, cfg.weights = tuple(cfg.hsv_bins), tuple(cfg.weights)
        return cfg


def _hog(cfg: BofConfig) -> cv2.HOGDescriptor:
    s = cfg.hog_size
    return cv2.HOGDescriptor((s, s), (s // 4, s // 4), (s // 8, s // 8), (s // 8, s // 8), 9)


def _grid(cfg: BofConfig) -> list[cv2.KeyPoint]:
    half = int(cfg.sift_size // 2)
    coords = range(half, cfg.image_size - half + 1, cfg.sift_step)
    return [cv2.KeyPoint(float(x), float(y), cfg.sift_size) for y in coords for x in coords]


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32).ravel()
    return v / max(float(np.linalg.norm(v)), 1e-12)


class Descriptors:
    """The raw descriptors of one configuration (OpenCV objects made once, reused for every image)."""

    def __init__(self, cfg: BofConfig):
        self.cfg = cfg
        self.sift = cv2.SIFT_create()
        self.hog = _hog(cfg)
        self.grid = _grid(cfg)

    def sift_descriptors(self, grey: np.ndarray) -> np.ndarray:
        """Dense SIFT [n_grid, 128] float32 of a grey uint8 image."""
        _, desc = self.sift.compute(grey, self.grid)
        return np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)

    def blocks(self, rgb: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """RGB uint8 [S,S,3] -> (dense SIFT descriptors, [hog, colour, shape] unit vectors)."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hog = self.hog.compute(cv2.resize(grey, (self.cfg.hog_size,) * 2, interpolation=cv2.INTER_AREA))
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(self.cfg.hsv_bins), [0, 180, 0, 256, 0, 256])
        colour = np.sqrt(hist.ravel() / max(float(hist.sum()), 1.0))  # Hellinger: tames the white background
        return self.sift_descriptors(grey), [_unit(hog), _unit(colour), _unit(self.edge_histogram(grey))]

    def edge_histogram(self, grey: np.ndarray) -> np.ndarray:
        """Orientation histogram (0..180 degrees) of the gradients at Canny edges, weighted by magnitude."""
        edges = cv2.Canny(grey, 50, 150) > 0
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
        hist, _ = np.histogram(ang[edges] % 180.0, bins=self.cfg.edge_bins, range=(0.0, 180.0),
                               weights=mag[edges])
        return hist


def word_histogram(desc: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Counts of each descriptor's nearest visual word [words], square-rooted and L2-normalised."""
    if len(desc) == 0:
        return np.zeros(len(vocab), np.float32)
    # Squared distances without the |d|^2 term, which does not change the argmin.
    nearest = np.argmin((vocab * vocab).sum(1)[None, :] - 2.0 * desc @ vocab.T, axis=1)
    return _unit(np.sqrt(np.bincount(nearest, minlength=len(vocab)).astype(np.float32)))


def to_uint8(pixels: torch.Tensor) -> list[np.ndarray]:
    """A [B,3,S,S] batch of 0..1 RGB (the bof preprocessing) -> B contiguous uint8 HWC arrays."""
    arr = (pixels.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]


class BofModel:
    """The fitted parts: the visual vocabulary and the PCA (mean, components)."""

    def __init__(self, cfg: BofConfig, vocab: np.ndarray, mean: np.ndarray, components: np.ndarray):
        self.cfg, self.vocab = cfg, vocab.astype(np.float32)
        self.mean, self.components = mean.astype(np.float32), components.astype(np.float32)
        self.desc = Descriptors(cfg)

    def concat(self, rgb: np.ndarray) -> np.ndarray:
        """The weighted, concatenated blocks of one image, before PCA."""
        sift, rest = self.desc.blocks(rgb)
        parts = [word_histogram(sift, self.vocab), *rest]
        return np.concatenate([w * p for w, p in zip(self.cfg.weights, parts)])

    def project(self, x: np.ndarray) -> np.ndarray:
        """Concatenated blocks [B, D] -> PCA features [B, dim] (not normalised)."""
        return (x - self.mean) @ self.components.T

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.vocab, self.mean, self.components):
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """float16 safetensors + the config as JSON beside it (same stem)."""
        tensors = {k: torch.from_numpy(v).half() for k, v in
                   (("vocab", self.vocab), ("pca_mean", self.mean), ("pca_components", self.components))}
        save_checkpoint(path, tensors, self.cfg, "bof")

    @classmethod
    def from_file(cls, path: str | os.PathLike = BOF_WEIGHTS) -> "BofModel":
        path = Path(path)
        cfg_path = path.with_suffix(".json")
        if not path.exists() or not cfg_path.exists():
            raise FileNotFoundError(f"bof vocabulary/PCA not found at {path} (+ {cfg_path.name}); fit them with "
                                    "`python3 bof.py fit`")
        cfg = BofConfig.from_dict(json.loads(cfg_path.read_text()))
        t = {k: v.float().numpy() for k, v in load_file(path).items()}
        return cls(cfg, t["vocab"], t["pca_mean"], t["pca_components"])


class BofEncoder:
    """The image-only classical encoder behind the project's Encoder interface (extraction, search, demo).

    It implements the image half of the protocol itself rather than subclassing encoders.BaseEncoder (a torch
    module with a text side), so that the encoders package can import this module without an import cycle; it has no
    `text_side`: nothing that needs one (Combiner training, composed evaluation) can run on it.
    """

    image_only = True               # the server refuses text and composed queries against it

    def __init__(self, model: BofModel):
        self.model, self.name, self.dim = model, "bof", model.cfg.dim
        self.device = torch.device("cpu")
        # 0..1 RGB (mean 0, std 1): the descriptors want plain pixels; catalogue photos are squashed already.
        self.preprocess = Preprocess("resize", model.cfg.image_size, (0.0,) * 3, (1.0,) * 3)

    def encode_pixels(self, pixels: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Preprocessed batch [B,3,S,S] (0..1 RGB) -> features [B,dim], L2-normalised unless `raw`."""
        if len(pixels) == 0:
            return torch.zeros(0, self.dim)
        # One BLAS thread: the per-image products are tiny, and threads fighting over shared cores cost 10x.
        with threadpool_limits(1):
            x = np.stack([self.model.concat(rgb) for rgb in to_uint8(pixels)])
            f = torch.from_numpy(self.model.project(x)).float()
        return f if raw else F.normalize(f, dim=-1)

    def encode_images(self, images: Sequence[Image.Image], raw: bool = False) -> torch.Tensor:
        """PIL images -> features [B,dim], L2-normalised unless `raw`."""
        if len(images) == 0:
            return torch.zeros(0, self.dim)
        return self.encode_pixels(torch.stack([self.preprocess(to_rgb(im)) for im in images]), raw=raw)

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        raise TextUnsupported(TEXT_REFUSED)

    def with_text(self, side: object) -> "BofEncoder":
        """Itself for the base side (None, "", "base"): there is no text side to swap in."""
        if side is None or str(side) in ("", "base"):
            return self
        raise TextUnsupported(TEXT_REFUSED)

    def describe(self) -> dict:
        """What a feature file records about the encoder (the weights' fingerprint: refitting invalidates)."""
        return {"encoder": self.name, "dim": self.dim, "preprocess": self.preprocess.describe(),
                "config": asdict(self.model.cfg), "image_weights": self.model.fingerprint()}


def load_bof(path: str | os.PathLike | None = None) -> BofEncoder:
    """The bof encoder with the shipped (or the given) vocabulary and PCA."""
    return BofEncoder(BofModel.from_file(path or BOF_WEIGHTS))


def _load_rgb(path: Path, size: int) -> np.ndarray:
    return np.asarray(open_image(path).resize((size, size), Image.BICUBIC), np.uint8)


def fit(records: Sequence[ImageRecord], cfg: BofConfig | None = None, *, vocab_images: int = 800,
        per_image: int = 64, pca_images: int = 2500, seed: int = 0) -> tuple[BofModel, dict]:
    """Fit the vocabulary (MiniBatchKMeans of SIFT descriptors sampled from `vocab_images` images) and the
    PCA (on the concatenated blocks of `pca_images` images) on `records` (the train split). Returns the model
    and a summary with the time each stage took."""
    from sklearn.cluster import MiniBatchKMeans  # lazily: only fitting needs scikit-learn
    from sklearn.decomposition import PCA
    cfg = cfg or BofConfig()
    rng = random.Random(seed)
    desc = Descriptors(cfg)
    t0 = time.perf_counter()
    sample = []
    for r in rng.sample(list(records), min(vocab_images, len(records))):
        d = desc.sift_descriptors(cv2.cvtColor(_load_rgb(r.path, cfg.image_size), cv2.COLOR_RGB2GRAY))
        keep = np.random.default_rng(rng.randrange(1 << 30)).permutation(len(d))[:per_image]
        sample.append(d[keep])
    sample = np.concatenate(sample)
    if len(sample) < cfg.words:
        raise ValueError(f"{len(sample)} SIFT descriptors cannot make {cfg.words} visual words: give more images")
    km = MiniBatchKMeans(cfg.words, random_state=seed, n_init=3, batch_size=4096).fit(sample)
    t1 = time.perf_counter()
    probe = BofModel(cfg, km.cluster_centers_, np.zeros(1, np.float32), np.zeros((1, 1), np.float32))
    pca_recs = rng.sample(list(records), min(pca_images, len(records)))
    log.info("vocabulary: %d words from %d descriptors in %.1f s; PCA on %d images", cfg.words, len(sample),
             t1 - t0, len(pca_recs))
    with threadpool_limits(1):  # see BofEncoder.encode_pixels
        x = np.stack([probe.concat(_load_rgb(r.path, cfg.image_size)) for r in pca_recs])
    if len(x) <= cfg.dim:
        raise ValueError(f"PCA to {cfg.dim} dimensions needs more than {cfg.dim} images; got {len(x)}")
    pca = PCA(cfg.dim, random_state=seed).fit(x)
    t2 = time.perf_counter()
    model = BofModel(cfg, km.cluster_centers_, pca.mean_, pca.components_)
    summary = {"vocab_images": min(vocab_images, len(records)), "descriptors": len(sample),
               "pca_images": len(x), "input_dim": int(x.shape[1]), "dim": cfg.dim,
               "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
               "vocab_seconds": round(t1 - t0, 1), "pca_seconds": round(t2 - t1, 1), "seed": seed}
    return model, summary
