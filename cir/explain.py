"""Why an image matches a query: Grad-CAM of the search's own score, drawn over the image (the
command is explain.py; what the map means is in its help and the docs)."""
from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from cir.combiner import Combiner, compose
from cir.encoders import Encoder, HFClipEncoder, LiteEncoder
from cir.encoders.preprocess import Preprocess, crop_box, resized_size
from cir.images import to_rgb

log = logging.getLogger("explain")


# Anchor colours of the overlay's colour ramp (dark blue -> cyan -> yellow -> red), positions 0..1.
GRID = (28, 28)   # the raw map's resolution in JSON: fine enough for colour regions, small to send


_RAMP = np.array([[0, 0, 120], [0, 120, 255], [0, 230, 200], [255, 230, 0], [255, 60, 0], [200, 0, 0]], np.float32)


@dataclass
class Explanation:
    """One image's Grad-CAM for one query."""

    heat: np.ndarray        # [H, W] float32 in 0..1, on the image's own pixels (the padding cut away)
    grid: np.ndarray        # [GRID] the same map on the model's square view, area-averaged (0..1)
    cnn: np.ndarray         # [h, w] plain Grad-CAM of the conv feature map alone (lite: 7x7, 0..1)
    score: float            # the cosine the search ranks by
    image: Image.Image      # the RGB image the map is drawn on

    def to_json(self, decimals: int = 3) -> dict:
        """The raw map (grid resolution, rows of floats) and its context, JSON-serialisable."""
        def rows(a: np.ndarray) -> list:
            return np.round(a.astype(np.float64), decimals).tolist()
        return {"score": round(self.score, 4), "grid": rows(self.grid), "grid_size": list(self.grid.shape),
                "grad_cam": rows(self.cnn), "grad_cam_size": list(self.cnn.shape),
                "image_size": [self.image.width, self.image.height], "range": [0, 1]}

    def overlay(self, alpha: float = 0.6) -> Image.Image:
        """The image with the heatmap blended over it: transparent where there is no heat, so the product
        stays visible, and slightly smoothed for the eye (the raw map, `heat`, is not)."""
        rgb = np.asarray(self.image, np.float32)
        heat = gaussian_filter(self.heat, sigma=max(self.heat.shape) / 120)
        heat = heat / max(float(heat.max()), 1e-8)
        a = (alpha * heat ** 0.7)[..., None]
        return Image.fromarray((rgb * (1 - a) + colour_ramp(heat) * a).clip(0, 255).astype(np.uint8))

    def png(self, alpha: float = 0.6) -> bytes:
        buf = io.BytesIO()
        self.overlay(alpha).save(buf, "PNG", optimize=False)
        return buf.getvalue()


def colour_ramp(heat: np.ndarray) -> np.ndarray:
    """Heat in 0..1 [H, W] -> RGB [H, W, 3] (float32 0..255) along _RAMP."""
    pos = np.clip(heat, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac


def to_image_frame(cam: torch.Tensor, pre: Preprocess, width: int, height: int) -> np.ndarray:
    """A map over the preprocessed square view -> the same map over the original w x h image (the inverse of
    pad, resize and centre-crop; outside the crop it is 0)."""
    size = pre.size
    square = F.interpolate(cam[None, None].float(), (size, size), mode="bilinear", align_corners=False)[0, 0]
    if pre.mode == "resize":
        full = F.interpolate(square[None, None], (height, width), mode="bilinear", align_corners=False)[0, 0]
        return full.numpy()
    hp, vp = pre.padding(width, height)
    pw, ph = width + 2 * hp, height + 2 * vp
    rw, rh = resized_size(pw, ph, size)
    left, top, _, _ = crop_box(rw, rh, size)
    canvas = torch.zeros(rh, rw)
    canvas[top:top + size, left:left + size] = square
    padded = F.interpolate(canvas[None, None], (ph, pw), mode="bilinear", align_corners=False)[0, 0]
    return padded[vp:vp + height, hp:hp + width].numpy()


def _scaled(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 1e-12 else np.zeros_like(x)


class _FeatureMap(nn.Module):
    """The lite tower up to its last conv activation (EfficientNet-Lite0's head), [B, 1280, 7, 7]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class _ResNetParts:
    """An openai: RN tower split at its attention pool: `trunk` (stem and residual stages, the tower's own
    forward with the pool swapped for an identity) and `pool`. The trunk shares the tower's weights; swapping
    the pool on a shallow copy, not a hook on the shared tower, keeps concurrent explanations apart."""

    def __init__(self, visual: nn.Module):
        self.trunk = copy.copy(visual)
        self.trunk._modules = dict(visual._modules)   # a copy of the child table: the tower keeps its pool
        self.trunk._modules["attnpool"] = nn.Identity()
        pool = visual.attnpool
        self.dtype = next(pool.parameters()).dtype
        # float16 towers (openai on CUDA): differentiate a float32 copy of the small pool, not in half precision
        self.pool = pool if self.dtype == torch.float32 else copy.deepcopy(pool).float()


class Explainer:
    """Grad-CAM for one encoder. Only the head is differentiated: the tower's feature map is computed once
    (by ONNX Runtime where the encoder uses it), then the gradient flows from the score to that map alone."""

    def __init__(self, encoder: Encoder, threads: int | None = None):
        """`threads`: ONNX Runtime threads of the feature-map session (None: its default, every core; the
        server gives 1, as its workers run one torch thread each)."""
        self.encoder, self._ort, self._rn = encoder, None, None
        if isinstance(encoder, HFClipEncoder):   # a ViT: Grad-CAM over the last block's patch tokens
            return
        visual = getattr(getattr(encoder, "model", None), "visual", None)
        if visual is not None and isinstance(getattr(visual, "attnpool", None), nn.Module):  # openai: RN
            self._rn = _ResNetParts(visual)
            return
        if not isinstance(encoder, LiteEncoder):
            raise NotImplementedError(
                f"explanations are implemented for the lite, hf: (ViT) and openai: RN encoders only, not "
                f"{encoder.name}")
        self._maps = _FeatureMap(encoder.tower.net).eval()
        if getattr(encoder, "_ort", None) is not None:  # the encoder runs ONNX: so do the feature maps
            self._ort = encoder._ort.__class__(self._maps, encoder.cfg.image_size, threads)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed [1, 3, S, S] -> the last conv activation [1, C, h, w], float32 on CPU, no graph."""
        if self._ort is not None:
            return self._ort(pixels).float()
        with torch.no_grad():
            return self._maps(pixels.to(self.encoder.device)).float().cpu()

    def explain(self, image: Image.Image, query: torch.Tensor) -> Explanation:
        """The map of cos(embedding(image), query) for one PIL image and one query vector [d] or [1, d]."""
        enc = self.encoder
        image = to_rgb(image)
        pixels = enc.preprocess(image)[None]
        q = F.normalize(query.reshape(1, -1).float(), dim=-1)
        if q.shape[1] != enc.dim:
            raise ValueError(f"the query has {q.shape[1]} dimensions; the {enc.name} encoder's have {enc.dim}")
        if isinstance(enc, HFClipEncoder):
            return self._explain_vit(image, pixels, q)
        if self._rn is not None:
            return self._explain_rn(image, pixels, q)
        size = enc.preprocess.size
        acts = self.feature_map(pixels).requires_grad_(True)
        votes = torch.ones(1, size, size, requires_grad=True)   # each pixel's colour vote, differentiated
        with torch.enable_grad():
            colour = enc.heads.colour_features(enc.preprocess.unnormalize(pixels), votes)
            emb = enc.heads.image(acts.mean((2, 3)).to(enc.device), colour.to(enc.device))  # unit length
            score = (emb.float().cpu() @ q.T)[0, 0]
            g_acts, g_votes = torch.autograd.grad(score, (acts, votes))
        cells = (g_acts.mean((2, 3), keepdim=True) * acts.detach()).sum(1)[0]     # Grad-CAM before its relu
        # Both parts as score per pixel of the model's view: a cell's share spread over its pixels, and each
        # pixel's colour vote; their sum is a first-order account of where the score comes from.
        per_pixel = F.interpolate(cells[None, None], (size, size), mode="bilinear", align_corners=False)[0, 0]
        view = F.relu(per_pixel * cells.numel() / size ** 2 + g_votes[0])
        heat = to_image_frame(view, enc.preprocess, image.width, image.height)
        grid = F.adaptive_avg_pool2d(view[None, None], GRID)[0, 0]
        return Explanation(heat=_scaled(heat), grid=_scaled(grid), cnn=_scaled(F.relu(cells)),
                           score=float(score.detach()), image=image)


    def _explain_vit(self, image: Image.Image, pixels: torch.Tensor, q: torch.Tensor) -> Explanation:
        """Grad-CAM on a ViT: the patch tokens entering the last block are the feature map (a grid of
        image_size / patch_size cells); the score reaches them through that block's attention, as the class
        token that is pooled only mixes them there."""
        enc = self.encoder
        with torch.enable_grad():
            out = enc.model.vision_model(pixel_values=pixels.to(enc._device), output_hidden_states=True)
            tokens = out.hidden_states[-2]
            emb = F.normalize(enc.model.visual_projection(out.pooler_output).float(), dim=-1)
            score = (emb.cpu() @ q.T)[0, 0]
            (grads,) = torch.autograd.grad(score, (tokens,))
        patches, grads = tokens.detach()[0, 1:].float().cpu(), grads[0, 1:].float().cpu()  # no class token
        side = round(patches.shape[0] ** 0.5)
        cells = (grads.mean(0) * patches).sum(1).reshape(side, side)
        return self._from_cells(image, cells, score)

    def _explain_rn(self, image: Image.Image, pixels: torch.Tensor, q: torch.Tensor) -> Explanation:
        """Grad-CAM on an openai: RN tower: the feature map is the last residual stage's output, the input of
        the attention pool (image_size / 32 cells a side, 9x9 for RN50x4); the stages run once without a graph,
        the gradient flows from the score through the pool alone."""
        rn, dev = self._rn, self.encoder.device
        with torch.no_grad():
            acts = rn.trunk(pixels.to(dev, rn.dtype)).float()
        acts.requires_grad_(True)
        with torch.enable_grad():
            emb = F.normalize(rn.pool(acts).float(), dim=-1)   # the tower's encode_image, then unit length
            score = (emb.cpu() @ q.T)[0, 0]
            (grads,) = torch.autograd.grad(score, (acts,))
        cells = (grads.mean((2, 3), keepdim=True) * acts.detach()).sum(1)[0].float().cpu()
        return self._from_cells(image, cells, score)

    def _from_cells(self, image: Image.Image, cells: torch.Tensor, score: torch.Tensor) -> Explanation:
        """Grad-CAM cells [h, w] (before the relu) -> the Explanation over the image and the model's view."""
        pre = self.encoder.preprocess
        size = pre.size
        view = F.relu(F.interpolate(cells[None, None], (size, size), mode="bilinear", align_corners=False)[0, 0])
        heat = to_image_frame(view, pre, image.width, image.height)
        grid = F.adaptive_avg_pool2d(view[None, None], GRID)[0, 0]
        return Explanation(heat=_scaled(heat), grid=_scaled(grid), cnn=_scaled(F.relu(cells)),
                           score=float(score.detach()), image=image)


def query_vector(encoder: Encoder, text: str | None = None, reference: Image.Image | None = None,
                 caption: str | None = None, method: str = "combiner", combiner: Combiner | None = None
                 ) -> torch.Tensor:
    """The search's query vector [1, d]: a text alone, or a reference image + caption fused by `method`."""
    if text is not None:
        return compose(encoder, None, [text], "text")
    if reference is None or caption is None:
        raise ValueError("give a text, or a reference image and a caption")
    ref = encoder.encode_images([reference], raw=True)
    return compose(encoder, ref, [caption], method, combiner)

