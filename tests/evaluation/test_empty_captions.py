"""--empty-captions (issue 21): a query whose caption is empty is its reference image alone (this project's
default) or, as CLIP4Cir, the fusion with the text encoder's features of "" (FashionIQ's captions then joined
literally, as the original joins them)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir.data import fiq_caption
from cir.encoders.texts import CachedTexts
from cir.evaluation.protocols import compose_queries


@pytest.fixture()
def refs(hf_encoder) -> torch.Tensor:
    return torch.randn(3, hf_encoder.dim, generator=torch.Generator().manual_seed(0))


def test_image_alone_by_default(hf_encoder, refs):
    q, empty = compose_queries(hf_encoder, refs, ["a red one", "", "  "], "sum")
    assert empty == 2
    assert torch.allclose(q[1:], F.normalize(refs[1:], dim=-1))
    assert torch.allclose(q[0], F.normalize(refs[0] + hf_encoder.encode_texts(["a red one"], raw=True)[0], dim=-1))


@pytest.mark.parametrize("wrapped", [False, True])
def test_encode_fuses_the_empty_texts_features(hf_encoder, refs, wrapped):
    encoder = CachedTexts(hf_encoder) if wrapped else hf_encoder   # stage 2 validates through the cache
    q, empty = compose_queries(encoder, refs, ["a red one", "", "  "], "sum", empty_captions="encode")
    blank = hf_encoder._encode_texts([""])[0]   # what CLIP4Cir's clip.tokenize("") leads to: start and end tokens
    assert empty == 2
    assert torch.allclose(q[1:], F.normalize(refs[1:] + blank, dim=-1), atol=1e-6)
    assert not torch.allclose(q[1:], F.normalize(refs[1:], dim=-1), atol=1e-3)
    image_alone, _ = compose_queries(hf_encoder, refs, ["a red one", "", "  "], "sum")
    assert torch.allclose(q[0], image_alone[0])   # a caption with words: the same either way
    with pytest.raises(ValueError, match="empty_captions"):
        compose_queries(hf_encoder, refs, ["x", "y", "z"], "sum", empty_captions="skip")


def test_fashioniq_captions_joined_literally_as_the_original():
    assert fiq_caption(["is red.", ""]) == "is red"   # this project: the other caption alone
    assert fiq_caption(["is red.", ""], literal=True) == "Is red and "
    assert fiq_caption(["", ""], literal=True) == " and "
    assert fiq_caption(["is red", "has stripes?"], literal=True) == fiq_caption(["is red", "has stripes?"])
