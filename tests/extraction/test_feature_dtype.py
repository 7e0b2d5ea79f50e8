"""Feature files in float32 (--dtype float32, issue 21): the encoder's numbers come back from the index loader,
float16 ones only to ~1e-3; the two are separate extraction jobs. And --transform / --target-ratio reach the
encoder's preprocessing and the folder's manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cir import encoders
from cir.data import ImageRecord
from cir.extraction import extract_index
from cir.extraction.job import iter_batches
from cir.index import load_index


@pytest.fixture()
def records(tmp_path) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(40, 90), (64, 64), (120, 50), (33, 80)]):
        path = tmp_path / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(ImageRecord(f"im{i}", path))
    return out


def _raw(encoder, records) -> torch.Tensor:
    """The encoder's raw features of the records, computed apart from the extraction job."""
    (idx, pixels, bad), = list(iter_batches([r.path for r in records], encoder.preprocess, 64, 0))
    assert not bad
    return encoder.encode_pixels(pixels, raw=True)


def test_float32_features_round_trip_exactly(hf_encoder, records, tmp_path):
    raw = _raw(hf_encoder, records)
    extract_index(records, hf_encoder, tmp_path / "f32", workers=0, dtype="float32")
    extract_index(records, hf_encoder, tmp_path / "f16", workers=0)
    f32, f16 = load_index(tmp_path / "f32"), load_index(tmp_path / "f16")
    assert f32.features.dtype == torch.float32 and f16.features.dtype == torch.float16
    norms = raw.norm(dim=1, keepdim=True)
    assert torch.equal(f32.features, raw / norms)               # the stored rows: every bit
    assert torch.allclose(f32.raw(list(range(len(records)))), raw, rtol=1e-6, atol=0)
    err16 = (f16.raw(list(range(len(records)))) - raw).abs().max() / raw.abs().max()
    assert err16 > 1e-5   # float16 does lose digits: the float32 check above can fail
    assert json.loads((tmp_path / "f32" / "manifest.json").read_text())["dtype"] == "float32"


def test_the_dtype_is_part_of_the_job(hf_encoder, records, tmp_path):
    out = tmp_path / "f"
    extract_index(records, hf_encoder, out, workers=0)
    assert extract_index(records, hf_encoder, out, workers=0).seconds == 0       # up to date: not redone
    extract_index(records, hf_encoder, out, workers=0, dtype="float32")           # another job: redone
    assert load_index(out).features.dtype == torch.float32


def test_transform_and_target_ratio_reach_the_encoder_and_the_manifest(tiny_clip_dir, records, tmp_path):
    enc = encoders.load(f"hf:{tiny_clip_dir}", "cpu", preprocess="clip", target_ratio=2.0)
    assert (enc.preprocess.mode, enc.preprocess.target_ratio, enc.preprocess.size) == ("clip", 2.0, 32)
    extract_index(records, enc, tmp_path / "c", workers=0)
    pp = json.loads((tmp_path / "c" / "manifest.json").read_text())["preprocess"]
    assert (pp["mode"], pp["target_ratio"]) == ("clip", 2.0)
    with pytest.raises(ValueError, match="drop --transform"):
        encoders.load("bof", target_ratio=1.5)
