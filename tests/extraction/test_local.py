"""Extraction: real lite encoder on a catalogue subset, corrupt files, resume after a kill, index loading;
hostile folders (non-UTF-8 file names, FIFOs named like images) and two runs into one folder (its lock)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cir import encoders
from cir.cli.extract import main as extract_main
from cir.data import ImageRecord, MissingImageError, catalog_images, folder_images
from cir.extraction.job import LOCK_NAME, ImageFiles, OutputLock, OutputLockedError
from cir.extraction.local import extract_index
from cir.index import IndexLoadError, load_index, search
from cir.paths import REPO_DIR
from cir.utils import run_cli, save_tensors, sha256_file, write_json


@pytest.fixture(scope="module")
def subset(catalog_root):
    return catalog_images(catalog_root, "test")[:50]


def test_catalog_subset_extraction(subset, lite_encoder, tmp_path):
    res = extract_index(subset, lite_encoder, tmp_path / "idx", batch_size=16, workers=2, shard_size=20)
    assert res.count == 50 and res.skipped == []
    idx = load_index(tmp_path / "idx")
    assert idx.names == [r.name for r in subset]
    assert idx.features.dtype == torch.float16 and idx.features.shape == (50, lite_encoder.dim)
    assert torch.allclose(idx.features.float().norm(dim=1), torch.ones(50), atol=2e-3)
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["encoder"] == "lite" and m["dim"] == 256 and m["count"] == 50 and m["preprocess"]["mode"] == "targetpad"
    # The contract with the loader: sha256 of the final feature and names files, in the manifest (written last).
    assert m["checksums"] == {f: sha256_file(tmp_path / "idx" / f) for f in ("features.safetensors", "names.json")}
    assert not (tmp_path / "idx" / ".partial").exists()
    # Same features as encoding the images directly (batching does not change results beyond fp16).
    from PIL import Image
    direct = lite_encoder.encode_images([Image.open(r.path) for r in subset[:5]])
    assert torch.allclose(direct, idx.features[:5].float(), atol=3e-3)
    # A second identical run is a no-op.
    again = extract_index(subset, lite_encoder, tmp_path / "idx", batch_size=16, workers=0, shard_size=20)
    assert again.seconds == 0.0 and again.count == 50


def test_resume_after_kill_gives_identical_files(subset, lite_encoder, tmp_path):
    kw = dict(batch_size=8, workers=0, shard_size=16)
    extract_index(subset, lite_encoder, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        extract_index(subset, lite_encoder, tmp_path / "resumed", _stop_after_shards=2, **kw)
    assert not (tmp_path / "resumed" / "manifest.json").exists()  # an interrupted index is never 'complete'
    assert len(list((tmp_path / "resumed" / ".partial").glob("shard-*.safetensors"))) == 2
    res = extract_index(subset, lite_encoder, tmp_path / "resumed", **kw)
    assert res.resumed_shards == 2
    for f in ("features.safetensors", "names.json", "manifest.json"):
        assert (tmp_path / "full" / f).read_bytes() == (tmp_path / "resumed" / f).read_bytes(), f


def test_partial_work_of_another_job_is_discarded(subset, lite_encoder, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        extract_index(subset[:20], lite_encoder, tmp_path / "i", batch_size=8, workers=0, shard_size=8,
                      _stop_after_shards=1)
    res = extract_index(subset[:30], lite_encoder, tmp_path / "i", batch_size=8, workers=0, shard_size=8)
    assert res.resumed_shards == 0 and res.count == 30


def test_corrupt_images_are_skipped_and_reported(catalog_root, lite_encoder, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = catalog_images(catalog_root, "test")[:4]
    for r in good:
        shutil.copy(r.path, folder / r.path.name)
    data = good[0].path.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notanimage.jpg").write_bytes(b"this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    records = folder_images(folder)
    res = extract_index(records, lite_encoder, tmp_path / "out", batch_size=3, workers=2, shard_size=4)
    assert res.count == 4
    assert sorted(s["name"] for s in res.skipped) == ["empty.png", "notanimage.jpg", "truncated.jpg"]
    assert all(s["error"] for s in res.skipped)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["skipped_count"] == 3 and m["count"] == 4
    assert sorted(load_index(tmp_path / "out").names) == sorted(r.path.name for r in good)


def test_cli_on_a_folder(catalog_root, tmp_path, capsys):
    folder = tmp_path / "shop" / "sub"
    folder.mkdir(parents=True)
    for r in catalog_images(catalog_root, "val")[:6]:
        shutil.copy(r.path, folder / r.path.name)
    rc = extract_main(["--dataset", "folder", "--data-root", str(tmp_path / "shop"), "--out", str(tmp_path / "f"),
                       "--batch-size", "4", "--workers", "0", "--device", "cpu"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["count"] == 6
    assert load_index(tmp_path / "f" / "folder-shop").names[0].startswith("sub/")


def _write_index(path: Path, n: int = 5, d: int = 4):
    x = torch.nn.functional.normalize(torch.randn(n, d), dim=1).half()
    save_tensors(path / "features.safetensors", {"features": x})
    write_json(path / "names.json", [f"img{i}" for i in range(n)])
    write_json(path / "manifest.json", {"dim": d, "count": n})
    return x


def test_load_index_errors(tmp_path):
    with pytest.raises(IndexLoadError, match="missing"):
        load_index(tmp_path)
    _write_index(tmp_path)
    data = (tmp_path / "features.safetensors").read_bytes()
    (tmp_path / "features.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match="corrupt"):
        load_index(tmp_path)
    _write_index(tmp_path)
    (tmp_path / "names.json").write_text('["a", "b"]')
    with pytest.raises(IndexLoadError, match="5 feature rows but 2 names"):
        load_index(tmp_path)


def test_search_ranks_by_cosine_and_excludes(tmp_path):
    x = _write_index(tmp_path, n=6, d=8)
    idx = load_index(tmp_path)
    scores, ids = search(idx.features[:2], idx, k=3)
    assert ids[:, 0].tolist() == [0, 1]  # each row is its own nearest neighbour
    full = idx.features[:2].float() @ x.float().T
    assert torch.allclose(scores, full.topk(3, dim=1).values, atol=1e-4)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    _, ids = search(idx.features[:2], idx, k=3, exclude=[0, [1, 2]])
    assert 0 not in ids[0].tolist() and not {1, 2} & set(ids[1].tolist())
    _, ids = search(idx.features[:1], idx, k=100)
    assert ids.shape == (1, 6)
    with pytest.raises(ValueError, match="dim"):
        search(torch.randn(1, 3), idx, k=2)
    with pytest.raises(ValueError, match="exclude"):
        search(idx.features[:2], idx, k=2, exclude=[0])


def test_all_images_missing_is_a_clear_error(lite_encoder, tmp_path):
    records = [ImageRecord(f"x{i}", tmp_path / f"x{i}.png") for i in range(3)]
    with pytest.raises(MissingImageError, match="3 of 3 images not found: x0, x1, x2"):
        extract_index(records, lite_encoder, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- hostile folders

class Blocked(BaseException):
    """Not an Exception: the decoder's `except Exception` (a bad image is skipped) must not swallow it."""


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail, instead of hanging the suite, when the block blocks (e.g. reading a FIFO) longer than `seconds`."""
    def _raise(*_):
        raise Blocked(f"blocked for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture()
def shop(catalog_root, tmp_path) -> Path:
    """A folder with two good catalogue images."""
    folder = tmp_path / "shop"
    folder.mkdir()
    for r in catalog_images(catalog_root, "test")[:2]:
        shutil.copy(r.path, folder / r.path.name)
    return folder


def test_non_utf8_file_name_is_skipped_and_listed(shop, lite_encoder, tmp_path):
    image = sorted(shop.iterdir())[0].read_bytes()
    fd = os.open(os.fsencode(shop) + b"/caf\xe9.jpg", os.O_WRONLY | os.O_CREAT, 0o644)  # a valid image, Latin-1 name
    os.write(fd, image)
    os.close(fd)
    records = folder_images(shop)
    bad = [r for r in records if r.problem]
    assert [r.name for r in bad] == ["caf\\xe9.jpg"] and "UTF-8" in bad[0].problem  # escaped, flagged
    res = extract_index(records, lite_encoder, tmp_path / "out", workers=0)  # used to abort the whole run
    assert res.count == 2 and [s["name"] for s in res.skipped] == ["caf\\xe9.jpg"]
    m = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert m["skipped_count"] == 1 and "not valid UTF-8" in m["skipped"][0]["error"]
    assert m["skipped"][0]["path"].endswith("shop/caf\\xe9.jpg")  # printable, not a lone surrogate
    assert load_index(tmp_path / "out").names == sorted(p.name for p in shop.iterdir() if p.name.isascii())


def test_fifo_named_like_an_image_is_skipped_not_read(shop, lite_encoder, tmp_path):
    os.mkfifo(shop / "x.jpg")  # opening it for reading would wait for a writer forever
    with _deadline(120):
        res = extract_index(folder_images(shop), lite_encoder, tmp_path / "out", workers=0)
    assert res.count == 2 and [s["name"] for s in res.skipped] == ["x.jpg"]
    assert "FIFO" in res.skipped[0]["error"] and "not a regular file" in res.skipped[0]["error"]


def test_image_files_open_regular_files_and_symlinks_to_them_only(shop, lite_encoder, tmp_path):
    good = sorted(shop.iterdir())[0]
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "link.jpg").symlink_to(good)
    (tmp_path / "link-to-pipe.jpg").symlink_to(tmp_path / "pipe.jpg")
    paths = [tmp_path / "link.jpg", tmp_path / "pipe.jpg", tmp_path / "link-to-pipe.jpg", tmp_path, good]
    with _deadline(60):
        items = [ImageFiles(paths, lite_encoder.preprocess, ["", "", "", "", "listed as bad"])[i] for i in range(5)]
    assert items[0][1] is not None and items[0][2] == ""  # a symlink to a regular file is an image like any other
    assert "is a FIFO" in items[1][2] and "is a FIFO" in items[2][2] and "is a directory" in items[3][2]
    assert items[4][1] is None and items[4][2] == "listed as bad"  # a known problem: the file is not opened


def test_second_extraction_into_a_held_folder_fails_at_once(subset, lite_encoder, tmp_path):
    out = tmp_path / "idx"
    with OutputLock(out):
        with pytest.raises(OutputLockedError, match=rf"held by another extraction \(pid {os.getpid()} on "):
            extract_index(subset[:4], lite_encoder, out, workers=0)
        with pytest.raises(OutputLockedError):  # two opens of the lock conflict, even in one process
            OutputLock(out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the loser touched nothing
    res = extract_index(subset[:4], lite_encoder, out, workers=0)  # released: the next run goes ahead
    assert res.count == 4
    with pytest.raises(KeyboardInterrupt):  # a run that fails releases the lock too
        extract_index(subset[:8], lite_encoder, out, workers=0, shard_size=4, _stop_after_shards=1)
    OutputLock(out).release()


def test_a_finished_folder_opens_without_its_lock(subset, lite_encoder, tmp_path):
    """Opening a current index only reads it: another extraction holding the lock (or a read-only mount)
    does not stop a server from starting on it."""
    out = tmp_path / "idx"
    first = extract_index(subset[:4], lite_encoder, out, workers=0)
    with OutputLock(out):
        again = extract_index(subset[:4], lite_encoder, out, workers=0)
        assert again.count == first.count == 4 and again.seconds == 0.0  # read, not extracted
        with pytest.raises(OutputLockedError):  # work to do still needs the lock
            extract_index(subset[:4], lite_encoder, out, workers=0, overwrite=True)


def test_cli_into_a_held_folder_fails_before_loading_the_encoder(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(encoders, "load", lambda *a, **k: pytest.fail("loaded an encoder for a held folder"))
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "a.jpg").write_bytes(b"not decoded")
    with OutputLock(tmp_path / "f" / "folder-shop"):
        with caplog.at_level("ERROR"):
            rc = run_cli(lambda: extract_main(["--dataset", "folder", "--data-root", str(tmp_path / "shop"),
                                               "--out", str(tmp_path / "f")]))
    assert rc == 2 and "is held by another extraction" in caplog.text


def test_lock_of_a_killed_process_is_released(tmp_path):
    code = ("import sys, time; from cir.extraction.job import OutputLock; lock = OutputLock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_DIR, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=rf"pid {child.pid} on .*stop it and run this command again"):
            OutputLock(tmp_path)
    finally:
        child.kill()  # a crash: no clean-up code runs in the holder
        child.wait(timeout=60)
    OutputLock(tmp_path).release()  # the kernel dropped the dead holder's lock


def test_redo_keeps_the_old_folder_until_done_and_resumes(subset, lite_encoder, tmp_path):
    """redo (app.py's re-extraction of a folder without checksums): the old files stay as they were while it
    runs and after it is interrupted, the next redo resumes its shards, and the folder ends up checksummed
    with the same rows. A plain run would call the old folder up to date and leave it unverified."""
    kw = dict(batch_size=8, workers=0, shard_size=8)
    out = tmp_path / "idx"
    extract_index(subset[:24], lite_encoder, out, **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(out / "manifest.json", {k: v for k, v in manifest.items() if k != "checksums"})  # an older version
    old = {f: (out / f).read_bytes() for f in ("features.safetensors", "names.json", "manifest.json")}
    assert extract_index(subset[:24], lite_encoder, out, **kw).seconds == 0.0   # "up to date"
    with pytest.raises(KeyboardInterrupt):
        extract_index(subset[:24], lite_encoder, out, redo=True, _stop_after_shards=2, **kw)
    assert {f: (out / f).read_bytes() for f in old} == old   # interrupted: the old folder, untouched
    assert not load_index(out).verified
    res = extract_index(subset[:24], lite_encoder, out, redo=True, **kw)
    assert res.resumed_shards == 2 and res.count == 24
    again = load_index(out)
    assert again.verified and (out / "names.json").read_bytes() == old["names.json"]
    assert (out / "features.safetensors").read_bytes() == old["features.safetensors"]   # same rows, same bytes
