"""The real-photos layout and the one mapping from a photo class to the catalogue's article types."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from cir.data import AnnotationError
from cir.data.photos import PHOTO_CLASSES, photo_class, photo_images, photos_root


@pytest.fixture(scope="module")
def photos_dir(catalog_root):
    root = catalog_root.parent / "real-photos"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real photos are not at {root}")
    return root


def test_the_real_split_and_classes_load(photos_dir):
    counts = Counter(r.attrs["label"] for r in photo_images(photos_dir))
    assert sum(counts.values()) == 3439 and set(counts) == set(PHOTO_CLASSES)
    assert [len(photo_images(photos_dir, s)) for s in ("train", "val", "test")] == [2775, 316, 348]
    assert all(r.path.is_file() for r in photo_images(photos_dir, "val"))


def test_every_class_accepts_only_article_types_the_catalogue_has(catalog_root):
    with open(catalog_root / "styles.csv", newline="") as f:
        types = Counter(row["articleType"] for row in csv.DictReader(f))
    for label, pc in PHOTO_CLASSES.items():
        assert pc.types and all(types[t] > 0 for t in pc.types), label
    assert "Blazers" not in types and set(photo_class("outwear").types) == {"Jackets", "Sweatshirts"}
    with pytest.raises(ValueError, match="known: t-shirt"):
        photo_class("blazer")


def test_the_folder_is_found_from_the_data_root_itself_or_the_catalogue(photos_dir, catalog_root, tmp_path):
    assert photos_root(photos_dir) == photos_dir
    assert photos_root(photos_dir.parent) == photos_dir
    assert photos_root(catalog_root) == photos_dir
    with pytest.raises(FileNotFoundError, match="no real-photos folder"):
        photos_root(tmp_path)


def test_a_malformed_labels_file_names_its_line(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label,split\na,t-shirt,train\nb,blazer,train\n")
    with pytest.raises(AnnotationError, match=r"labels.csv:3"):
        photo_images(tmp_path)
    with pytest.raises(ValueError, match="unknown real-photos split"):
        photo_images(tmp_path, "dev")
