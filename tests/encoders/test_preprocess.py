"""Tests for preprocess.py: CLIP4Cir's TargetPad / SquarePad geometry, torchvision's Resize(int) sizes and
CenterCrop offsets (checked against exact-arithmetic references written here from the papers' description,
not against the module's own helpers), the full pipeline, transparency, edge fill, describe, unnormalize."""

import json
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from math import floor

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cir.encoders.preprocess import PREPROCESS_MODES, Preprocess, crop_box, resized_size

S = 32


def two_tone(w: int, h: int) -> Image.Image:
    """Left half red, right half green, so a paste offset shows up."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 255, 0)
    return Image.fromarray(a)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- references

def ref_targetpad(w: int, h: int, ratio: float = 1.25) -> tuple[int, int]:
    """Padded size: when long / short >= ratio, each side of the short axis gets floor((long / ratio - short)
    / 2) pixels, so the image ends near the target ratio; the long axis is never padded (nor cropped)."""
    long, short, r = max(w, h), min(w, h), Fraction(ratio)
    if Fraction(long, short) < r:
        return w, h
    p = floor((long / r - short) / 2)
    return (w + 2 * p, h) if w < h else (w, h + 2 * p)


def ref_squarepad(w: int, h: int) -> tuple[int, int]:
    """Each side of the short axis gets floor((long - short) / 2) pixels (an odd difference loses one)."""
    p = (max(w, h) - min(w, h)) // 2
    return (w + 2 * p, h) if w < h else (w, h + 2 * p)


def ref_resized(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size): short side -> size, long side -> floor(size * long / short)."""
    long = floor(Fraction(size * max(w, h), min(w, h)))
    return (size, long) if w <= h else (long, size)


def ref_offset(extent: int, size: int) -> int:
    """CenterCrop's offset: (extent - size) / 2 rounded half to even (Python's round)."""
    return int((Decimal(extent - size) / 2).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def ref_pipeline(img: Image.Image, mode: str, size: int, mean, std) -> torch.Tensor:
    """The CLIP4Cir transform from the references: pad (black; clip: none), bicubic resize, centre crop, /255,
    normalise."""
    w, h = img.size
    pads = {"targetpad": ref_targetpad, "squarepad": ref_squarepad, "clip": lambda w, h: (w, h)}
    pw, ph = pads[mode](w, h)
    img = ImageOps.expand(img, ((pw - w) // 2, (ph - h) // 2), fill=(0, 0, 0))
    rw, rh = ref_resized(pw, ph, size)
    img = img.resize((rw, rh), Image.BICUBIC)
    left, top = ref_offset(rw, size), ref_offset(rh, size)
    a = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255
    return torch.tensor((a - np.float32(mean)) / np.float32(std)).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------- targetpad

@pytest.mark.parametrize("size, padded", [
    ((100, 130), (104, 130)), ((300, 100), (300, 240)), ((224, 500), (400, 500)), ((640, 480), (640, 512)),
    ((100, 125), (100, 125)), ((100, 120), (100, 120)), ((125, 100), (125, 100)), ((64, 64), (64, 64)),
    ((100, 200), (160, 200)), ((1, 50), (39, 50))])
def test_targetpad_geometry_examples(size, padded):
    assert Preprocess("targetpad", size=S).pad(two_tone(*size)).size == padded
    assert ref_targetpad(*size) == padded


def test_targetpad_geometry_matches_reference():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 900, 2)) for _ in range(2000)]
    for ratio in (1.25, 1.5, 2.0):
        pp = Preprocess("targetpad", size=S, target_ratio=ratio)
        for w, h in sizes:
            hp, vp = pp.padding(w, h)
            assert (w + 2 * hp, h + 2 * vp) == ref_targetpad(w, h, ratio), (w, h, ratio)


def test_targetpad_keeps_near_square_images():
    pp = Preprocess("targetpad", size=S)
    for size in [(100, 110), (110, 100), (100, 124), (64, 64), (100, 125)]:
        im = two_tone(*size)
        out = pp.pad(im)
        assert out.size == size
        assert np.array_equal(np.asarray(out), np.asarray(im))
    assert Preprocess("targetpad", size=S, target_ratio=2.0).pad(two_tone(100, 150)).size == (100, 150)


def test_targetpad_pads_tall_image_centred():
    im = Image.new("RGB", (100, 200), (10, 200, 30))
    a = np.asarray(Preprocess("targetpad", size=S).pad(im))
    assert a.shape == (200, 160, 3)                              # 200 / 1.25 = 160 wide, not a square
    assert (a[:, :30] == 0).all() and (a[:, 130:] == 0).all()  # black pad left and right
    assert (a[:, 30:130] == (10, 200, 30)).all()                # original, centred


def test_targetpad_pads_wide_image_centred():
    im = two_tone(300, 100)
    a = np.asarray(Preprocess("targetpad", size=S).pad(im))
    assert a.shape == (240, 300, 3)
    assert (a[:70] == 0).all() and (a[170:] == 0).all()
    assert np.array_equal(a[70:170], np.asarray(im))


# ----------------------------------------------------------------------------------------------- squarepad

@pytest.mark.parametrize("size, padded", [
    ((101, 100), (101, 100)), ((100, 101), (100, 101)), ((100, 102), (102, 102)), ((100, 103), (102, 103)),
    ((100, 110), (110, 110)), ((300, 100), (300, 300)), ((33, 35), (35, 35)), ((1, 50), (49, 50)),
    ((64, 64), (64, 64))])
def test_squarepad_geometry_examples(size, padded):
    assert Preprocess("squarepad", size=S).pad(two_tone(*size)).size == padded
    assert ref_squarepad(*size) == padded


def test_squarepad_pads_centred():
    pp = Preprocess("squarepad", size=S)
    im = two_tone(100, 110)
    a = np.asarray(pp.pad(im))
    assert a.shape == (110, 110, 3)
    assert (a[:, :5] == 0).all() and (a[:, 105:] == 0).all()
    assert np.array_equal(a[:, 5:105], np.asarray(im))
    a = np.asarray(pp.pad(two_tone(100, 103)))
    assert a.shape == (103, 102, 3) and (a[:, 0] == 0).all() and (a[:, -1] == 0).all()


# ----------------------------------------------------------------------------------------------- resize and crop

@pytest.mark.parametrize("w, h, size, out", [
    (39, 50, 32, (32, 41)), (320, 256, 32, (40, 32)), (104, 130, 224, (224, 280)), (300, 240, 224, (280, 224)),
    (3, 10, 32, (32, 106)), (224, 224, 224, (224, 224)), (640, 512, 288, (360, 288)), (100, 130, 224, (224, 291))])
def test_resized_size(w, h, size, out):
    assert resized_size(w, h, size) == out == ref_resized(w, h, size)


def test_resized_size_matches_reference():
    rng = np.random.default_rng(1)
    for w, h, size in rng.integers(1, 2000, (3000, 3)).tolist():
        assert resized_size(w, h, size) == ref_resized(w, h, size), (w, h, size)


@pytest.mark.parametrize("extent, offset", [(32, 0), (33, 0), (34, 1), (35, 2), (36, 2), (37, 2), (39, 4)])
def test_crop_offsets_round_half_to_even(extent, offset):
    assert ref_offset(extent, 32) == offset
    assert crop_box(extent, 32, 32) == (offset, 0, offset + 32, 32)
    assert crop_box(32, extent, 32) == (0, offset, 32, offset + 32)


@pytest.mark.parametrize("w, h", [(33, 32), (35, 32), (37, 32), (32, 35), (32, 37)])
def test_crop_offset_in_pixels(w, h):
    """Short side already `size` and no padding: no resampling, so the crop offset shows exactly."""
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    a = np.stack([cols * 6, rows * 6, np.zeros_like(cols)], -1).astype(np.uint8)
    pp = Preprocess("targetpad", size=S, target_ratio=10.0)
    rgb = (pp.unnormalize(pp(Image.fromarray(a))) * 255).round().numpy().astype(int)
    assert rgb[0, 0, 0] == 6 * ref_offset(w, S) and rgb[1, 0, 0] == 6 * ref_offset(h, S)


@pytest.mark.parametrize("mode", ["targetpad", "squarepad", "clip"])
def test_pipeline_matches_reference(mode):
    rng = np.random.default_rng(2)
    sizes = [(100, 130), (300, 100), (224, 500), (640, 480), (100, 103), (101, 100), (1, 50), (224, 224)]
    sizes += [tuple(int(v) for v in rng.integers(1, 400, 2)) for _ in range(20)]
    for size in (S, 224):
        pp = Preprocess(mode, size=size)
        for i, (w, h) in enumerate(sizes):
            im = noise(w, h, i)
            assert torch.equal(pp(im), ref_pipeline(im, mode, size, pp.mean.ravel(), pp.std.ravel())), (w, h)


@pytest.mark.parametrize("mode, band_kept, padded", [("clip", False, False), ("targetpad", True, True),
                                                     ("squarepad", True, True)])
def test_clip_mode_crops_the_long_side_where_the_pads_keep_it(mode, band_kept, padded):
    """CLIP's own preprocess (CLIP4Cir's --transform clip): no padding, the short side resized to the input
    size and the long side's overflow cropped away: a red band along the top of a tall image is lost, and no
    black padding appears at the sides; the padding modes keep the band and pad the sides black."""
    a = np.full((100, 40, 3), 200, np.uint8)
    a[:20] = (255, 0, 0)
    pp = Preprocess(mode, size=S)
    assert (pp.pad(Image.fromarray(a)).size == (40, 100)) != padded
    rgb = pp.unnormalize(pp(Image.fromarray(a))).numpy()
    red = (rgb[0] > 0.9) & (rgb[1] < 0.1)
    assert bool(red[0].any()) == band_kept
    assert bool((rgb[:, :, 0] < 0.05).all()) == padded   # the left column: black padding, or the image's grey


def test_resize_mode_squashes():
    pp = Preprocess("resize", size=S)
    im = two_tone(300, 60)
    assert pp.pad(im) is im
    x = pp(im)
    assert x.shape == (3, S, S)
    rgb = pp.unnormalize(x)
    # No padding and no crop: the left column is red, the right column green, on every row.
    assert (rgb[0, :, 0] > 0.9).all() and (rgb[1, :, -1] > 0.9).all()


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
@pytest.mark.parametrize("size", [(300, 40), (40, 300), (33, 35), (1, 50), (224, 224)])
def test_call_gives_square_tensor(mode, size):
    x = Preprocess(mode, size=S)(two_tone(*size))
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_targetpad_call_on_wide_image():
    """320x80 pads to 320x256, resizes to 40x32 and loses 4 columns a side to the crop, as the original."""
    pp = Preprocess("targetpad", size=S)
    rgb = pp.unnormalize(pp(two_tone(320, 80)))
    assert rgb.shape == (3, S, S)
    assert (rgb[:, :6] < 0.02).all() and (rgb[:, -6:] < 0.02).all()  # black bands top and bottom
    mid = S // 2
    assert rgb[0, mid, 2] > 0.9 and rgb[1, mid, -3] > 0.9           # both halves survive


# ----------------------------------------------------------------------------------------------- fill, alpha, api

def test_edge_fill_uses_border_median():
    pp = Preprocess("targetpad", size=S, fill="edge")
    a = np.full((200, 100, 3), 255, np.uint8)
    a[60:140, 20:80] = (200, 0, 0)  # a red item on a white studio background,
    a[:30, 45:55] = 0               # with a black strap running off the top: the median ignores it
    out = np.asarray(pp.pad(Image.fromarray(a)))
    assert out.shape == (200, 160, 3)
    assert (out[:, :30] == 255).all() and (out[:, 130:] == 255).all()
    assert tuple(out[100, 80]) == (200, 0, 0)
    rgb = pp.unnormalize(pp(Image.fromarray(a)))
    assert (rgb[:, :, 0] > 0.98).all() and (rgb[:, :, -1] > 0.98).all()  # padded sides are white

    grey = np.full((50, 200, 3), (90, 100, 110), np.uint8)
    grey[20:30, 90:110] = 0
    out = np.asarray(pp.pad(Image.fromarray(grey)))
    assert out.shape == (160, 200, 3)
    assert (out[:55] == (90, 100, 110)).all() and (out[-55:] == (90, 100, 110)).all()


def test_transparent_pixels_become_white():
    pp = Preprocess("targetpad", size=S)
    a = np.zeros((40, 40, 4), np.uint8)
    a[10:30, 10:30] = (0, 0, 255, 255)  # opaque blue square, fully transparent (black) elsewhere
    rgb = pp.unnormalize(pp(Image.fromarray(a, "RGBA")))
    assert rgb.shape == (3, S, S)
    assert (rgb[:, 0, 0] > 0.99).all() and (rgb[:, -1, -1] > 0.99).all()
    assert rgb[2, S // 2, S // 2] > 0.99 and rgb[0, S // 2, S // 2] < 0.01

    la = Image.new("LA", (20, 20), (0, 0))
    assert (pp.unnormalize(pp(la)) > 0.99).all()
    p = Image.new("P", (20, 20), 0)
    p.info["transparency"] = 0
    assert (pp.unnormalize(pp(p)) > 0.99).all()


def test_unnormalize_round_trip():
    pp = Preprocess("resize", size=8)
    a = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgb = pp.unnormalize(pp(Image.fromarray(a)))
    np.testing.assert_allclose(rgb.numpy().transpose(1, 2, 0), a / 255.0, atol=1e-5)
    batch = torch.stack([pp(Image.fromarray(a))] * 2)
    assert pp.unnormalize(batch).shape == (2, 3, 8, 8)


def test_unknown_preprocess_mode_and_fill():
    with pytest.raises(ValueError) as e:
        Preprocess("centercrop")
    for mode in PREPROCESS_MODES:
        assert mode in str(e.value)
    with pytest.raises(ValueError, match="edge"):
        Preprocess("targetpad", fill="white")


def test_preprocess_describe():
    d = Preprocess("squarepad", size=S, fill="edge").describe()
    assert d["mode"] == "squarepad" and d["size"] == S and d["fill"] == "edge"
    assert d["target_ratio"] == 1.25 and len(d["mean"]) == 3 and len(d["std"]) == 3
    json.dumps(d)  # recorded in feature files
