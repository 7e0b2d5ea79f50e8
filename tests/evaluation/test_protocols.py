"""evaluation.protocols and `evaluate.py --task composed`: metrics on hand-computed rankings, the FashionIQ /
CIRR / catalogue protocols on the real annotation files (random features and a stand-in text encoder: no
images needed), the CIRR submission files, --save-rankings, --index-backend, and one end-to-end catalogue run
with the real lite encoder."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir import encoders
from cir.catalog import triplets as catalog_triplets
from cir.catalog.conditions import satisfies
from cir.catalog.triplets import CatalogTriplet
from cir.cli.evaluate import main
from cir.combiner import Combiner, CombinerConfig, compose
from cir.data import ImageRecord, Triplet, catalog_images, list_images, load_triplets
from cir.data.fashioniq import fiq_caption
from cir.encoders import BASE_TEXT, TextSide
from cir.evaluation import runs
from cir.evaluation.metrics import attribute_match_at_k, recall_at_k, recall_subset_at_k
from cir.evaluation.plots import draw_eval
from cir.evaluation.protocols import (
    composed_catalog,
    composed_cirr,
    composed_fashioniq,
    group_rankings,
    reference_features,
)
from cir.evaluation.runs import load_text_side
from cir.evaluation.submission import cirr_submission, submission_paths
from cir.extraction import local as extraction_local
from cir.index import FeatureIndex, Metadata, search
from cir.paths import DEFAULT_DATA_ROOT
from cir.utils import run_cli

SHARED = DEFAULT_DATA_ROOT
FORMATS = SHARED / "formats"
FIQ = FORMATS / "fashionIQ_dataset"
CIRR = FORMATS / "cirr_dataset"
needs_formats = pytest.mark.skipif(not FORMATS.is_dir(), reason="shared annotation files absent")
DIM = 64


class StandInEncoder:
    """Text features from a hash of the text: deterministic, normalised, no model to load."""

    name, dim, text_side = "stand-in", DIM, BASE_TEXT

    def encode_texts(self, texts, raw=False):  # unit rows: raw and normalised are the same
        texts = list(texts)
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"text {i} is empty")
        rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(_seed(t))) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1) if rows else torch.zeros(0, DIM)


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def random_index(names, seed: int = 0) -> FeatureIndex:
    g = torch.Generator().manual_seed(seed)
    return FeatureIndex(F.normalize(torch.randn(len(names), DIM, generator=g), dim=-1).half(), list(names))


def rig(triplets, index: FeatureIndex, captions, method: str = "sum") -> list[int]:
    """Set each chosen target's row to its query's features; returns the chosen positions.

    Chosen: targets used once, and no chosen target is a chosen reference, so rigging one row never
    changes another chosen query (which is made from its reference's row).
    """
    chosen, refs, tgts = [], set(), set()
    for i, t in enumerate(triplets):
        if t.target in index and t.target not in tgts | refs and t.reference not in tgts:
            chosen.append(i)
            refs.add(t.reference)
            tgts.add(t.target)
    ref_feats = reference_features([triplets[i].reference for i in chosen], index)
    q = compose(StandInEncoder(), ref_feats, [captions[i] for i in chosen], method)
    for row, i in enumerate(chosen):
        index.features[index.id_of(triplets[i].target)] = q[row].half()
    index._f32 = None  # the float32 copy is cached
    return chosen


# ----------------------------------------------------------------------------------------------- metrics by hand

def test_recall_with_the_reference_excluded_by_hand():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    index = FeatureIndex(feats.half(), ["ref", "near", "far", "mid"])
    q = feats[[0, 0]]  # both queries look exactly like the reference "ref"
    _, ids = search(q, index, 3, exclude=[0, 0])
    assert ids.tolist() == [[1, 3, 2], [1, 3, 2]]
    # query 0 wants "near" (rank 1), query 1 wants "far" (rank 3)
    assert recall_at_k(ids, torch.tensor([1, 2]), (1, 2, 3)) == {"R@1": 50.0, "R@2": 50.0, "R@3": 100.0}
    assert recall_at_k(ids, torch.tensor([-1, 2]), (3,)) == {"R@3": 50.0}  # a target without features misses


def test_recall_subset_by_hand():
    ranked = [["r", "x", "a", "b", "c"],   # group {r, a, b}: r removed -> [a, b]; target b at 2
              ["a", "x", "b", "r", "c"],   # group {r, a, c}: -> [a, c]; target a at 1
              ["x", "a", "b", "c", "r"]]   # target x is not a group member -> always a miss
    groups = [["r", "a", "b"], ["r", "a", "c"], ["r", "a", "b"]]
    targets = ["b", "a", "x"]
    out = recall_subset_at_k(ranked, targets, groups, (1, 2, 3), references=["r", "r", "r"])
    assert out == {"Rsubset@1": 33.33, "Rsubset@2": 66.67, "Rsubset@3": 66.67}
    # without removing the reference it would take the first place of the first ranking
    assert recall_subset_at_k(ranked[:1], ["b"], groups[:1], (2,)) == {"Rsubset@2": 0.0}


def test_group_rankings_only_rank_members_without_the_reference():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0], [0.99, 0.01]]), dim=1)
    index = FeatureIndex(feats.half(), ["ref", "a", "b", "c", "outsider"])
    out = group_rankings(feats[[0]], index, ["ref"], [["c", "ref", "b", "a", "not-indexed"]], k=3)
    assert out == [["a", "b", "c"]]  # "outsider" scores higher but is not in the group


def test_attribute_match_by_hand():
    gallery = [{"articleType": "Shirts", "baseColour": "Red", "gender": "Men"},
               {"articleType": "Shirts", "baseColour": "Blue", "gender": "Men"},
               {"articleType": "Shirts", "baseColour": "Red", "gender": "Women"},
               {}]
    ranked = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    wanted = [{"articleType": "Shirts", "baseColour": "Red"},        # rows 0 and 2: gender is not compared
              {"articleType": "Shirts", "baseColour": "Red", "gender": "Men"}]  # row 0 only
    assert attribute_match_at_k(ranked, wanted, gallery, 4) == 37.5  # (2/4 + 1/4) / 2
    assert attribute_match_at_k(ranked, wanted, gallery, 1) == 50.0
    assert attribute_match_at_k(ranked[:, :2], wanted, gallery, 10) == 25.0  # fewer results than K: share of them


def test_attribute_match_honours_any_of_and_unwanted():
    gallery = [{"articleType": "Shirts", "baseColour": "Red", "gender": "Men"},
               {"articleType": "Shirts", "baseColour": "Blue", "gender": "Unisex"},
               {"articleType": "Shirts", "baseColour": "Black", "gender": "Women"},
               {"articleType": "Tops", "baseColour": "Red", "gender": "Men"}]
    ranked = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    wanted = [{"articleType": "Shirts", "gender": ("Men", "Unisex")},   # rows 0, 1
              {"articleType": "Shirts"}]                                # rows 0-2, but not black: 0, 1
    unwanted = [{}, {"baseColour": ("Black",)}]
    assert attribute_match_at_k(ranked, wanted, gallery, 4, unwanted) == 50.0   # (2/4 + 2/4) / 2
    assert attribute_match_at_k(ranked, wanted, gallery, 2, unwanted) == 50.0   # (2/2 + 0/2) / 2
    assert attribute_match_at_k(ranked, wanted, gallery, 2) == 75.0             # without unwanted: (1 + 1/2) / 2
    assert attribute_match_at_k(ranked[:0], [], gallery, 10) == 0.0


def test_catalog_ceiling_counts_the_condition_with_unwanted():
    """attr@10_ceiling: items satisfying the condition (unwanted honoured), less the reference if it does."""
    colours = ["Black"] * 4 + ["Blue"] * 5
    attrs = [{"gender": "Men", "articleType": "Shirts", "baseColour": c} for c in colours]
    attrs += [{"gender": "Women", "articleType": "Tops", "baseColour": "Red"}] * 5
    records = [ImageRecord(str(i), Path(f"{i}.jpg"), a) for i, a in enumerate(attrs)]
    trips = [CatalogTriplet("0", "not black", "4", "negation", {"gender": "Men", "articleType": "Shirts"},
                            {"baseColour": ("Black",)}),                        # rows 4-8: 5 of 10
             CatalogTriplet("4", "c", "0", "matching", {"articleType": "Shirts", "gender": ("Men", "Women")}),
             # rows 0-8 less the reference: 8 of 10
             CatalogTriplet("9", "c", "10", "negation", {"gender": "Women"}, {"articleType": ("Tops",)})]  # none
    index = random_index([r.name for r in records])
    res = composed_catalog(StandInEncoder(), index, records, trips, "image")
    assert res.metrics["attr@10_ceiling"] == round(100 * (0.5 + 0.8 + 0.0) / 3, 2)
    assert res.metrics["kinds"]["negation"]["attr@10_ceiling"] == 25.0
    assert res.metrics["kinds"]["matching"]["attr@10_ceiling"] == 80.0
    # attr@10 is what satisfies says of the top 10, query by query
    by_name = dict(zip([r.name for r in records], attrs))
    shares = [sum(satisfies(by_name[n], t.wanted, t.unwanted) for n in r[:10]) / 10
              for t, r in zip(trips, res.rankings)]
    assert res.metrics["attr@10"] == round(100 * sum(shares) / 3, 2)


def test_catalog_metadata_path_reads_the_caption():
    """With `metadata`, a negated colour of the caption sinks the items of that colour; without, nothing moves."""
    attrs = [{"gender": "Men", "articleType": "Shirts", "baseColour": c} for c in ["Black"] * 4 + ["Blue"] * 10]
    records = [ImageRecord(str(i), Path(f"{i}.jpg"), a) for i, a in enumerate(attrs)]
    trips = [CatalogTriplet("0", "not black", "4", "negation", {"gender": "Men"}, {"baseColour": ("Black",)})]
    index = random_index([r.name for r in records])
    plain = composed_catalog(StandInEncoder(), index, records, trips, "image")
    assert composed_catalog(StandInEncoder(), index, records, trips, "image", metadata=None).metrics == plain.metrics
    meta = Metadata.from_records(records, index.names, weight=5.0, max_df=1.0)
    res = composed_catalog(StandInEncoder(), index, records, trips, "image", metadata=meta)
    assert res.rankings[0][-3:] == [n for n in plain.rankings[0] if n in ("1", "2", "3")]   # last, in order
    assert res.metrics["attr@10"] == 100.0 and "metadata" not in plain.metrics
    assert res.metrics["metadata"] == {"weight": 5.0, "max_df": 1.0, "understood": 100.0, "avoiding": 100.0}
    with pytest.raises(ValueError, match="Metadata.from_records"):
        composed_catalog(StandInEncoder(), index, records, trips, "image", metadata=Metadata.from_records(records[:3]))


def test_fiq_caption_joins_as_clip4cir():
    assert fiq_caption(["is shiny and silver with shorter sleeves", "fit and flare"]) == \
        "Is shiny and silver with shorter sleeves and fit and flare"
    assert fiq_caption(["  is red.", "has a collar?"]) == "Is red and has a collar"
    assert fiq_caption(["Is Darker, ", ", and longer."]) == "Is darker and and longer"
    assert fiq_caption(["is blue."]) == "is blue"
    assert fiq_caption(["", "is grey with a design on the back"]) == "is grey with a design on the back"
    assert fiq_caption(["", " . "]) == ""


def test_cirr_submission_payloads_and_names(tmp_path):
    recall, subset = cirr_submission([7, 12], [[f"n{i}" for i in range(60)], ["a"]], [["a", "b", "c", "d"], []])
    assert recall["version"] == subset["version"] == "rc2"
    assert (recall["metric"], subset["metric"]) == ("recall", "recall_subset")
    assert len(recall["7"]) == 50 and recall["12"] == ["a"] and subset["7"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="duplicate"):
        cirr_submission([1, 1], [[], []], [[], []])
    assert submission_paths(tmp_path / "sub.json") == (tmp_path / "recall_submission_sub.json",
                                                       tmp_path / "recall_subset_submission_sub.json")


# ----------------------------------------------------------------------------------------------- FashionIQ

@pytest.fixture(scope="module")
def dress_val():
    if not FIQ.is_dir():
        pytest.skip("FashionIQ annotation files absent")
    triplets = load_triplets("fashioniq", FIQ, "val", ["dress"])
    names = [r.name for r in list_images("fashioniq", FIQ, "val", ["dress"])]
    return triplets, names


def test_fashioniq_protocol_on_the_real_dress_val(dress_val):
    triplets, names = dress_val
    index = random_index(names)
    res = composed_fashioniq(StandInEncoder(), {"dress": index}, triplets, "sum")
    m = res.metrics
    for key in ("dress_R@10", "dress_R@50", "average_R@10", "average_R@50", "average"):
        assert 0 <= m[key] <= 100, key
    assert m["queries"] == len(triplets) == 2017 and m["dress_R@10"] <= m["dress_R@50"]
    assert m["average"] == round((m["average_R@10"] + m["average_R@50"]) / 2, 2)
    assert len(res.rankings) == len(triplets) and all(len(r) == 50 for r in res.rankings)
    assert set(res.rankings[0]) <= set(names)


def test_fashioniq_rigged_targets_are_found(dress_val):
    triplets, names = dress_val
    index = random_index(names, seed=1)
    chosen = rig(triplets, index, [fiq_caption(t.captions) for t in triplets])
    assert len(chosen) > 500
    res = composed_fashioniq(StandInEncoder(), {"dress": index}, [triplets[i] for i in chosen], "sum")
    assert res.metrics["dress_R@10"] == 100.0 and res.metrics["average_R@50"] == 100.0


def test_fashioniq_reference_outside_the_index(dress_val):
    triplets, names = dress_val
    t = triplets[0]
    index = random_index([n for n in names if n != t.reference])
    with pytest.raises(ValueError, match="no features"):
        composed_fashioniq(StandInEncoder(), {"dress": index}, [t], "sum")
    extra = random_index([t.reference], seed=3)
    res = composed_fashioniq(StandInEncoder(), {"dress": index}, [t], "sum", extra={"dress": extra})
    assert len(res.rankings[0]) == 50
    with pytest.raises(ValueError, match="no index for FashionIQ category"):
        composed_fashioniq(StandInEncoder(), {"shirt": index}, [t], "sum")


def test_fashioniq_all_empty_captions_fall_back_to_the_reference(dress_val):
    triplets, names = dress_val
    index = random_index(names)
    t = triplets[0]
    blank = Triplet(t.reference, ("", " ."), t.target, category="dress")
    res = composed_fashioniq(StandInEncoder(), {"dress": index}, [blank], "sum")
    assert res.metrics["empty_captions"] == 1
    assert res.rankings[0][0] == t.reference  # the reference alone is its own best match (kept for FashionIQ)


# ----------------------------------------------------------------------------------------------- CIRR

@pytest.fixture(scope="module")
def cirr_val():
    if not CIRR.is_dir():
        pytest.skip("CIRR annotation files absent")
    triplets = load_triplets("cirr", CIRR, "val")
    names = [r.name for r in list_images("cirr", CIRR, "val")]
    return triplets, names


def test_cirr_protocol_on_the_real_val(cirr_val):
    triplets, names = cirr_val
    res = composed_cirr(StandInEncoder(), random_index(names), triplets, "sum")
    m = res.metrics
    for key in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "avg"):
        assert 0 <= m[key] <= 100, key
    assert m["avg"] == round((m["R@5"] + m["Rsubset@1"]) / 2, 2)
    assert len(res.rankings) == len(triplets) == 4181 and res.pair_ids == [t.pair_id for t in triplets]
    for t, full, sub in zip(triplets, res.rankings, res.subset_rankings):
        assert t.reference not in full and t.reference not in sub
        assert len(full) == 50 and len(sub) == 3 and set(sub) <= set(t.group)


def test_cirr_rigged_targets_are_found(cirr_val):
    triplets, names = cirr_val
    index = random_index(names, seed=2)
    chosen = rig(triplets, index, [t.captions[0] for t in triplets])
    assert len(chosen) > 500
    m = composed_cirr(StandInEncoder(), index, [triplets[i] for i in chosen], "sum").metrics
    assert m["R@1"] == m["Rsubset@1"] == m["avg"] == 100.0


# ----------------------------------------------------------------------------------------------- the CLI, no images

@pytest.fixture
def stand_in_cli(monkeypatch):
    """main() with the stand-in encoder and random (seeded by folder name) indexes instead of extraction."""
    built = {}

    def ensure_index(records, encoder, out_dir, **kw):
        built[Path(out_dir).name] = random_index([r.name for r in records], seed=_seed(Path(out_dir).name) % 2**31)
        return built[Path(out_dir).name]

    monkeypatch.setattr(encoders, "load", lambda *a, **k: StandInEncoder())
    monkeypatch.setattr(extraction_local, "ensure_index", ensure_index)   # what IndexStore.open calls
    return built


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@needs_formats
def test_cirr_test1_submission_files(stand_in_cli, tmp_path, capsys):
    argv = ["--task", "composed", "--dataset", "cirr", "--data-root", str(FORMATS), "--split", "test1",
            "--combiner", "sum", "--submission", str(tmp_path / "out" / "sub.json")]
    assert main(argv) == 0
    out = _last_json(capsys)
    entries = json.loads((CIRR / "cirr" / "captions" / "cap.rc2.test1.json").read_text())
    assert out["queries"] == len(entries) and out["empty_captions"] == 1  # the real file has one blank caption
    assert "R@1" not in out and out["combiner"] == "sum" and out["text_encoder"] == "base"
    names = set(stand_in_cli["cirr-test1"].names)
    recall = json.loads((tmp_path / "out" / "recall_submission_sub.json").read_text())
    subset = json.loads((tmp_path / "out" / "recall_subset_submission_sub.json").read_text())
    for payload, metric, n in ((recall, "recall", 50), (subset, "recall_subset", 3)):
        assert payload.pop("version") == "rc2" and payload.pop("metric") == metric
        assert set(payload) == {str(e["pairid"]) for e in entries} and len(payload) == len(entries)
        assert all(len(v) == n and set(v) <= names for v in payload.values())
    by_pair = {str(e["pairid"]): e for e in entries}
    assert all(by_pair[p]["reference"] not in v for p, v in recall.items())


@needs_formats
def test_plot_draws_every_compared_method(stand_in_cli, tmp_path, capsys, monkeypatch):
    """--plot with --compare: one JSON line per method (--combiner's last), one PNG whose data are the metrics."""
    drawn = []
    monkeypatch.setattr(runs, "draw_eval", lambda plot, path: drawn.append(plot) or draw_eval(plot, path))
    png = tmp_path / "fiq.png"
    argv = ["--task", "composed", "--dataset", "fashioniq", "--data-root", str(FORMATS), "--split", "val",
            "--categories", "dress", "shirt", "--combiner", "sum", "--compare", "image", "--plot", str(png)]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [m["combiner"] for m in lines] == ["image", "sum"]
    (plot,) = drawn
    assert set(plot.curves) == {"sum dress", "sum shirt", "image dress", "image shirt"}
    for m in lines:
        for c in ("dress", "shirt"):
            curve = plot.curves[f"{m['combiner']} {c}"]
            assert (curve[9], curve[49]) == (m[f"{c}_R@10"], m[f"{c}_R@50"])
            assert plot.bars["R@10"][c][m["combiner"]] == m[f"{c}_R@10"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1000, 450)
    base = ["--task", "composed", "--dataset", "fashioniq", "--data-root", str(FORMATS), "--categories", "dress"]
    assert run_cli(lambda: main([*base, "--plot", str(tmp_path / "x.jpg")])) == 2
    assert run_cli(lambda: main(["--task", "image2image", "--plot", str(tmp_path / "x.png")])) == 2
    assert run_cli(lambda: main(["--task", "text2image", "--compare", "sum"])) == 2
    assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "x.png").exists()


@needs_formats
def test_save_rankings_follow_the_file_order(stand_in_cli, tmp_path, capsys):
    out_file = tmp_path / "rank.json"
    argv = ["--task", "composed", "--dataset", "fashioniq", "--data-root", str(FORMATS), "--split", "val",
            "--categories", "shirt", "dress", "--combiner", "sum", "--save-rankings", str(out_file)]
    assert main(argv) == 0
    m = _last_json(capsys)
    assert {"shirt_R@10", "dress_R@50", "average_R@10", "average_R@50", "average"} <= set(m)
    assert m["index_size"] == sum(m["index_sizes"].values())
    rankings = json.loads(out_file.read_text())
    shirt = json.loads((FIQ / "captions" / "cap.shirt.val.json").read_text())
    dress = json.loads((FIQ / "captions" / "cap.dress.val.json").read_text())
    assert len(rankings) == len(shirt) + len(dress) and all(len(r) == 50 for r in rankings)
    assert m["empty_captions"] == 0  # shirt val has one entry with an empty first caption: the second is used
    # entry i is annotation i's ranking: recompute a few alone, in each category's own index
    trips = load_triplets("fashioniq", FIQ, "val", ["shirt", "dress"])
    for i in (0, len(shirt) - 1, len(shirt), len(rankings) - 1):
        cat = trips[i].category
        alone = composed_fashioniq(StandInEncoder(), {cat: stand_in_cli[f"fashioniq-{cat}-val"]}, [trips[i]], "sum")
        assert rankings[i] == alone.rankings[0]


@needs_formats
def test_bad_input_is_one_clear_error(stand_in_cli, tmp_path, caplog, capsys):
    base = ["--task", "composed", "--data-root", str(FORMATS), "--combiner", "sum"]
    assert run_cli(lambda: main(base + ["--dataset", "fashioniq", "--categories", "hats"])) == 2
    assert "cap.hats.val.json not found" in caplog.text
    assert run_cli(lambda: main(base + ["--dataset", "cirr", "--split", "test"])) == 2
    assert "unknown cirr split" in caplog.text
    assert run_cli(lambda: main(base + ["--dataset", "cirr", "--categories", "dress"])) == 2
    assert run_cli(lambda: main(base + ["--dataset", "fashioniq", "--submission", "x.json"])) == 2
    with pytest.raises(SystemExit) as e:  # an unknown combiner name is refused while the flags are read
        main(base + ["--dataset", "cirr", "--combiner", "no-such"])
    assert e.value.code == 2 and "unknown combiner" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse refuses an unknown dataset with exit code 2
        main(base + ["--dataset", "imagenet"])
    assert e.value.code == 2
    bad = tmp_path / "fashionIQ_dataset"
    (bad / "captions").mkdir(parents=True)
    (bad / "captions" / "cap.dress.val.json").write_text(json.dumps([{"candidate": "a", "target": "b",
                                                                       "captions": "not a list"}]))
    assert run_cli(lambda: main(["--task", "composed", "--dataset", "fashioniq", "--data-root", str(bad),
                                          "--categories", "dress", "--combiner", "sum"])) == 2
    assert "entry 0" in caplog.text


# ----------------------------------------------------------------------------------------------- catalogue

def test_catalog_protocol_excludes_the_reference(catalog_root):
    records = catalog_images(catalog_root, "test")[:200]
    trips = catalog_triplets.generate(records, seed=0, per_kind=10)
    index = random_index([r.name for r in records])
    res = composed_catalog(StandInEncoder(), index, records, trips, "image")
    assert res.metrics["queries"] == len(trips) and set(res.metrics["kinds"]) <= set(catalog_triplets.KINDS)
    assert all(t.reference not in r and len(r) == 50 for t, r in zip(trips, res.rankings))
    for key in ("R@1", "R@10", "R@50", "attr@1", "attr@10"):
        assert 0 <= res.metrics[key] <= 100


def test_catalog_end_to_end(catalog_root, lite_encoder, tmp_path, monkeypatch, capsys):
    """main() on the first 120 test images (a small styles.csv beside the real images), real lite encoder."""
    root = tmp_path / "catalog"
    root.mkdir()
    with open(catalog_root / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["split"] == "test"][:120]
        header = reader.fieldnames
    with open(root / "styles.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    (root / "images").symlink_to(catalog_root / "images")
    monkeypatch.setattr(encoders, "load", lambda *a, **k: lite_encoder)  # the session's encoder, loaded once
    argv = ["--task", "composed", "--dataset", "catalog", "--data-root", str(root), "--split", "test",
            "--combiner", "sum", "--per-kind", "10", "--features", str(tmp_path / "features"), "--workers", "0",
            "--save-rankings", str(tmp_path / "rank.json")]
    assert main(argv) == 0
    m = _last_json(capsys)
    assert m["index_size"] == 120 and m["queries"] == len(json.loads((tmp_path / "rank.json").read_text()))
    assert {"R@1", "R@10", "R@50", "attr@1", "attr@10"} <= set(m) and m["encoder"] == "lite"
    assert m["R@50"] > m["R@1"] >= 0  # real features: the composed query finds targets


def test_load_text_side_pairs_by_identity(caplog):
    """--text-encoder stage1 with a Combiner that recorded the shipped file's name is the same side: no warning."""
    comb = Combiner(CombinerConfig(feature_dim=8, projection_dim=4, hidden_dim=4, text_encoder="lite-text.safetensors"))
    assert load_text_side(comb, None) == TextSide.of("stage1") == comb.cfg.text_side
    assert load_text_side(None, None) == BASE_TEXT
    with caplog.at_level("WARNING"):
        assert load_text_side(comb, "stage1") == comb.cfg.text_side
        assert "differs" not in caplog.text
        assert load_text_side(comb, "base") == BASE_TEXT
        assert "differs from the text side the combiner was trained with (lite-text.safetensors)" in caplog.text


# ----------------------------------------------------------------------------------------------- --index-backend

@needs_formats
def test_evaluate_index_backend_flag(stand_in_cli, capsys):
    """--index-backend reaches the indexes evaluate.py searches: an ANN index gives (nearly) exact metrics."""
    pytest.importorskip("faiss")
    argv = ["--task", "composed", "--dataset", "cirr", "--data-root", str(FORMATS), "--split", "val",
            "--combiner", "sum"]
    runs = {}
    for spec in ("exact", "faiss:hnsw?efSearch=128"):
        assert main(argv + ["--index-backend", spec]) == 0
        runs[spec] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    exact, ann = runs["exact"], runs["faiss:hnsw?efSearch=128"]
    assert exact["index_backend"] == "exact" and ann["index_backend"].startswith("faiss:hnsw")
    for key in ("R@1", "R@10", "R@50", "Rsubset@1"):
        assert abs(exact[key] - ann[key]) <= 2.0, key
    assert run_cli(lambda: main(argv + ["--index-backend", "annoy"])) == 2
