"""colour.py (the lite image side's colour descriptors) and augment.py (colour-preserving training views)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from cir.encoders import LiteConfig, LiteHeads
from cir.encoders.colour import LAB_EXTRA, foreground, lab_descriptor, learn_palette, pixel_weights, rgb_to_lab
from cir.training.augment import Augmented, augment


def on_white(colour, size: int = 224, border: int = 56) -> torch.Tensor:
    x = torch.ones(3, size, size)
    x[:, border:-border, border:-border] = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return x


# A palette of plain colours in Lab, as learn_palette would give for a catalogue of them.
PALETTE = rgb_to_lab(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0.6, 0], [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5],
                                   [0.2, 0.2, 0.45]], dtype=torch.float32).view(7, 3, 1, 1)).view(7, 3)


def test_rgb_to_lab_reference_values():
    lab = rgb_to_lab(torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]]).view(4, 3, 1, 1)).view(4, 3)
    # CIE values of the sRGB primaries (as colour-science / scikit-image give them), to about 0.1.
    expected = torch.tensor([[100.0, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    assert torch.allclose(lab, expected, atol=0.2)


def test_foreground_removes_border_white_but_keeps_white_inside_the_item():
    x = on_white((0.1, 0.1, 0.8))
    x[:, 100:124, 100:124] = 1.0  # a white logo inside a blue item
    fg, skin = foreground(x[None])
    assert fg[0, 0, 0] == 0 and fg[0, 112, 112] == 1 and fg[0, 60, 60] == 1
    assert skin.sum() == 0


def test_pixel_weights_fall_back_to_the_centre_prior_on_photos():
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    wgt, fg, _ = pixel_weights(photo)
    assert fg.mean() == 1 and wgt[0, 32, 32] > wgt[0, 0, 0] > 0


def test_lab_descriptor_shape_and_colour_separation():
    x = torch.stack([on_white((1, 0, 0)), on_white((0.9, 0.05, 0.05)), on_white((0, 0, 1)), on_white((0, 0, 0)),
                     torch.ones(3, 224, 224), torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(1))])
    d = lab_descriptor(x, PALETTE)
    assert d.shape == (6, len(PALETTE) + LAB_EXTRA) and torch.isfinite(d).all()
    hist = d[:, :len(PALETTE)]
    red, red2, blue, black = hist[:4]
    assert float(red @ red2) > 0.9 and float(red @ blue) < 0.2 and float(black @ blue) < 0.5
    assert hist[2].argmax() == 1 and hist[3].argmax() == 3
    # The white background does not vote: a red item on white is red, not white.
    assert hist[0, 4] < 0.1


def test_skin_is_down_weighted():
    x = on_white((0.2, 0.2, 0.45))  # a navy item ...
    x[:, 20:56, 80:144] = torch.tensor([0.87, 0.67, 0.55]).view(3, 1, 1)  # ... under a face
    d = lab_descriptor(x[None], PALETTE)[0]
    assert d[:len(PALETTE)].argmax() == 6 and d[len(PALETTE) + 3] > 0.1  # navy wins; the skin share is seen


def test_learn_palette_is_deterministic_and_covers_the_pixels():
    x = torch.stack([on_white((1, 0, 0)), on_white((0, 0, 1)), on_white((0, 0.6, 0))])
    a, b = learn_palette(x, k=3, seed=0), learn_palette(x, k=3, seed=0)
    assert torch.equal(a, b) and a.shape == (3, 3)
    want = rgb_to_lab(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0.6, 0]], dtype=torch.float32).view(3, 3, 1, 1))
    dist = torch.cdist(want.view(3, 3), a).min(1).values
    assert (dist < 2).all()


def test_lab_heads_store_their_palette(tmp_path):
    cfg = LiteConfig(embed_dim=16, hidden_dim=32, colour="lab", palette_size=7)
    heads = LiteHeads(cfg)
    heads.palette.copy_(PALETTE)
    path = tmp_path / "h.safetensors"
    heads.save(path)
    back = LiteHeads.from_file(path)
    assert back.cfg.colour == "lab" and torch.allclose(back.palette, PALETTE, atol=0.1)
    feats = back.colour_features(torch.stack([on_white((1, 0, 0))]))
    assert feats.shape == (1, cfg.colour_dim)
    with pytest.raises(ValueError, match="colour descriptor"):
        LiteHeads(LiteConfig(colour="rgb"))


def test_augment_keeps_the_item_colours_and_size():
    im = Image.fromarray((on_white((0.1, 0.1, 0.8)).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    for seed in range(6):
        out = augment(im, random.Random(seed))
        assert out.size == im.size and out.mode == "RGB"
        arr = np.asarray(out, dtype=np.float32) / 255
        blue = (arr[..., 2] > 0.6) & (arr[..., 0] < 0.25)
        assert blue.mean() > 0.1  # the item is still there, still blue
        mean = arr[blue].mean(0)
        assert abs(mean[2] - 0.8) < 0.08 and mean[0] < 0.2  # hue and saturation untouched


def test_augmented_views_are_reproducible_and_differ_by_view():
    im = Image.fromarray((on_white((0.8, 0.1, 0.1)).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    prep = lambda x: torch.from_numpy(np.asarray(x, dtype=np.float32))  # noqa: E731
    a, b, c = Augmented(prep, 0, 1)(im), Augmented(prep, 0, 1)(im), Augmented(prep, 0, 2)(im)
    assert torch.equal(a, b) and not torch.equal(a, c)
