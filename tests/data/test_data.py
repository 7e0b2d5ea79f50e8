"""Tests for data_utils: loaders on the real annotation files, placeholder-image layouts,
malformed annotations, the catalogue, image folders and data-root resolution."""

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from cir.data import (
    AnnotationError,
    ImageRecord,
    MissingImageError,
    Triplet,
    catalog_images,
    check_images,
    cirr_images,
    cirr_triplets,
    fashioniq_categories,
    fashioniq_images,
    fashioniq_triplets,
    folder_images,
    list_images,
    load_json,
    load_triplets,
    pattern_of,
    randomized_fiq_caption,
    resolve_data_root,
)
from cir.paths import DEFAULT_DATA_ROOT

SHARED = DEFAULT_DATA_ROOT.resolve()
FORMATS = SHARED / "formats"
FIQ = FORMATS / "fashionIQ_dataset"
CIRR = FORMATS / "cirr_dataset"
CATALOG = SHARED / "fashion-catalog"

needs_formats = pytest.mark.skipif(not FORMATS.is_dir(), reason="shared annotation files absent")
needs_catalog = pytest.mark.skipif(not (CATALOG / "styles.csv").is_file(), reason="catalogue absent")


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def fiq_layout(tmp_path: Path, category: str = "dress", split: str = "val", n: int = 5) -> Path:
    """A FashionIQ folder holding the real first ``n`` entries of ``dress`` under ``category``."""
    root = tmp_path / "fashionIQ_dataset"
    entries = read(FIQ / "captions" / f"cap.dress.{split}.json")[:n]
    names = list(dict.fromkeys(n for e in entries for n in (e["candidate"], e.get("target")) if n))
    write(root / "captions" / f"cap.{category}.{split}.json", entries)
    write(root / "image_splits" / f"split.{category}.{split}.json", names)
    return root


def cirr_layout(tmp_path: Path, split: str = "val", n: int = 5) -> Path:
    """A CIRR folder with the real first ``n`` triplets and the split entries they reference."""
    root = tmp_path / "cirr_dataset"
    entries = read(CIRR / "cirr" / "captions" / f"cap.rc2.{split}.json")[:n]
    full = read(CIRR / "cirr" / "image_splits" / f"split.rc2.{split}.json")
    used = {m for e in entries for m in [e["reference"], e.get("target_hard"), *e["img_set"]["members"]] if m}
    write(root / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)
    subset = {k: v for k, v in full.items() if k in used}
    write(root / "cirr" / "image_splits" / f"split.rc2.{split}.json", subset)
    return root


# -----------------------------------------------------------------------------
# FashionIQ on the real files


@needs_formats
def test_fashioniq_categories_discovered():
    assert fashioniq_categories(FIQ) == ["dress", "shirt", "toptee"]


@needs_formats
def test_fashioniq_val_counts_and_first_entry():
    triplets = fashioniq_triplets(FIQ, "val", ["dress"])
    raw = read(FIQ / "captions" / "cap.dress.val.json")
    assert len(triplets) == len(raw) == 2017
    first = raw[0]
    assert triplets[0] == Triplet(first["candidate"], tuple(first["captions"]), first["target"], "dress")
    assert len(fashioniq_images(FIQ, "val", ["dress"])) == 3817


@needs_formats
def test_fashioniq_all_categories_in_order():
    triplets = fashioniq_triplets(FIQ, "val")
    assert len(triplets) == 2017 + 2038 + 1961
    assert list(dict.fromkeys(t.category for t in triplets)) == ["dress", "shirt", "toptee"]
    assert all(len(t.captions) == 2 and t.target for t in triplets)


@needs_formats
def test_fashioniq_images_union_deduplicated_in_order():
    expected = list(dict.fromkeys(
        n for c in ("dress", "shirt", "toptee") for n in read(FIQ / "image_splits" / f"split.{c}.val.json")
    ))
    records = fashioniq_images(FIQ, "val")
    assert [r.name for r in records] == expected


@needs_formats
def test_fashioniq_test_split_has_no_target_and_stripped_captions():
    triplets = fashioniq_triplets(FIQ, "test", ["dress"])
    assert len(triplets) == 2024
    assert all(t.target is None for t in triplets)
    assert triplets[0].captions == ("yello and more flowing", "short and black")
    assert all(c == c.strip() for t in triplets for c in t.captions)


@needs_formats
def test_fashioniq_missing_category_and_bad_split():
    with pytest.raises(FileNotFoundError, match=r"cap\.skirt\.val\.json.*cap\.dress\.val\.json"):
        fashioniq_triplets(FIQ, "val", ["skirt"])
    with pytest.raises(ValueError, match="train, val, test"):
        fashioniq_triplets(FIQ, "dev")


# -----------------------------------------------------------------------------
# CIRR on the real files


@needs_formats
def test_cirr_val_triplets_and_images():
    raw = read(CIRR / "cirr" / "captions" / "cap.rc2.val.json")
    triplets = cirr_triplets(CIRR, "val")
    assert len(triplets) == 4181
    first, t = raw[0], triplets[0]
    assert (t.reference, t.captions, t.target, t.pair_id) == (
        first["reference"], (first["caption"],), first["target_hard"], first["pairid"]
    )
    assert t.group == tuple(first["img_set"]["members"])
    assert t.target_soft == first["target_soft"]

    images = cirr_images(CIRR, "val")
    assert len(images) == 2297
    assert images[0] == ImageRecord("dev-244-0-img0", CIRR / "dev" / "dev-244-0-img0.png")
    names = {r.name for r in images}
    assert all(t.reference in names and t.target in names and set(t.group) <= names for t in triplets)


@needs_formats
def test_cirr_test1_has_no_target():
    triplets = cirr_triplets(CIRR, "test1")
    assert len(triplets) == 4148
    assert all(t.target is None and t.target_soft is None and len(t.group) == 6 for t in triplets)
    assert triplets[0].pair_id == 12063


@needs_formats
def test_cirr_missing_split_lists_available():
    with pytest.raises(FileNotFoundError, match=r"cap\.rc2\.train\.json.*cap\.rc2\.test1\.json"):
        cirr_triplets(CIRR, "train")
    with pytest.raises(ValueError, match="train, val, test1"):
        cirr_images(CIRR, "test")


@needs_formats
def test_dispatchers():
    # The parent folder works too: the dispatchers step into the dataset's default subfolder.
    assert len(list_images("fashioniq", FORMATS, "val", ["dress"])) == 3817
    assert len(list_images("cirr", CIRR, "val")) == 2297
    assert len(load_triplets("cirr", FORMATS, "test1")) == 4148
    assert len(load_triplets("fashioniq", FIQ, "val", ["shirt"])) == 2038
    for dataset in ("catalog", "folder"):
        with pytest.raises(ValueError, match="fashioniq and cirr"):
            load_triplets(dataset, FORMATS, "val")
    with pytest.raises(ValueError, match="catalog, fashioniq, cirr, folder"):
        list_images("coco", FORMATS)
    with pytest.raises(ValueError, match="split"):
        list_images("cirr", CIRR)


# -----------------------------------------------------------------------------
# placeholder images in a tmp layout


@needs_formats
def test_fashioniq_placeholder_images_png_and_jpg(tmp_path):
    root = fiq_layout(tmp_path)
    records = fashioniq_images(root, "val")
    for i, r in enumerate(records):
        make_image(root / "images" / f"{r.name}{'.png' if i % 2 else '.jpg'}")
    make_image(root / "images" / f"{records[1].name}.jpg")  # both exist: .png wins

    records = fashioniq_images(root, "val")
    assert [r.path.suffix for r in records[:3]] == [".jpg", ".png", ".jpg"]
    check_images(records)

    records[2].path.unlink()
    with pytest.raises(MissingImageError, match=records[2].name) as e:
        check_images(fashioniq_images(root, "val"))
    assert "1 of" in str(e.value)


@needs_formats
def test_cirr_placeholder_images(tmp_path):
    root = cirr_layout(tmp_path)
    records = cirr_images(root, "val")
    for r in records:
        make_image(r.path)
    check_images(records)
    triplets = cirr_triplets(root, "val")
    names = {r.name for r in records}
    assert all({t.reference, t.target, *t.group} <= names for t in triplets)

    records[0].path.unlink()
    with pytest.raises(MissingImageError, match=records[0].name):
        check_images(records)


def test_missing_image_error_lists_first_ten(tmp_path):
    records = [ImageRecord(f"img{i:02d}", tmp_path / f"img{i:02d}.png") for i in range(13)]
    with pytest.raises(MissingImageError) as e:
        check_images(records)
    msg = str(e.value)
    assert "13 of 13" in msg and "img09" in msg and "img10" not in msg and "3 more" in msg
    assert isinstance(e.value, FileNotFoundError)


@needs_formats
def test_custom_category(tmp_path):
    root = fiq_layout(tmp_path, category="skirt", split="train")
    assert fashioniq_categories(root) == ["skirt"]
    triplets = fashioniq_triplets(root, "train")
    assert len(triplets) == 5 and {t.category for t in triplets} == {"skirt"}
    assert len(list_images("fashioniq", tmp_path, "train")) == len(read(
        root / "image_splits" / "split.skirt.train.json"
    ))


# -----------------------------------------------------------------------------
# malformed annotation files


def test_invalid_json_names_file_line_column(tmp_path):
    path = tmp_path / "captions" / "cap.dress.val.json"
    path.parent.mkdir()
    path.write_text('[\n  {"candidate": "a",\n   "captions": ["x" "y"]}\n]')
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json.*line 3, column"):
        fashioniq_triplets(tmp_path, "val", ["dress"])


def test_load_json_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_json(tmp_path / "nowhere" / "cap.rc2.val.json")


GOOD_FIQ = {"target": "t", "candidate": "c", "captions": ["a", "b"]}
GOOD_CIRR = {"pairid": 1, "reference": "r", "target_hard": "t", "target_soft": {"t": 1.0},
             "caption": "x", "img_set": {"id": 1, "members": ["r", "t"]}}


@pytest.mark.parametrize("bad, problem", [
    ({**GOOD_FIQ, "captions": 5}, "'captions' must be a list of strings, got int"),
    ({**GOOD_FIQ, "captions": ["a", 2]}, "'captions' must be a list of strings"),
    ({k: v for k, v in GOOD_FIQ.items() if k != "target"}, "missing key 'target'"),
    ({**GOOD_FIQ, "candidate": None}, "'candidate' must be a string, got NoneType"),
    (["c", "t"], "expected an object, got list"),
])
def test_fashioniq_bad_entry(tmp_path, bad, problem):
    entries = [GOOD_FIQ] * 20
    entries[17] = bad
    write(tmp_path / "captions" / "cap.dress.val.json", entries)
    with pytest.raises(AnnotationError) as e:
        fashioniq_triplets(tmp_path, "val", ["dress"])
    assert "cap.dress.val.json: entry 17: " + problem in str(e.value)


@pytest.mark.parametrize("bad, problem", [
    ({**GOOD_CIRR, "pairid": "1"}, "'pairid' must be an integer, got str"),
    ({k: v for k, v in GOOD_CIRR.items() if k != "target_hard"}, "missing key 'target_hard'"),
    ({**GOOD_CIRR, "img_set": {"id": 1, "members": "r"}}, "'img_set.members' must be a list"),
    ({k: v for k, v in GOOD_CIRR.items() if k != "caption"}, "missing key 'caption'"),
    ({**GOOD_CIRR, "target_soft": {"t": "high"}}, "'target_soft' must map"),
])
def test_cirr_bad_entry(tmp_path, bad, problem):
    write(tmp_path / "cirr" / "captions" / "cap.rc2.val.json", [GOOD_CIRR, GOOD_CIRR, bad])
    with pytest.raises(AnnotationError) as e:
        cirr_triplets(tmp_path, "val")
    assert "cap.rc2.val.json: entry 2: " + problem in str(e.value)


def test_test_splits_do_not_need_targets(tmp_path):
    fiq = {k: v for k, v in GOOD_FIQ.items() if k != "target"}
    write(tmp_path / "captions" / "cap.dress.test.json", [fiq])
    assert fashioniq_triplets(tmp_path, "test")[0].target is None
    cirr = {k: v for k, v in GOOD_CIRR.items() if k not in ("target_hard", "target_soft")}
    write(tmp_path / "cirr" / "captions" / "cap.rc2.test1.json", [cirr])
    assert cirr_triplets(tmp_path, "test1")[0].target is None


def test_bad_split_files(tmp_path):
    write(tmp_path / "image_splits" / "split.dress.val.json", {"a": "b"})
    with pytest.raises(AnnotationError, match=r"split\.dress\.val\.json: expected a list"):
        fashioniq_images(tmp_path, "val")
    write(tmp_path / "image_splits" / "split.dress.val.json", ["a", 3])
    with pytest.raises(AnnotationError, match="entry 1: image name must be a string"):
        fashioniq_images(tmp_path, "val")
    write(tmp_path / "cirr" / "image_splits" / "split.rc2.val.json", ["a"])
    with pytest.raises(AnnotationError, match=r"split\.rc2\.val\.json: expected an object"):
        cirr_images(tmp_path, "val")


def test_no_fashioniq_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FashionIQ annotation files"):
        fashioniq_triplets(tmp_path, "val")


# -----------------------------------------------------------------------------
# catalogue


@needs_catalog
def test_catalog_rows_and_splits():
    records = catalog_images(CATALOG)
    assert len(records) == 9583 == len(catalog_images(CATALOG, "all"))
    counts = {s: len(catalog_images(CATALOG, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 7628, "val": 962, "test": 993}
    r = records[0]
    assert r.name == "10000" and r.path == CATALOG / "images" / "10000.jpg"
    assert set(r.attrs) == {"gender", "masterCategory", "subCategory", "articleType", "baseColour",
                            "season", "year", "usage", "productDisplayName", "split", "pattern"}
    assert r.attrs["articleType"] == "Skirts"
    check_images(catalog_images(CATALOG, "val"))
    with pytest.raises(ValueError, match="train, val, test, all"):
        catalog_images(CATALOG, "dev")


def test_catalog_quoted_commas_and_bad_rows(tmp_path):
    header = "id,gender,articleType,productDisplayName,split\n"
    (tmp_path / "styles.csv").write_text(header + '1,Men,Shirts,"Shirt, blue",train\n2,Women,Tops,Top,val\n')
    records = catalog_images(tmp_path)
    assert records[0].attrs["productDisplayName"] == "Shirt, blue"
    assert [r.name for r in catalog_images(tmp_path, "val")] == ["2"]

    (tmp_path / "styles.csv").write_text(header + "1,Men,Shirts,Shirt, blue,train\n")
    with pytest.raises(AnnotationError, match="styles.csv: line 2"):
        catalog_images(tmp_path)
    (tmp_path / "styles.csv").write_text(header + "1,Men,Shirts,a,train\n1,Men,Shirts,b,train\n")
    with pytest.raises(AnnotationError, match="duplicate id 1"):
        catalog_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="styles.csv"):
        catalog_images(tmp_path / "nope")


def test_pattern_of_product_names():
    assert pattern_of("Belmonte Men Stripes Blue Shirts") == "Striped"
    assert pattern_of("ADIDAS Women STRIPED tee") == pattern_of("a stripe") == "Striped"
    assert pattern_of("Levis Men Check Maroon Shirts") == pattern_of("checked") == pattern_of("Checks") \
        == "Checked"
    for name in ("Printed Pink Tshirt", "Block Print Kurta", "prints", "Graphic Tee", "Floral top", "Polka dress"):
        assert pattern_of(name) == "Printed", name
    assert pattern_of("Solid Brown Belt") == pattern_of("Plain White Tshirt") == "Solid"
    # Whole words only; no pattern word is unknown.
    for name in ("Checkmate Watch", "Blueprint Shirt", "Solidity Jeans", "Puma Men Black Tshirt", ""):
        assert pattern_of(name) == "", name
    # Several: Striped > Checked > Printed > Solid.
    assert pattern_of("Wrangler Men Stampede Printed Stripe Green Shirts") == "Striped"
    assert pattern_of("Stripe Look Checks Shirt") == "Striped"
    assert pattern_of("Solid Check Shirt") == "Checked" and pattern_of("Solid Printed Top") == "Printed"


def test_catalog_pattern_is_derived_unless_a_column_gives_it(tmp_path):
    header = "id,productDisplayName,split\n"
    (tmp_path / "styles.csv").write_text(header + "1,Men Check Shirt,train\n2,Men Shirt,train\n")
    assert [r.attrs["pattern"] for r in catalog_images(tmp_path)] == ["Checked", ""]
    (tmp_path / "styles.csv").write_text("id,productDisplayName,pattern,split\n1,Men Check Shirt,Paisley,train\n")
    assert catalog_images(tmp_path)[0].attrs["pattern"] == "Paisley"


@needs_catalog
def test_catalog_patterns_counts():
    from collections import Counter
    counts = Counter(r.attrs["pattern"] for r in catalog_images(CATALOG))
    assert counts == {"": 5866, "Solid": 1204, "Printed": 1011, "Striped": 805, "Checked": 697}


# -----------------------------------------------------------------------------
# image folders


def test_folder_images(tmp_path):
    # Only names matter here: folder_images never opens the files.
    images = ["b.JPG", "a/z.png", "a/b/c.webp", "a/y.TIFF", "d.jpeg"]
    others = ["notes.txt", "a/data.json", "._b.jpg", ".cache/x.png", "noext"]
    for rel in images + others:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")

    records = folder_images(tmp_path)
    names = ["a/b/c.webp", "a/y.TIFF", "a/z.png", "b.JPG", "d.jpeg"]
    assert [r.name for r in records] == names
    assert all(r.path == tmp_path / r.name for r in records)
    assert list_images("folder", tmp_path) == records
    with pytest.raises(FileNotFoundError):
        folder_images(tmp_path / "missing")


def test_folder_names_with_control_characters_are_flagged(tmp_path):
    """A newline in a file name would become an id that no URL of the API can carry: listed, never indexed."""
    for rel in ("ok.jpg", "two\nlines.jpg", "tab\there.png"):
        (tmp_path / rel).write_bytes(b"x")
    records = {r.name: r for r in folder_images(tmp_path)}
    assert records["ok.jpg"].problem == ""
    assert "control character (U+000A)" in records["two\\nlines.jpg"].problem
    assert "control character (U+0009)" in records["tab\\there.png"].problem


# -----------------------------------------------------------------------------
# data root


def test_resolve_data_root(tmp_path, monkeypatch):
    (tmp_path / "env" / "fashion-catalog").mkdir(parents=True)
    (tmp_path / "flag").mkdir()
    monkeypatch.setenv("CIR_DATA_ROOT", str(tmp_path / "env"))

    catalog = tmp_path / "env" / "fashion-catalog"
    assert resolve_data_root("catalog") == catalog  # env var, then into the default subdir
    assert resolve_data_root("catalog", catalog) == catalog
    assert resolve_data_root("cirr") == tmp_path / "env"  # no cirr_dataset inside: stays put
    assert resolve_data_root("catalog", str(tmp_path / "flag")) == tmp_path / "flag"  # flag beats env

    with pytest.raises(FileNotFoundError, match="missing.*--data-root"):
        resolve_data_root("catalog", tmp_path / "missing")
    monkeypatch.setenv("CIR_DATA_ROOT", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="CIR_DATA_ROOT"):
        resolve_data_root("catalog")
    with pytest.raises(ValueError, match="unknown dataset"):
        resolve_data_root("coco", tmp_path)


@needs_catalog
def test_resolve_data_root_default(monkeypatch):
    monkeypatch.delenv("CIR_DATA_ROOT", raising=False)
    assert resolve_data_root("catalog") == CATALOG


def test_records_are_hashable():
    t = Triplet("r", ("a",), "t", target_soft={"t": 1.0})
    assert t == Triplet("r", ("a",), "t") and len({t, Triplet("r", ("a",), "t")}) == 1
    r = ImageRecord("a", Path("a.png"), {"k": "v"})
    assert r == ImageRecord("a", Path("a.png")) and hash(r) == hash(ImageRecord("a", Path("a.png")))


def test_randomized_fashioniq_captions_take_the_four_forms():
    rng = random.Random(0)
    seen = {randomized_fiq_caption(["is red.", " has long sleeves?"], rng) for _ in range(200)}
    assert seen == {"Is red and has long sleeves", "Has long sleeves and is red", "Is red", "Has long sleeves"}
    assert randomized_fiq_caption(["", "is blue"], rng) == "Is blue"
