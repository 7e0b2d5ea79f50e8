"""Shoppers' references in composed training: real-photo colour triplets and cached photo-like views."""
from __future__ import annotations

import random

import pytest
import torch

from cir.catalog import triplets
from cir.data import catalog_images
from cir.data.photos import PHOTO_CLASSES
from cir.images import open_image
from cir.training.references import photo_like_features, photo_triplets


def test_photo_triplets_want_an_accepted_type_in_the_named_colour(catalog_root):
    catalog = catalog_images(catalog_root, "val")
    attrs = {r.name: r.attrs for r in catalog}
    labels = {f"p{i}": label for i, label in enumerate(PHOTO_CLASSES)}
    trips = photo_triplets(list(labels), labels, catalog, 200, random.Random(0), "train")
    assert len(trips) == 200 and {t.kind for t in trips} == {"photo_colour"}
    for t in trips:
        assert t.wanted["articleType"] == PHOTO_CLASSES[labels[t.reference]].types
        assert triplets.satisfies(attrs[t.target], t.wanted)
    assert all(t.wanted["baseColour"].split()[0].lower() in t.caption.lower() for t in trips)
    assert not any(t.caption.startswith("this in ") for t in trips)  # a held-out wording, never trained on
    again = photo_triplets(list(labels), labels, catalog, 200, random.Random(0), "train")
    assert [(t.reference, t.caption, t.target) for t in again] == [(t.reference, t.caption, t.target) for t in trips]


@pytest.mark.slow
def test_photo_like_views_are_cached_and_a_broken_image_keeps_a_nan_row(catalog_root, lite_encoder, tmp_path):
    recs = catalog_images(catalog_root, "val")[:6]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    recs = recs + [type(recs[0])("broken", broken)]
    views = photo_like_features(lite_encoder, recs, tmp_path, seed=0, view=1, workers=0)
    assert views.shape == (7, lite_encoder.dim) and torch.isnan(views[6]).all() and torch.isfinite(views[:6]).all()
    clean = lite_encoder.encode_images([open_image(r.path) for r in recs[:6]], raw=True)
    assert not torch.allclose(views[:6], clean, atol=1e-3)  # other backgrounds, crops: another view
    assert torch.allclose(photo_like_features(lite_encoder, recs, tmp_path, seed=0, view=1, workers=0), views,
                          equal_nan=True, rtol=0, atol=0)
    assert len(list(tmp_path.glob("photo-like-v1-*.safetensors"))) == 1

