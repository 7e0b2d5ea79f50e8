"""evaluate.write_submission: a full-size CIRR test1 submission (every real pair id, 50 real image names each)
is compact JSON under the evaluation server's 5 MB limit, written atomically beside the given path."""
from __future__ import annotations

import json
import os
import random

import pytest

from cir.data import Triplet
from cir.evaluation.submission import check_submission, cirr_submission, submission_paths, write_submission
from cir.paths import DEFAULT_DATA_ROOT

CIRR = DEFAULT_DATA_ROOT / "formats" / "cirr_dataset" / "cirr"
needs_cirr = pytest.mark.skipif(not (CIRR / "captions" / "cap.rc2.test1.json").is_file(),
                                reason="shared CIRR annotation files absent")


@needs_cirr
def test_full_test1_submission_is_compact_and_under_5mb(tmp_path):
    entries = json.loads((CIRR / "captions" / "cap.rc2.test1.json").read_text())
    names = sorted(json.loads((CIRR / "image_splits" / "split.rc2.test1.json").read_text()))
    rng = random.Random(0)
    pair_ids = [e["pairid"] for e in entries]
    rankings = [rng.sample([n for n in names if n != e["reference"]][:200], 50) for e in entries]
    subsets = [[m for m in e["img_set"]["members"] if m != e["reference"]][:3] for e in entries]

    recall_path, subset_path = write_submission(tmp_path / "sub.json", *cirr_submission(pair_ids, rankings, subsets))
    assert (recall_path, subset_path) == submission_paths(tmp_path / "sub.json")
    assert sorted(os.listdir(tmp_path)) == sorted([recall_path.name, subset_path.name])  # no temporary left
    text = recall_path.read_text()
    assert recall_path.stat().st_size < 5_000_000
    assert "\n" not in text and ", " not in text and '": ' not in text  # compact separators, no indentation
    recall, subset = json.loads(text), json.loads(subset_path.read_text())
    assert recall.pop("version") == subset.pop("version") == "rc2"
    assert recall.pop("metric") == "recall" and subset.pop("metric") == "recall_subset"
    assert list(recall) == list(subset) == [str(p) for p in pair_ids] and len(recall) == 4148
    assert all(len(v) == 50 for v in recall.values()) and all(len(v) == 3 for v in subset.values())
    assert recall[str(pair_ids[0])] == rankings[0]


def test_write_submission_replaces_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out" / "sub.json"
    recall_path, _ = write_submission(out, *cirr_submission([1], [["a", "b"]], [["a"]]))
    assert json.loads(recall_path.read_text()) == {"version": "rc2", "metric": "recall", "1": ["a", "b"]}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        write_submission(out, *cirr_submission([2], [["c"]], [["c"]]))
    assert json.loads(recall_path.read_text())["1"] == ["a", "b"]  # the old file is intact
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in submission_paths(out))


def test_check_submission_reads_the_files_as_the_server(tmp_path):
    names = [f"img{i}" for i in range(60)]
    trips = [Triplet("img0", ("c",), None, pair_id=7, group=("img0", "img1", "img2", "img3", "img4")),
             Triplet("img5", ("c",), None, pair_id=9, group=("img5", "img6"))]
    good = cirr_submission([7, 9], [names[1:51], names[6:56]], [["img1", "img2", "img3"], ["img6"]])
    write_submission(tmp_path / "s.json", *good)
    recall, subset = check_submission(tmp_path / "s.json", trips, set(names))
    assert recall["7"] == names[1:51] and subset["9"] == ["img6"]
    bad = {
        "pair ids differ": cirr_submission([7], [names[1:51]], [["img1", "img2", "img3"]]),
        "reference img0 is ranked": cirr_submission([7, 9], [names[:50], names[6:56]], [["img1", "img2", "img3"],
                                                                                         ["img6"]]),
        "49 names in recall": cirr_submission([7, 9], [names[1:50], names[6:56]], [["img1", "img2", "img3"],
                                                                                     ["img6"]]),
        "not the first 3 other members": cirr_submission([7, 9], [names[1:51], names[6:56]],
                                                         [["img1", "img2", "img9"], ["img6"]]),
    }
    for problem, payloads in bad.items():
        write_submission(tmp_path / "b.json", *payloads)
        with pytest.raises(ValueError, match=problem):
            check_submission(tmp_path / "b.json", trips, set(names))
    submission_paths(tmp_path / "b.json")[1].unlink()
    with pytest.raises(ValueError, match="missing"):
        check_submission(tmp_path / "b.json", trips)
