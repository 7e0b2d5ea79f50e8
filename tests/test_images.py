"""cir.images: one decoding policy. A phone photo with an EXIF orientation gives the same pixels, hence the same
features, whether it is indexed in a folder dataset, uploaded, queried from the command line or explained."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cir.data import folder_images
from cir.extraction import extract_index
from cir.images import NotRegularFileError, as_displayed, open_image
from cir.index import load_index
from cir.serving.uploads import UploadLimits, UploadStore

ROTATE_90_CW = 6   # EXIF orientation: the stored pixels must be turned 90° clockwise to be displayed


def _sideways_photo() -> tuple[bytes, Image.Image]:
    """A JPEG stored sideways with orientation 6, and the picture as a viewer displays it (upright)."""
    upright = Image.new("RGB", (90, 150), (250, 250, 250))
    upright.paste((200, 20, 20), (15, 10, 75, 70))      # a red top
    upright.paste((20, 40, 160), (25, 80, 65, 145))     # blue trousers below it
    stored = upright.transpose(Image.Transpose.ROTATE_90)   # what a phone held sideways writes
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), upright


def test_open_image_applies_the_exif_orientation(tmp_path):
    data, upright = _sideways_photo()
    (tmp_path / "p.jpg").write_bytes(data)
    im = open_image(tmp_path / "p.jpg")
    assert im.mode == "RGB" and im.size == upright.size == (90, 150)
    diff = np.abs(np.asarray(im, np.int16) - np.asarray(upright, np.int16))
    assert diff.mean() < 4   # JPEG noise only: the red top is on top again


def test_transparency_is_composited_on_white_and_fifos_are_refused(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert as_displayed(rgba).getpixel((0, 0)) == (255, 255, 255)
    os.mkfifo(tmp_path / "trap.jpg")
    with pytest.raises(NotRegularFileError, match="FIFO"):
        open_image(tmp_path / "trap.jpg")   # never blocks


def test_a_rotated_photo_has_one_feature_in_a_folder_and_as_an_upload(tmp_path, lite_encoder):
    data, _ = _sideways_photo()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sideways.jpg").write_bytes(data)
    extract_index(folder_images(folder), lite_encoder, tmp_path / "features", workers=0)
    index = load_index(tmp_path / "features")
    indexed = index.raw([index.id_of("sideways.jpg")])

    store = UploadStore(tmp_path / "uploads", lite_encoder, UploadLimits(), 8, contextlib.nullcontext)
    uploaded = store.features(store.add(data).id)

    stored = Image.open(io.BytesIO(data)).convert("RGB")            # the pixels as the file stores them
    displayed = lite_encoder.encode_images([stored.transpose(Image.Transpose.ROTATE_270)], raw=True)
    unrotated = lite_encoder.encode_images([stored], raw=True)
    # the index stores float16 unit rows: equal up to that rounding
    assert torch.allclose(indexed, uploaded, rtol=2e-3, atol=2e-3)
    assert torch.allclose(indexed, displayed, rtol=2e-3, atol=2e-3)
    cos = torch.nn.functional.cosine_similarity
    assert cos(indexed, unrotated).item() < 0.99   # read unrotated, the photo is another picture


def test_open_image_at_a_bounded_size(tmp_path):
    """What explanations decode: a large JPEG at reduced size (DCT scaling, then a resize), oriented as shown."""
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(tmp_path / "big.jpg", quality=90)
    Image.new("RGB", (3000, 2000), (30, 30, 200)).save(tmp_path / "big.png")
    data, upright = _sideways_photo()
    (tmp_path / "side.jpg").write_bytes(data)
    assert open_image(tmp_path / "big.jpg", 1024).size == (1024, 768)
    assert open_image(tmp_path / "big.png", 1024).size == (1024, 683)
    assert open_image(tmp_path / "big.jpg").size == (4000, 3000)           # no bound: the whole image
    assert open_image(tmp_path / "side.jpg", 100).size == (60, 100)        # bounded, then turned upright
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft(None, (1024, 768))
        assert im.size == (2000, 1500)   # what open_image asks libjpeg for: 1/2, the most that keeps 1,024 px
