"""Metrics on small hand-computed rankings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cir.data import ImageRecord
from cir.evaluation.metrics import attribute_precision_at_k, recall_at_k
from cir.evaluation.protocols import image2image
from cir.index import FeatureIndex


def test_recall_at_k_by_hand():
    ranked = torch.tensor([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    targets = torch.tensor([3, 1, 9])  # hit at rank 1, hit at rank 3, miss
    assert recall_at_k(ranked, targets, (1, 2, 3)) == {"R@1": 33.33, "R@2": 33.33, "R@3": 66.67}


def test_attribute_precision_by_hand():
    gallery = [("Shirts", "Red"), ("Shirts", "Blue"), ("Shirts", "Red"), ("Jeans", "Red")]
    ranked = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    # query 0 wants red shirts: rows 0 and 2 among the first 4 -> 2/4; query 1 wants red jeans: row 3 -> 1/4
    assert attribute_precision_at_k(ranked, [("Shirts", "Red"), ("Jeans", "Red")], gallery, 4) == 37.5
    assert attribute_precision_at_k(ranked, [("Shirts", "Red"), ("Jeans", "Red")], gallery, 2) == 50.0


def test_image2image_excludes_the_query():
    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    recs = [ImageRecord(n, Path(n), {"articleType": t, "baseColour": c})
            for n, t, c in [("a", "Shirts", "Red"), ("b", "Shirts", "Red"), ("c", "Jeans", "Blue")]]
    out = image2image(FeatureIndex(feats.half(), ["a", "b", "c"]), recs, k=1)
    assert out["P@1"] == pytest.approx(66.67)  # a->b and b->a match, c->(b) does not
