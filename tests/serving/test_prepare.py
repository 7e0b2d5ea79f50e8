"""The prepare step of `python3 app.py` (cir.serving.prepare, through the command line): the catalogue index
it creates is extracted again when it has no checksums or is damaged, with the same rows; another folder
without checksums is left alone with a warning giving its exact command, unless --reextract-unverified, which
extracts it again too and names the folders it could not redo.

A small world: a 12-image catalogue (a styles.csv beside the real images) and two generated image folders,
extracted with the real lite encoder (the session's, loaded once), then made to look like older extractions.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cir import encoders
from cir.cli.serve import main
from cir.data import folder_images
from cir.extraction import IndexStore, extract_index, open_dataset_index
from cir.extraction import local as extraction_local
from cir.index import load_index

FILES = ("features.safetensors", "names.json", "manifest.json")


def _tiny_catalog(catalog_root: Path, root: Path, n: int = 12) -> Path:
    """The first `n` rows of the real styles.csv, beside a link to the real images."""
    root.mkdir(parents=True)
    with open(catalog_root / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for _, r in zip(range(n), reader)]
        header = reader.fieldnames
    with open(root / "styles.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    (root / "images").symlink_to(catalog_root / "images")
    return root


def _photos(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (48, 40), ((i * 80) % 256, 120, 255 - i * 60)).save(root / f"p{i}.png")
    return root


def _drop_checksums(folder: Path) -> None:
    """The folder as an older version extracted it: no checksums in its manifest."""
    mf = folder / "manifest.json"
    mf.write_text(json.dumps({k: v for k, v in json.loads(mf.read_text()).items() if k != "checksums"}))


def _files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in FILES}


@pytest.fixture()
def world(catalog_root, lite_encoder, tmp_path, monkeypatch):
    """A features root with the catalogue index (catalog-all) and two image folders, all three without
    checksums; main() gets the session's encoder and decodes in-process (no DataLoader workers: fast)."""
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder)
    monkeypatch.setattr(extraction_local, "default_workers", lambda: 0)
    catalog = _tiny_catalog(catalog_root, tmp_path / "catalog")
    features = tmp_path / "features"
    open_dataset_index(lite_encoder, "catalog", "all", IndexStore(features, workers=0), catalog)
    for name in ("photos", "shop"):
        photos = _photos(tmp_path / name)
        extract_index(folder_images(photos), lite_encoder, features / f"folder-{name}", workers=0,
                      info={"dataset": "folder", "split": None, "data_root": str(photos)})
    for folder in features.iterdir():
        _drop_checksums(folder)
    return {"features": features, "catalog": catalog, "argv": ["--prepare-only", "--features", str(features),
                                                               "--data-root", str(catalog)]}


@pytest.mark.parametrize("state", ["unverified", "damaged"])
def test_the_catalogue_index_is_extracted_again_with_the_same_rows(world, caplog, state):
    folder = world["features"] / "catalog-all"
    before = load_index(folder)
    names, features = list(before.names), before.features.clone()
    if state == "damaged":   # checksummed, then its features file cut short: it cannot be served
        main(world["argv"])
        (folder / "features.safetensors").write_bytes((folder / "features.safetensors").read_bytes()[:200])
    with caplog.at_level("INFO"):
        assert main(world["argv"]) == 0
    after = load_index(folder)
    assert after.verified and "checksums" in json.loads((folder / "manifest.json").read_text())
    assert after.names == names and len(names) == 12 and (after.features == features).all()
    assert f"the catalogue index {folder} is extracted again" in caplog.text
    assert f"extracted the catalogue index {folder} again: 12 images" in caplog.text
    assert not (folder / ".partial").exists()


def test_other_unverified_folders_are_listed_with_their_command_and_left_alone(world, caplog):
    photos = world["features"] / "folder-photos"
    untouched = _files(photos)
    with caplog.at_level("WARNING"):
        assert main(world["argv"]) == 0
    assert _files(photos) == untouched and not load_index(photos).verified
    warning = next(r.getMessage() for r in caplog.records if "will be served unverified" in r.getMessage())
    assert warning.startswith("2 feature folder(s)") and "--reextract-unverified" in warning
    for name in ("photos", "shop"):   # each folder, why, and the command that rewrites exactly it
        assert f"{world['features'] / f'folder-{name}'}: its manifest records no checksums" in warning
        assert (f"python3 extract_features.py --dataset folder --data-root {photos.parent.parent / name} "
                f"--out {world['features']} --overwrite\n" in warning + "\n")
    assert "catalog-all" not in warning   # the catalogue was extracted again, not listed


def test_the_flag_extracts_every_unverified_folder_again(world, caplog):
    before = {n: load_index(world["features"] / f"folder-{n}") for n in ("photos", "shop")}
    with caplog.at_level("INFO"):
        assert main([*world["argv"], "--reextract-unverified"]) == 0
    for name, old in before.items():
        folder = world["features"] / f"folder-{name}"
        now = load_index(folder)
        assert now.verified and now.names == old.names and (now.features == old.features).all()
        assert f"extracted {folder} again: 3 images (0 skipped)" in caplog.text
    assert "will be served unverified" not in caplog.text


def test_a_folder_that_cannot_be_redone_is_named_and_the_others_are_done(world, tmp_path):
    shutil.rmtree(tmp_path / "shop")   # its images are gone: it cannot be extracted again
    shop = world["features"] / "folder-shop"
    untouched = _files(shop)
    with pytest.raises(ValueError, match=r"1 of 2 feature folder\(s\) could not be extracted again") as e:
        main([*world["argv"], "--reextract-unverified"])
    assert f"{shop}: image folder {tmp_path / 'shop'} does not exist" in str(e.value)
    assert _files(shop) == untouched                                    # left as it was
    assert load_index(world["features"] / "folder-photos").verified      # the other one was done


def test_the_flag_needs_the_prepare_step(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--no-extract", "--reextract-unverified"])
    assert e.value.code == 2 and "--no-extract skips" in capsys.readouterr().err
