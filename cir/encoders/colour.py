"""What the lite image side knows about colour: descriptors computed from an item's own pixels.

Pooled ImageNet features barely encode colour, and colour is what most fashion queries are about. Two
descriptors, both from a batch of RGB images in 0..1 ([B,3,H,W], the preprocessed tensor un-normalised):

  hsv_histogram   the first lite heads' hand-made histogram: centre prior x 'not near-white' weights, hue x
                  saturation x value bins (kept so heads trained on it still load)
  lab_descriptor  the item's colours in CIELAB, where distances follow perception: the white studio background
                  (near-white regions connected to the border) is removed, skin is down-weighted (worn items),
                  and every remaining pixel votes softly for the nearest colours of a palette learned from the
                  catalogue's train pixels (k-means); plus the weighted mean colour and the skin and foreground
                  shares. On photos without a white background the centre prior alone weights the pixels.

Both are cheap next to the image tower (a few ms per image on a small CPU).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# sRGB (D65) -> XYZ, and the D65 white point: the CIE standard constants.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
LAB_EXTRA = 5  # lab_descriptor's values after the palette histogram: mean L, a, b, skin share, foreground share


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in 0..1 [B,3,H,W] -> CIELAB [B,3,H,W] (L 0..100, a/b about -100..100), D65 white."""
    rgb = rgb.float().clamp(0, 1)
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb.device), lin) / _WHITE.to(rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def foreground(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(item mask, skin mask), each [B,H,W] of 0/1: the item is everything but near-white regions touching the
    border (the studio background; white parts inside the item stay), skin is the classic YCrCb skin range."""
    x = rgb.float().clamp(0, 1)
    mx, mn = x.max(1).values, x.min(1).values
    whiteish = ((mn > 0.86) & (mx - mn < 0.08)).cpu().numpy()
    seeds = np.zeros_like(whiteish)
    seeds[:, [0, -1], :] = whiteish[:, [0, -1], :]
    seeds[:, :, [0, -1]] = whiteish[:, :, [0, -1]]
    # Flood the white regions from the border, image by image (no connectivity along the batch axis).
    within = np.zeros((3, 3, 3), dtype=bool)
    within[1] = ndimage.generate_binary_structure(2, 1)
    background = ndimage.binary_propagation(seeds, structure=within, mask=whiteish)
    fg = (~background).astype(np.float32)
    r, g, b = x[:, 0] * 255, x[:, 1] * 255, x[:, 2] * 255
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr, cb = (r - y) * 0.713 + 128, (b - y) * 0.564 + 128
    skin = (cr > 135) & (cr < 172) & (cb > 80) & (cb < 125) & (r > g) & (y > 60)
    return torch.from_numpy(fg).to(x.device), skin.float()


def _centre_prior(b: int, h: int, w: int, sigma: float, device) -> torch.Tensor:
    yy = torch.linspace(-1, 1, h, device=device).view(h, 1)
    xx = torch.linspace(-1, 1, w, device=device).view(1, w)
    return torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)).expand(b, h, w)


def pixel_weights(rgb: torch.Tensor, skin_weight: float = 0.15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel colour weights [B,H,W] (item pixels, skin down-weighted, a wide centre prior), and the item
    and skin masks. An image whose item mask is (nearly) empty or whole keeps the centre prior alone."""
    fg, skin = foreground(rgb)
    b, h, w = fg.shape
    centre = _centre_prior(b, h, w, 0.6, rgb.device)
    share = fg.flatten(1).mean(1)
    fallback = ((share < 0.02) | (share > 0.98)).view(b, 1, 1)  # no studio background found: a real photo
    wgt = torch.where(fallback, centre, centre * fg) * (1 - (1 - skin_weight) * skin)
    return wgt, fg, skin


def _small(rgb: torch.Tensor, side: int = 32) -> torch.Tensor:
    """About `side` x `side` pixels (area averaging): enough for an item's colours, and cheap."""
    f = max(1, rgb.shape[-1] // side)
    return F.avg_pool2d(rgb.float(), f) if f > 1 else rgb.float()


def _sqrt(x: torch.Tensor, safe: bool) -> torch.Tensor:
    # safe: a finite gradient at empty bins (plain sqrt's is infinite there, and 0 * inf is nan)
    return torch.where(x > 0, x.clamp_min(1e-12).sqrt(), torch.zeros_like(x)) if safe else x.sqrt()


def _votes(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Per-pixel vote multipliers [B,H,W] pooled to `like`'s grid ([B,h,w]); ones without a mask."""
    if mask is None:
        return torch.ones_like(like)
    return F.adaptive_avg_pool2d(mask[:, None].float(), like.shape[-2:])[:, 0]


def lab_descriptor(rgb: torch.Tensor, palette: torch.Tensor, sigma: float = 10.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B,3,H,W] RGB 0..1 -> [B, K + LAB_EXTRA]: the square root of the item's soft palette histogram in CIELAB
    (a dot product then compares colour distributions), the weighted mean Lab / 50, skin and item shares.

    `mask` ([B,H,W], default all ones) multiplies each pixel's vote: explain.py differentiates the score with
    respect to it to see which pixels' colours the score rests on."""
    x = _small(rgb)
    wgt, fg, skin = pixel_weights(x)
    px = rgb_to_lab(x).flatten(2).transpose(1, 2)  # [B, N, 3]
    w = (wgt * _votes(mask, wgt)).flatten(1)
    pal = palette.to(px)
    # softmax(-|p - c|^2 / 2s^2) over the palette; |p|^2 is the same for every c and cancels.
    logits = (2 * px @ pal.T - pal.square().sum(1)) / (2 * sigma ** 2)
    hist = torch.einsum("bnk,bn->bk", torch.softmax(logits, -1), w)
    hist = hist / hist.sum(1, keepdim=True).clamp_min(1e-8)
    mean = (px * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-8)
    skin_share = (skin * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp_min(1)
    return torch.cat([_sqrt(hist, mask is not None), mean / 50, skin_share[:, None],
                      fg.flatten(1).mean(1, keepdim=True)], 1)


def learn_palette(rgb: torch.Tensor, k: int = 64, seed: int = 0, samples: int = 200_000) -> torch.Tensor:
    """k CIELAB colours [k,3] that cover the item pixels of `rgb` (k-means over a seeded sample of them)."""
    from sklearn.cluster import KMeans  # lazily: scikit-learn takes ~1 s to import; only training needs it
    x = _small(rgb)
    fg, skin = foreground(x)
    px = rgb_to_lab(x).permute(0, 2, 3, 1).reshape(-1, 3)[((fg * (1 - skin)).reshape(-1) > 0.5)]
    g = torch.Generator().manual_seed(seed)
    px = px[torch.randperm(len(px), generator=g)[:samples]]
    km = KMeans(k, n_init=2, random_state=seed).fit(px.numpy())
    return torch.tensor(km.cluster_centers_, dtype=torch.float32)


def hsv_histogram(rgb: torch.Tensor, hue_bins: int = 12, grey_bins: int = 5,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first lite heads' colour histogram: [B,3,H,W] in 0..1 -> [B, hue_bins*6 + grey_bins].

    Pixels are weighted by a centre prior times 'not near-white' (catalogue shots sit on white); an all-white
    item keeps the centre prior alone. Chromatic pixels vote into hue (soft, circular) x saturation x value
    bins, grey pixels into value bins. Returned as the square root of the normalised histogram (Hellinger map).
    `mask` multiplies each pixel's vote, as in lab_descriptor.
    """
    x = F.avg_pool2d(rgb.float(), 4)  # 224 -> 56: enough for colour, 16x fewer pixels
    b, _, h, w = x.shape
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(1)
    mn, _ = x.min(1)
    c = v - mn
    s = torch.where(v > 1e-6, c / v.clamp_min(1e-6), torch.zeros_like(v))
    safe_c = c.clamp_min(1e-6)
    hue = torch.where(v == r, ((g - bl) / safe_c) % 6,
                      torch.where(v == g, (bl - r) / safe_c + 2, (r - g) / safe_c + 4)) / 6.0  # 0..1

    centre = _centre_prior(b, h, w, 0.5, x.device)
    fg = ((0.97 - mn) / 0.08).clamp(0, 1)
    weight = centre * fg
    weak = weight.flatten(1).sum(1) < 0.02 * centre.flatten(1).sum(1)
    weight = torch.where(weak.view(b, 1, 1), centre, weight) * _votes(mask, weight)

    chroma = ((s - 0.15) / 0.15).clamp(0, 1) * ((v - 0.12) / 0.12).clamp(0, 1)
    # Soft circular hue assignment to the two nearest bin centres.
    pos = hue * hue_bins - 0.5
    lo = torch.floor(pos)
    frac = pos - lo
    lo_i = lo.long() % hue_bins
    hi_i = (lo_i + 1) % hue_bins
    sat_i = (s >= 0.5).long()
    val_i = (v >= 0.45).long() + (v >= 0.75).long()
    base = sat_i * 3 + val_i  # 0..5
    wc = (weight * chroma).flatten(1)
    hist_c = torch.zeros(b, hue_bins * 6, device=x.device)
    hist_c.scatter_add_(1, (lo_i * 6 + base).flatten(1), wc * (1 - frac).flatten(1))
    hist_c.scatter_add_(1, (hi_i * 6 + base).flatten(1), wc * frac.flatten(1))

    grey_i = (v * grey_bins).long().clamp_max(grey_bins - 1)
    hist_g = torch.zeros(b, grey_bins, device=x.device)
    hist_g.scatter_add_(1, grey_i.flatten(1), (weight * (1 - chroma)).flatten(1))

    hist = torch.cat([hist_c, hist_g], 1)
    return _sqrt(hist / hist.sum(1, keepdim=True).clamp_min(1e-8), mask is not None)
