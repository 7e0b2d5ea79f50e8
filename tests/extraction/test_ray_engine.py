"""The Ray engine (`extract_features.py --engine ray`): the local engine's output, resumable, optional.

Ray starts once for the module (local, 2 CPUs) and every Ray run costs an encoder actor start-up (imports
and the lite encoder, ~15 s on 2 cores), so the two Ray tests share the work: one runs the CLI over a
folder whose first shard a killed local run left behind, one kills a Ray run and lets the local engine
finish it. Both compare with an uninterrupted local run. Skipped when Ray is not installed, except the
tests of what happens then.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cir.cli.extract import main as extract_main
from cir.data import catalog_images, folder_images
from cir.extraction.local import extract_index
from cir.extraction.ray_engine import EncoderSpec, extract_index_ray, ray_session
from cir.paths import REPO_DIR
from cir.utils import run_cli, sha256_file

# Ray Data's own deprecation notices about its settings (raised inside ray.data, not by this project).
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\.data\..*")

N_IMAGES = 40
KW = dict(batch_size=8, shard_size=16)  # 44 rows: 3 shards, several actor batches each
SKIPPED = ["0_truncated.jpg", "fifo.jpg", "ol\\xe9.jpg", "zz_notanimage.jpg"]


@pytest.fixture(scope="module")
def folder(catalog_root, tmp_path_factory) -> Path:
    """40 catalogue test images and four bad files (the first and the last row among them), as an image folder:
    truncated, not an image, a FIFO (would block a reader forever), a valid image whose name is not UTF-8."""
    root = tmp_path_factory.mktemp("ray") / "shop"
    root.mkdir()
    good = catalog_images(catalog_root, "test")[:N_IMAGES]
    for r in good:
        shutil.copy(r.path, root / r.path.name)
    data = good[0].path.read_bytes()
    (root / "0_truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "zz_notanimage.jpg").write_bytes(b"this is not a jpeg")
    os.mkfifo(root / "fifo.jpg")
    fd = os.open(os.fsencode(root) + b"/ol\xe9.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.close(fd)
    return root


@pytest.fixture(scope="module")
def reference(folder, lite_encoder, tmp_path_factory) -> Path:
    """The local engine's uninterrupted output, with the info the CLI records."""
    out = tmp_path_factory.mktemp("ref") / "folder-shop"
    extract_index(folder_images(folder), lite_encoder, out, workers=0, **KW,
                  info={"dataset": "folder", "split": None, "data_root": str(folder)})
    return out


@pytest.fixture(scope="module")
def ray_local():
    pytest.importorskip("ray")
    with ray_session(num_cpus=2) as ray:
        yield ray
    assert not ray.is_initialized()


def _assert_same_output(got: Path, ref: Path) -> None:
    from safetensors.torch import load_file
    assert (got / "names.json").read_bytes() == (ref / "names.json").read_bytes()
    # Same count, skipped list (names, paths, errors), encoder description and job key; the checksums are
    # each folder's own (features equal within float16 rounding, not bit for bit).
    got_m, ref_m = (json.loads((d / "manifest.json").read_text()) for d in (got, ref))
    assert got_m.pop("checksums") == {f: sha256_file(got / f) for f in ("features.safetensors", "names.json")}
    assert ref_m.pop("checksums")["names.json"] == sha256_file(got / "names.json")
    assert got_m == ref_m and [s["name"] for s in got_m["skipped"]] == SKIPPED
    a = load_file(got / "features.safetensors")["features"]
    b = load_file(ref / "features.safetensors")["features"]
    assert a.dtype == torch.float16 and a.shape == b.shape == (N_IMAGES, 256)
    assert (a.float() - b.float()).abs().max().item() <= 2e-3
    assert not (got / ".partial").exists()


# ----------------------------------------------------------------------------------------------- without Ray

def test_ray_engine_without_ray_is_one_clear_line(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    argv = ["--engine", "ray", "--dataset", "folder", "--data-root", str(folder), "--out", str(tmp_path / "f")]
    with caplog.at_level(logging.ERROR):
        rc = run_cli(lambda: extract_main(argv))
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "pip install -r requirements-ray.txt" in errors[0]
    assert not (tmp_path / "f").exists()  # failed before any work


def test_local_engine_never_imports_ray():
    code = ("import sys; sys.modules['ray'] = None; import extract_features, cir.extraction.ray_engine; "
            "assert 'ray.data' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------------------------- with Ray

@pytest.mark.slow
def test_cli_ray_engine_resumes_a_local_run_and_equals_local(folder, reference, lite_encoder, ray_local, tmp_path,
                                                            monkeypatch, capsys):
    out = tmp_path / "f" / "folder-shop"
    with pytest.raises(KeyboardInterrupt):  # a killed local run left shard 0 behind
        extract_index(folder_images(folder), lite_encoder, out, workers=0, _stop_after_shards=1, **KW)
    # The driver's copy of the encoder only describes it: reuse the session's (the actors load their own).
    monkeypatch.setattr(EncoderSpec, "load", lambda self, device="auto": lite_encoder)
    rc = extract_main(["--engine", "ray", "--dataset", "folder", "--data-root", str(folder), "--out",
                       str(tmp_path / "f"), "--batch-size", "8", "--shard-size", "16", "--device", "cpu"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["count"] == N_IMAGES and line["skipped"] == len(SKIPPED)
    _assert_same_output(out, reference)


@pytest.mark.slow
def test_killed_ray_run_resumes(folder, reference, lite_encoder, ray_local, tmp_path):
    records = folder_images(folder)
    info = {"dataset": "folder", "split": None, "data_root": str(folder)}
    with pytest.raises(KeyboardInterrupt):
        extract_index_ray(records, lite_encoder, EncoderSpec("lite"), tmp_path / "o",
                                      device="cpu", info=info, _stop_after_shards=2, **KW)
    assert not (tmp_path / "o" / "manifest.json").exists()  # an interrupted index is never 'complete'
    assert len(list((tmp_path / "o" / ".partial").glob("shard-*.json"))) == 2
    # Ray's shards are the local engine's format: either engine finishes the job.
    res = extract_index(records, lite_encoder, tmp_path / "o", workers=0, info=info, **KW)
    assert res.resumed_shards == 2 and res.count == N_IMAGES
    assert [s["name"] for s in res.skipped] == SKIPPED
    _assert_same_output(tmp_path / "o", reference)
