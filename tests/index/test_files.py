"""Feature files under a server (issue 20): features read into memory survive their file being truncated or
replaced in place (a memory map would fault: SIGBUS), the change is reported, and folders that cannot be
served as they are (duplicate ids, files that are not regular files) are clear errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cir.index import IndexLoadError, load_index, search
from cir.utils import sha256_file, write_json

N, DIM = 3000, 64
FITS = 1 << 30   # in_memory_max_bytes that every test folder fits


def _with_checksums(folder: Path) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checksums"] = {n: sha256_file(folder / n) for n in ("features.safetensors", "names.json")}
    write_json(folder / "manifest.json", manifest)
    return folder


@pytest.fixture
def folder(tmp_path, write_folder) -> Path:
    write_folder(tmp_path / "catalog-x", n=N, dim=DIM)
    return _with_checksums(tmp_path / "catalog-x")


def test_small_features_are_read_into_memory(folder):
    idx = load_index(folder, in_memory_max_bytes=FITS)
    assert idx.mapped is None and idx.verified and idx.summary()["memory_mapped"] is False
    mapped = load_index(folder)   # the library's default: mapped (the page cache is shared)
    assert mapped.mapped is not None and torch.equal(idx.features, mapped.features)
    assert load_index(folder, in_memory_max_bytes=1000).mapped is not None   # over the bound: mapped


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete"])
def test_a_file_changed_under_the_server_does_not_change_what_it_serves(folder, damage):
    idx = load_index(folder, in_memory_max_bytes=FITS)
    q = idx.features[[5, 77]].float()
    before = search(q, idx, 10)
    assert idx.disk_problem() is None
    f = folder / "features.safetensors"
    if damage == "truncate":   # `truncate -s 50%`: in place, the same inode
        os.truncate(f, f.stat().st_size // 2)
    elif damage == "overwrite":   # other bytes, the same size, in place
        data = bytearray(f.read_bytes())
        data[-4096:] = bytes(4096)
        with open(f, "r+b") as out:
            out.write(data)
    else:
        f.unlink()
    after = search(q, idx, 10)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    problem = idx.disk_problem()
    assert problem and str(folder) in problem and "features.safetensors" in problem
    assert "still serving the copy loaded at start-up" in problem


def test_the_same_bytes_written_again_are_not_a_change(folder):
    idx = load_index(folder, in_memory_max_bytes=FITS)
    f = folder / "features.safetensors"
    f.write_bytes(f.read_bytes())   # rewritten: new mtime, same content
    os.utime(folder / "names.json")
    assert idx.disk_problem() is None


def test_a_mapped_file_changed_says_restart(folder):
    idx = load_index(folder)   # memory-mapped: reading it now could fault, so nothing is searched here
    os.truncate(folder / "features.safetensors", 100)
    assert "restart the server" in idx.disk_problem()


def test_duplicate_ids_are_an_error_naming_the_folder(folder):
    names = json.loads((folder / "names.json").read_text())
    names[10001 % N] = names[10000 % N]   # two rows under one id: the last would answer for both
    write_json(folder / "names.json", names)
    _with_checksums(folder)   # recomputed: the checksum cannot catch it
    with pytest.raises(IndexLoadError, match=rf"{folder}: names.json lists image '{names[10000 % N]}' 2 times"):
        load_index(folder)


@pytest.mark.parametrize("odd", ["fifo", "directory", "symlink loop"])
def test_files_that_are_not_regular_files_are_refused(folder, odd):
    target = folder / ("names.json" if odd != "symlink loop" else "manifest.json")
    target.unlink()
    if odd == "fifo":
        os.mkfifo(target)   # reading it would block for ever
    elif odd == "directory":
        target.mkdir()
    else:
        os.symlink(target.name, target)
    with pytest.raises(IndexLoadError, match=f"{target.name} is not a regular file"):
        load_index(folder, in_memory_max_bytes=FITS)
