"""layouts.py: catalogue triplets written as real FashionIQ / CIRR layouts, read back through data_utils."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cir.catalog.layouts import CATEGORIES, CIRR_SET_SIZE, write_cirr, write_fashioniq
from cir.cli.layouts import main
from cir.data import ImageRecord, catalog_images, check_images, fashioniq_categories, list_images, load_triplets
from cir.extraction.local import extract_index
from cir.paths import DEFAULT_DATA_ROOT
from cir.utils import run_cli

FORMATS = DEFAULT_DATA_ROOT / "formats"
PER_KIND = 4


def _json_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.json"))}


def _links(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


@pytest.fixture(scope="module")
def test_ids(catalog_root) -> set[str]:
    return {r.name for r in catalog_images(catalog_root, "test")}


@pytest.fixture(scope="module")
def fiq(catalog_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("fiq") / "fashionIQ_dataset"
    return root, write_fashioniq(catalog_root, root, per_kind=PER_KIND, seed=3)


@pytest.fixture(scope="module")
def cirr(catalog_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("cirr") / "cirr_dataset"
    return root, write_cirr(catalog_root, root, per_kind=PER_KIND, seed=3)


def _assert_linked(record: ImageRecord, catalog_root: Path) -> None:
    """The image is a link (symlink, or hard link) to the catalogue file, never a copy."""
    src = catalog_root / "images" / f"{record.name}.jpg"
    assert record.path.is_file() and os.path.samefile(record.path, src)
    assert record.path.is_symlink() or record.path.stat().st_nlink > 1


def test_fashioniq_layout_loads_and_is_consistent(fiq, catalog_root):
    root, summary = fiq
    assert fashioniq_categories(root) == sorted(CATEGORIES)
    # The parent folder works too: resolve/list step into fashionIQ_dataset.
    assert len(list_images("fashioniq", root.parent, "val")) == sum(
        c["images"] for c in summary["splits"]["val"].values())
    catalog = {r.name: r for r in catalog_images(catalog_root, "all")}
    for split in ("train", "val"):
        for cat, counts in summary["splits"][split].items():
            images = list_images("fashioniq", root, split, [cat])
            check_images(images)
            names = {r.name for r in images}
            want = {n for n, r in catalog.items() if r.attrs["split"] == split
                    and r.attrs["articleType"] in CATEGORIES[cat]}
            assert names == want and counts["images"] == len(images)  # the whole category gallery
            trips = load_triplets("fashioniq", root, split, [cat])
            assert len(trips) == counts["triplets"] > 0
            for t in trips:
                assert t.reference in names and t.target in names and t.category == cat
                assert len(t.captions) == 2 and t.captions[0] != t.captions[1]
            for r in images[:20]:
                _assert_linked(r, catalog_root)


def test_fashioniq_json_shapes_match_the_real_files(fiq):
    root, _ = fiq
    ours = json.loads((root / "captions" / "cap.dress.val.json").read_text())
    real = json.loads((FORMATS / "fashionIQ_dataset" / "captions" / "cap.dress.val.json").read_text())
    assert set(ours[0]) == set(real[0]) and len(ours[0]["captions"]) == len(real[0]["captions"]) == 2
    split = json.loads((root / "image_splits" / "split.dress.val.json").read_text())
    assert isinstance(split, list) and all(isinstance(n, str) for n in split)


def test_cirr_layout_loads_and_is_consistent(cirr, catalog_root):
    root, summary = cirr
    pairids = []
    for split, folder in (("train", "train"), ("val", "dev")):
        images = list_images("cirr", root.parent, split)
        check_images(images)
        names = {r.name for r in images}
        assert names == {r.name for r in catalog_images(catalog_root, split)}
        assert all(r.path.relative_to(root).parts[0] == folder for r in images)
        if split == "train":
            assert all(len(r.path.relative_to(root).parts) == 3 for r in images)  # train/<n>/<name>
        trips = load_triplets("cirr", root, split)
        assert len(trips) == summary["splits"][split]["triplets"] > 0
        for t in trips:
            assert t.reference in names and t.target in names and t.target_soft == {t.target: 1.0}
            assert len(t.group) == len(set(t.group)) == CIRR_SET_SIZE
            assert t.reference in t.group and t.target in t.group and set(t.group) <= names
        pairids += [t.pair_id for t in trips]
        for r in images[:20]:
            _assert_linked(r, catalog_root)
    assert len(pairids) == len(set(pairids))


def test_cirr_json_shapes_match_the_real_files(cirr):
    root, _ = cirr
    ours = json.loads((root / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    real = json.loads((FORMATS / "cirr_dataset" / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    assert set(ours[0]) == set(real[0]) and set(ours[0]["img_set"]) == set(real[0]["img_set"])
    for e in ours:
        s = e["img_set"]
        assert s["members"][s["reference_rank"]] == e["reference"]
        assert s["members"][s["target_rank"]] == e["target_hard"]
    split = json.loads((root / "cirr" / "image_splits" / "split.rc2.train.json").read_text())
    assert all(p.startswith("./train/") for p in split.values())


def test_no_test_split_image_anywhere(fiq, cirr, test_ids):
    for root, _ in (fiq, cirr):
        text = "".join(b.decode() for b in _json_files(root).values())
        used = {Path(p).stem for p in _links(root)}
        assert not used & test_ids
        assert not any(f'"{n}"' in text for n in test_ids)


@pytest.mark.slow
def test_deterministic(fiq, cirr, catalog_root, tmp_path):
    again = write_fashioniq(catalog_root, tmp_path / "f", per_kind=PER_KIND, seed=3)
    assert again["splits"] == fiq[1]["splits"]
    assert _json_files(tmp_path / "f") == _json_files(fiq[0]) and _links(tmp_path / "f") == _links(fiq[0])
    write_cirr(catalog_root, tmp_path / "c", per_kind=PER_KIND, seed=3)
    assert _json_files(tmp_path / "c") == _json_files(cirr[0]) and _links(tmp_path / "c") == _links(cirr[0])
    # Rewriting into the same folder keeps the links and the bytes.
    write_cirr(catalog_root, tmp_path / "c", per_kind=PER_KIND, seed=3)
    assert _json_files(tmp_path / "c") == _json_files(cirr[0])
    other = write_cirr(catalog_root, tmp_path / "c2", per_kind=PER_KIND, seed=4, splits=["val"])
    assert _json_files(tmp_path / "c2")["cirr/captions/cap.rc2.val.json"] != \
        _json_files(cirr[0])["cirr/captions/cap.rc2.val.json"]
    assert list(other["splits"]) == ["val"]


@pytest.mark.parametrize("split", ["test", "test1", "all", "dev"])
def test_refuses_test_and_unknown_splits(catalog_root, tmp_path, split):
    for write in (write_fashioniq, write_cirr):
        with pytest.raises(ValueError, match="test split" if split.startswith("test") else "unknown split"):
            write(catalog_root, tmp_path / "x", splits=["val", split])
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_unknown_category_and_existing_file(catalog_root, tmp_path):
    with pytest.raises(ValueError, match="unknown FashionIQ categories"):
        write_fashioniq(catalog_root, tmp_path / "x", categories=["jeans"])
    val = catalog_images(catalog_root, "val")
    dress = next(r for r in val if r.attrs["articleType"] in CATEGORIES["dress"])
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "images" / f"{dress.name}.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="not a link"):
        write_fashioniq(catalog_root, tmp_path / "y", splits=["val"], categories=["dress"], per_kind=1)


def test_cli_prints_summary_and_refuses_test(catalog_root, tmp_path, capsys):
    argv = ["cirr", "--out", str(tmp_path / "c"), "--catalog-root", str(catalog_root.parent), "--splits", "val",
            "--per-kind", "2", "--seed", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"] == "cirr" and summary["splits"]["val"]["images"] == 962
    assert run_cli(lambda: main(["fashioniq", "--out", str(tmp_path / "f"), "--splits", "test"])) == 2
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
def test_extract_index_on_a_tiny_fashioniq_layout(catalog_root, lite_encoder, tmp_path):
    root = tmp_path / "fashionIQ_dataset"
    summary = write_fashioniq(catalog_root, root, splits=["val"], categories=["dress"], per_kind=3)
    records = list_images("fashioniq", root, "val", ["dress"])
    assert len(records) == summary["splits"]["val"]["dress"]["images"] > 0
    res = extract_index(records, lite_encoder, tmp_path / "features" / "fashioniq-dress-val", workers=0)
    assert res.count == len(records) and res.skipped == []
