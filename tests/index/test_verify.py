"""Verified feature folders: the manifest's checksums catch what the sampled checks cannot.

Each attack is reproduced on a real feature folder (the write_folder fixture) and shown to pass
without checksums (what happened before they existed), then to fail at load with them. Folders without
checksums (older extractions) still load, unverified, with one warning.
"""
from __future__ import annotations

import json
import logging
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cir.cli.index import main as index_main
from cir.index import IndexLoadError, load_index, search
from cir.index.files import NAMES_FILE, read_header
from cir.paths import REPO_DIR
from cir.utils import run_cli, sha256_file, write_json

N = 3000


def add_checksums(folder: Path) -> dict:
    """Record the files' sha256 in the manifest, as the extractor does (idempotent: once the extractor writes
    them itself, this rewrites the same values)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checksums"] = {n: sha256_file(folder / n) for n in ("features.safetensors", "names.json")}
    write_json(folder / "manifest.json", manifest)
    return manifest


@pytest.fixture
def verified_folder(tmp_path, write_folder) -> Path:
    path = tmp_path / "catalog-verified"
    write_folder(path)
    add_checksums(path)
    return path


def overwrite_rows(folder: Path, rows: list[int], source: int) -> None:
    """Overwrite feature rows in place with another (valid, unit-norm) row: the file keeps its size and header."""
    f = folder / "features.safetensors"
    header, start, _ = read_header(f)
    dim = header["features"]["shape"][1]
    base = start + header["features"]["data_offsets"][0]
    data = bytearray(f.read_bytes())
    row = data[base + source * dim * 2: base + (source + 1) * dim * 2]
    for r in rows:
        data[base + r * dim * 2: base + (r + 1) * dim * 2] = row
    f.write_bytes(bytes(data))


def test_verified_folder_loads_and_reports_it(verified_folder, capsys):
    idx = load_index(verified_folder)
    assert idx.verified and idx.summary()["verified"] and idx.backend.health()["verified"]
    assert index_main(["check", "--features", str(verified_folder), "--require-verified"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["verified"] and out["rows"] == N and "unverified_reason" not in out


def test_shuffled_names_fail_to_load(verified_folder):
    """Same names in another order: every row would serve another product's image."""
    names = json.loads((verified_folder / NAMES_FILE).read_text())
    random.Random(0).shuffle(names)
    write_json(verified_folder / NAMES_FILE, names)
    with pytest.raises(IndexLoadError, match=rf"{re.escape(str(verified_folder))}: names.json is damaged or was "
                                             r"altered .*extract it again: .*--overwrite"):
        load_index(verified_folder)
    assert run_cli(lambda: index_main(["check", "--features", str(verified_folder)])) == 2


def test_rows_overwritten_with_a_valid_row_fail_to_load(verified_folder, tmp_path):
    """20 rows replaced by a copy of row 0: finite, unit-norm, so the sampled check passes; the checksum not."""
    x = load_index(verified_folder).features.clone()
    rows = list(range(7, 7 * 21, 7))
    overwrite_rows(verified_folder, rows, source=0)
    # Without the checksums (how such a folder loaded before them) the alteration is served silently:
    plain = shutil.copytree(verified_folder, tmp_path / "catalog-plain")
    manifest = json.loads((plain / "manifest.json").read_text())
    write_json(plain / "manifest.json", {k: v for k, v in manifest.items() if k != "checksums"})
    served = load_index(plain)
    assert not served.verified and torch.equal(served.features[rows[3]], x[0])
    # the product of row 21 no longer finds its own image: that row now holds row 0's features
    assert search(x[rows[3]].float(), served, 1)[1][0, 0] != rows[3]
    # With them, it fails at load, naming the folder and the file.
    with pytest.raises(IndexLoadError, match=rf"{re.escape(str(verified_folder))}: features.safetensors is "
                                             "damaged or was altered"):
        load_index(verified_folder)


def test_missing_checksums_load_unverified_with_one_warning(tmp_path, caplog, write_folder):
    path = tmp_path / "catalog-old"
    write_folder(path)
    with caplog.at_level(logging.WARNING, logger="index"):
        first, again = load_index(path), load_index(path)
    assert not first.verified and not again.verified
    assert first.summary()["verified"] is False and first.backend.health()["verified"] is False
    warnings = [r for r in caplog.records if "records no checksums" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert run_cli(lambda: index_main(["check", "--features", str(path), "--require-verified"])) == 2


@pytest.mark.parametrize("checksums, words", [
    ({"features.safetensors": "0" * 64}, "must map features.safetensors and names.json"),
    ("not a dict", "must map"),
    ({"features.safetensors": "0" * 64, "names.json": "0" * 64, "../etc/passwd": "0" * 64}, "not a file of"),
])
def test_malformed_checksums_are_clear_errors(verified_folder, checksums, words):
    manifest = json.loads((verified_folder / "manifest.json").read_text())
    write_json(verified_folder / "manifest.json", {**manifest, "checksums": checksums})
    with pytest.raises(IndexLoadError, match=words):
        load_index(verified_folder)


def test_fingerprint_follows_the_checksums(verified_folder):
    """A verified folder's fingerprint (what saved faiss indexes and Milvus collections are matched on) is
    derived from its checksums, so any change to the files changes it, however large they are."""
    before = load_index(verified_folder).fingerprint
    overwrite_rows(verified_folder, [5], source=6)
    add_checksums(verified_folder)     # re-extracted: new files, new checksums
    after = load_index(verified_folder)
    assert after.verified and after.fingerprint != before


def test_python_m_index_check(verified_folder):
    """The command line as users run it: a verified folder passes, a damaged one is one clear line, exit 2."""
    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cir.index", "check", "--features", str(verified_folder)],
                              cwd=REPO_DIR, capture_output=True, text=True, timeout=300)

    ok = run()
    assert ok.returncode == 0 and json.loads(ok.stdout.strip().splitlines()[-1])["verified"] is True
    overwrite_rows(verified_folder, [1], source=2)
    bad = run()
    assert bad.returncode == 2 and "features.safetensors is damaged or was altered" in bad.stderr
    assert "Traceback" not in bad.stderr
