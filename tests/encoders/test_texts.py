"""Caption features encoded once: the stored memo that carries them from one training run to the next."""
from __future__ import annotations

import torch

from cir.encoders.texts import CachedTexts, StoredMemo, text_fingerprint


def test_a_stored_memo_brings_back_what_it_saved_and_only_adds_later(lite_encoder, tmp_path):
    path = tmp_path / "captions-x.safetensors"
    memo = StoredMemo(path)
    first = CachedTexts(lite_encoder, memo).encode_texts(["in red", "the same from nike"], raw=True)
    memo.save()
    again = StoredMemo(path)
    assert set(again) == {("base", "in red"), ("base", "the same from nike")}
    texts = CachedTexts(lite_encoder, again)
    assert torch.equal(texts.encode_texts(["the same from nike", "in red"], raw=True), first.flip(0))
    assert texts.cached  # nothing was encoded
    texts.encode_texts(["make it formal"])
    again.save()
    assert len(StoredMemo(path)) == 3


def test_the_fingerprint_tells_text_sides_apart(lite_encoder):
    assert text_fingerprint(lite_encoder) == text_fingerprint(lite_encoder)
    assert text_fingerprint(lite_encoder) != text_fingerprint(lite_encoder.with_text("stage1"))
