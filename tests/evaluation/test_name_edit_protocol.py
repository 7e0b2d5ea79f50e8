"""evaluation.protocols.composed_name_edits on a hand-built gallery whose ranking is known: R@K of the target,
name@K by the name rule, the reference never counted, the wish typed instead of the caption."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cir.catalog.name_edits import NameEdit
from cir.data import ImageRecord
from cir.evaluation.protocols import composed_name_edits
from cir.index import FeatureIndex, Metadata

NAMES = ["Puma Men Black Tshirt", "Nike Men Black Tshirt", "Nike Men Red Tshirt", "Nike Women Black Tshirt",
         "Nike Men Black Shirt"] + [f"Adidas Men Blue Tshirt {i}" for i in range(7)]
MEN_TEES = {"articleType": "Tshirts", "gender": "Men"}


class TypedTexts:
    """Records what is typed; features from the first letter, enough for method "text"."""

    name, dim = "typed", len(NAMES)

    def __init__(self):
        self.seen: list[str] = []

    def encode_texts(self, texts, raw=False):
        self.seen += list(texts)
        return F.normalize(torch.stack([torch.eye(self.dim)[ord(t[0]) % self.dim] for t in texts]), dim=-1)


def _gallery() -> tuple[list[ImageRecord], FeatureIndex]:
    """Row i's feature is e0 + 0.1*i*e_i: from row 0 or 1, the others rank in row order."""
    records = []
    for i, n in enumerate(NAMES):
        attrs = {"gender": "Women" if "Women" in n else "Men", "articleType": "Shirts" if "Shirt " in n + " "
                 else "Tshirts", "productDisplayName": n}
        records.append(ImageRecord(str(i), Path(f"{i}.jpg"), attrs))
    eye = torch.eye(len(NAMES))
    feats = torch.stack([eye[0] + 0.1 * i * eye[i] for i in range(len(NAMES))])
    return records, FeatureIndex(F.normalize(feats, dim=-1).half(), [r.name for r in records])


def test_recall_and_name_match_on_a_known_ranking():
    records, index = _gallery()
    edits = [NameEdit("0", "1", "the same from nike", ("nike",), "name", "nike t-shirt", MEN_TEES),
             NameEdit("0", "2", "make it red", ("red",), "colour", "red t-shirt", MEN_TEES),
             NameEdit("1", "2", "nike", ("nike",), "name", "nike t-shirt", MEN_TEES)]  # the reference fulfils it
    m = composed_name_edits(TypedTexts(), index, records, edits, "image").metrics
    # From row 0 the ranking is 1, 2, ..., 11; from row 1 it is 0, 2, 3, ...: the reference is left out.
    # Fulfilling: "nike" men's tees are rows 1 and 2; "red" row 2; the third edit row 2 (its reference is 1).
    assert m["queries"] == 3 and m["R@1"] == round(100 / 3, 2) and m["R@10"] == 100.0
    assert m["name@1"] == round(100 / 3, 2)
    assert m["name@10"] == round(100 * (0.2 + 0.1 + 0.1) / 3, 2)
    assert m["name@10_ceiling"] == round(100 * (0.2 + 0.1 + 0.1) / 3, 2)
    assert m["families"]["name"] == {"queries": 2, "R@10": 100.0, "name@10": 15.0, "name@10_ceiling": 15.0}
    assert m["families"]["colour"]["name@10"] == 10.0 and "gender" not in m["families"]


def test_the_wish_is_what_text_typed_types():
    records, index = _gallery()
    edits = [NameEdit("0", "1", "the same from nike", ("nike",), "name", "nike t-shirt", MEN_TEES)]
    enc = TypedTexts()
    composed_name_edits(enc, index, records, edits, "text", text="wish")
    composed_name_edits(enc, index, records, edits, "text")
    assert enc.seen == ["nike t-shirt", "the same from nike"]
    with pytest.raises(ValueError, match="unknown text"):
        composed_name_edits(enc, index, records, edits, "text", text="name")


def test_the_metadata_path_reads_the_caption():
    """`metadata`: the caption's "red" lifts the one red men's tee above the rows nearer the reference."""
    records, index = _gallery()
    edits = [NameEdit("0", "2", "make it red", ("red",), "colour", "red t-shirt", MEN_TEES)]
    plain = composed_name_edits(TypedTexts(), index, records, edits, "image")
    meta = Metadata.from_records(records, index.names)
    boosted = composed_name_edits(TypedTexts(), index, records, edits, "image", metadata=meta)
    assert plain.rankings[0][0] == "1" and plain.metrics["name@1"] == 0.0 and "metadata" not in plain.metrics
    assert boosted.rankings[0][0] == "2" and boosted.metrics["name@1"] == 100.0
    assert boosted.metrics["metadata"]["understood"] == 100.0
