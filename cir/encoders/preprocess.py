"""Image preprocessing shared by every encoder: PIL image -> normalised float tensor [3, size, size].

Reproduces CLIP4Cir's torchvision pipelines with PIL/numpy only (torchvision is not required):
TargetPad or SquarePad (or no padding: `clip`, CLIP's own pipeline), then Resize(size, bicubic) of the short
side, CenterCrop(size), ToTensor and Normalize, with torchvision's integer arithmetic, so the pixels match the
original's. Also holds the normalisation constants of the CLIP and lite encoders.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cir.images import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 pixels.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
# The first three are the original scripts' --transform choices; resize (a square squash) is this project's.
PREPROCESS_MODES = ("targetpad", "squarepad", "clip", "resize")
DEFAULT_TARGET_RATIO = 1.25   # CLIP4Cir's --target-ratio


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) after torchvision's Resize(size): short side = size, long side = int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of torchvision's CenterCrop(size) on a w x h image >= size."""
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return left, top, left + size, top + size


class Preprocess:
    """PIL image -> normalised float tensor [3, size, size], as CLIP4Cir prepares images.

    targetpad: CLIP4Cir's TargetPad: when max/min side >= `target_ratio`, pad the short side (each side by
    int((long / target_ratio - short) / 2)) so the ratio comes down to about `target_ratio`;
    squarepad: pad each side by int((long - short) / 2), nearly a square; clip: no padding (CLIP's own
    preprocess: the long side's overflow is cropped away); these three then resize the short side to `size`
    and centre-crop. resize: squash to size x size. `fill` is black (the original) or the median colour of
    the image's border ("edge").
    """

    def __init__(self, mode: str = "targetpad", size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, target_ratio: float = DEFAULT_TARGET_RATIO, fill: str = "black"):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing {mode!r}; valid: {', '.join(PREPROCESS_MODES)}")
        if fill not in ("black", "edge"):
            raise ValueError(f"unknown fill {fill!r}; valid: black, edge")
        if not target_ratio >= 1:  # a ratio under 1 would pad every image, the long side included
            raise ValueError(f"target_ratio must be 1 or more, not {target_ratio}")
        self.mode, self.size, self.target_ratio, self.fill = mode, size, target_ratio, fill
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def with_mode(self, mode: str | None = None, target_ratio: float | None = None) -> "Preprocess":
        """The same size, normalisation and fill with another mode and/or target ratio (None: unchanged)."""
        return Preprocess(mode or self.mode, self.size, self.mean.ravel().tolist(), self.std.ravel().tolist(),
                          self.target_ratio if target_ratio is None else target_ratio, self.fill)

    def describe(self) -> dict:
        """The settings, JSON-serialisable (recorded in feature files)."""
        return {"mode": self.mode, "size": self.size, "target_ratio": self.target_ratio, "fill": self.fill,
                "mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist()}

    def padding(self, w: int, h: int) -> tuple[int, int]:
        """(left/right, top/bottom) padding of a w x h image, per side."""
        if self.mode == "squarepad":
            side = max(w, h)
            return int((side - w) / 2), int((side - h) / 2)
        if self.mode == "targetpad" and max(w, h) / min(w, h) >= self.target_ratio:
            scaled = max(w, h) / self.target_ratio
            # The long side's value is negative; TargetPad clamps it at 0 (unclamped, torchvision would crop).
            return max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        return 0, 0

    def pad(self, img: Image.Image) -> Image.Image:
        """The padding step alone (exposed so its geometry can be tested)."""
        w, h = img.size
        hp, vp = self.padding(w, h)
        if hp == vp == 0:
            return img
        canvas = Image.new("RGB", (w + 2 * hp, h + 2 * vp), self._fill_colour(img))
        canvas.paste(img, (hp, vp))
        return canvas

    def _fill_colour(self, img: Image.Image) -> tuple[int, int, int]:
        if self.fill == "black":
            return (0, 0, 0)
        # Median of the border: white for studio shots, the backdrop's colour for photos.
        a = np.asarray(img.convert("RGB"))
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        return tuple(int(v) for v in np.median(border, axis=0))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.pad(to_rgb(img))
        if self.mode == "resize":
            img = img.resize((self.size, self.size), Image.BICUBIC)
        else:
            img = img.resize(resized_size(*img.size, self.size), Image.BICUBIC)  # a no-op at the same size
            img = img.crop(crop_box(*img.size, self.size))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((x - self.mean) / self.std)

    def unnormalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Back to 0..1 RGB (used by the colour descriptor)."""
        mean = torch.as_tensor(self.mean, device=pixels.device)
        std = torch.as_tensor(self.std, device=pixels.device)
        return (pixels.float() * std + mean).clamp(0, 1)
