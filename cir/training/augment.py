"""Colour-preserving augmentation for training the lite heads, so real photos do not suffer.

The catalogue is white-background studio shots; users upload photos of people and of clothes lying on beds
and floors. Each augmented view flips, crops, rescales and slightly rotates the image, and often puts the
item (the part of the image that is not the border-connected white background, colour.foreground) on
another background: a flat or graded colour with a little texture, as floors, sheets and walls are. Hue,
saturation and the item's own pixels are never changed: the colour words of the labels must stay true.
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from cir.encoders.colour import foreground


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A plausible non-studio background: a muted colour, a brightness gradient and fine noise."""
    w, h = size
    grey = rng.uniform(0.2, 0.9)
    tint = np.array([rng.uniform(-0.12, 0.12) for _ in range(3)])  # muted: floors, sheets, walls
    base = np.clip(grey + tint, 0, 1)
    ramp = np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-0.15, 0.15)
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, rng.uniform(0.0, 0.06), (h, w, 1))
    arr = np.clip(base[None, None, :] + ramp + noise, 0, 1)
    return Image.fromarray((arr * 255).astype(np.uint8))


def _replace_background(im: Image.Image, rng: random.Random) -> Image.Image:
    rgb = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    fg, _ = foreground(rgb)
    share = float(fg.mean())
    if share < 0.05 or share > 0.95:  # no studio background to replace
        return im
    mask = Image.fromarray((fg[0].numpy() * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
    return Image.composite(im, _background(rng, im.size), mask)


def augment(im: Image.Image, rng: random.Random, background_p: float = 0.6) -> Image.Image:
    """One random colour-preserving view of `im` (RGB)."""
    im = im.convert("RGB")
    if rng.random() < background_p:
        im = _replace_background(im, rng)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = im.size
    scale, aspect = rng.uniform(0.7, 1.0), rng.uniform(0.9, 1.1)
    cw, ch = min(w, int(w * scale * aspect ** 0.5)), min(h, int(h * scale / aspect ** 0.5))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        corner = im.getpixel((0, 0))
        im = im.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, fillcolor=corner)
    if rng.random() < 0.3:  # a smaller item in a larger frame, as a photo taken from further away
        s = rng.uniform(0.6, 0.9)
        small = im.resize((int(w * s), int(h * s)), Image.Resampling.BICUBIC)
        frame = Image.new("RGB", (w, h), im.getpixel((0, 0)))
        frame.paste(small, (rng.randint(0, w - small.width), rng.randint(0, h - small.height)))
        im = frame
    return im


class Augmented:
    """preprocess(augment(image)): a picklable callable for the decoding workers. The view of an image is
    seeded by its pixels, the seed and the view number, so a run is reproducible whatever the worker order."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor], seed: int, view: int):
        self.preprocess, self.seed, self.view = preprocess, seed, view

    def __call__(self, im: Image.Image) -> torch.Tensor:
        im = im.convert("RGB")
        digest = hashlib.sha256(im.resize((16, 16)).tobytes() + f"{self.seed}/{self.view}".encode()).digest()
        return self.preprocess(augment(im, random.Random(int.from_bytes(digest[:8], "big"))))
