"""Hostile command lines (issue 20): each ends in one error line and exit code 2 (argparse's, from the argument
types of cir.cli.common, or utils.run_cli's), never a traceback, a hang or minutes of work first."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from cir.cli import evaluate, explain, extract, query, serve, train
from cir.utils import run_cli


def _refused(capsys, main, argv: list[str], words: str) -> None:
    """`main(argv)` stops at argument parsing: exit code 2, the error on one line naming the problem."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error: argument" in last and words in last, err


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """An empty file, a directory, a FIFO (opening it would block) and a text file posing as a checkpoint."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return {k: str(tmp_path / v) for k, v in
            {"empty": "empty.jpg", "dir": "folder", "fifo": "fifo.jpg", "passwd": "passwd"}.items()}


@pytest.mark.parametrize("main, argv, words", [
    (extract.main, ["--shard-size", "0"], "must be 1 or more, not 0"),
    (extract.main, ["--batch-size", "-3"], "must be 1 or more, not -3"),
    (train.main, ["combiner", "--epochs", "0"], "must be 1 or more, not 0"),
    (train.main, ["combiner", "--epochs", "-1"], "must be 1 or more, not -1"),
    (train.main, ["text", "--epochs", "0"], "must be 1 or more"),
    (train.main, ["align", "--batch", "0"], "must be 1 or more, not 0"),
    (train.main, ["align", "--epochs", "x"], "expected a whole number"),
    (query.main, ["red", "-k", "0"], "must be 1 or more"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_numbers_out_of_range(capsys, main, argv, words):
    _refused(capsys, main, argv, words)


@pytest.mark.parametrize("main, argv", [
    (extract.main, []), (query.main, ["red"]), (evaluate.main, ["--task", "composed"]), (train.main, ["align"]),
    (serve.main, ["--no-extract"])])
def test_devices_this_machine_does_not_have(capsys, main, argv):
    _refused(capsys, main, [*argv, "--device", "bogus"], "unknown device 'bogus'")
    if not torch.cuda.is_available():
        _refused(capsys, main, [*argv, "--device", "cuda"], "CUDA is not available on this machine")


@pytest.mark.parametrize("kind, words", [("empty", "is empty (0 bytes)"), ("dir", "is a directory"),
                                         ("fifo", "not a regular file"), ("missing", "No such file")])
def test_image_files_that_are_not_images(capsys, files, monkeypatch, kind, words):
    path = files.get(kind, "/missing/photo.jpg")
    _refused(capsys, explain.main, ["--image", path, "--text", "red", "--out", "o.png"], words)
    # query.py refuses it before any index is opened (or extracted: 82 s on the catalogue)
    monkeypatch.setattr(query, "open_dataset_index", lambda *a, **k: pytest.fail("the index was opened"))
    monkeypatch.setattr(query.encoders, "load", lambda *a, **k: pytest.fail("the encoder was loaded"))
    _refused(capsys, query.main, ["--image", path], words)


def test_outputs_that_are_directories(capsys, files, tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8 not really")
    for flag in ("--out", "--json"):
        _refused(capsys, explain.main, ["--image", str(image), "--text", "red", flag, files["dir"]], "is a directory")
    for flag in ("--save-rankings", "--plot", "--submission"):
        _refused(capsys, evaluate.main, ["--task", "composed", flag, files["dir"]], "is a directory")
    _refused(capsys, evaluate.main, ["--task", "composed", "--save-rankings", files["passwd"] + "/r.json"],
             "is not a directory")
    _refused(capsys, train.main, ["combiner", "--out", files["dir"]], "is a directory")


def test_combiners_that_are_not_checkpoints(capsys, caplog, files):
    _refused(capsys, evaluate.main, ["--task", "composed", "--combiner", files["dir"]], "is not a regular file")
    _refused(capsys, evaluate.main, ["--task", "composed", "--combiner", "/missing.pt"], "unknown combiner")
    _refused(capsys, explain.main, ["--id", "1", "--dataset", "catalog", "--text", "x", "--out", "o.png",
                                    "--combiner", files["dir"]], "is not a regular file")
    # a regular file that is not a checkpoint: found when loaded (first, before the encoder), one line, exit 2
    argv = ["--dataset", "catalog", "--id", "1", "--reference", "2", "--caption", "is red", "--out", "o.png",
            "--combiner", files["passwd"]]
    with caplog.at_level(logging.ERROR, logger="cli"):
        assert run_cli(lambda: explain.main(argv)) == 2
    (record,) = [r for r in caplog.records if r.name == "cli"]
    assert f"{files['passwd']} is not a Combiner checkpoint" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_the_development_server_says_it_is_for_one_user(capsys):
    with pytest.raises(SystemExit):
        serve.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "for one user on localhost" in out and "gunicorn" in out
