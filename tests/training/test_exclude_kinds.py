"""--exclude-kinds (the leave-kinds-out protocol): the left-out kinds are in no train epoch and no val triplet,
the other kinds' triplets are those a run on every kind draws, bad names are one clear error, and the flag
reaches the config and its resume key."""
from __future__ import annotations

import pytest

from cir.catalog import triplets
from cir.catalog.families import FAMILIES
from cir.cli.train import from_args, parser
from cir.training.config import CombinerStageConfig, TextStageConfig
from cir.training.data import CatalogData

LEFT_OUT = FAMILIES["gender"]


class NameIndex:
    """The part of a FeatureIndex CatalogData reads: names, their rows, membership."""

    def __init__(self, records):
        self.names = [r.name for r in records]
        self._rows = {n: i for i, n in enumerate(self.names)}

    def __contains__(self, name: str) -> bool:
        return name in self._rows

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        return self._rows[name]


@pytest.fixture()
def data_of(monkeypatch, catalog_root):
    """data_of(exclude): CatalogData over the real train and val splits, indexes standing in for features."""
    monkeypatch.setattr(CatalogData, "index", lambda self, recs, name, **info: NameIndex(recs))

    def make(exclude: tuple[str, ...]) -> CatalogData:
        # Only the kinds' triplets: no photo-like views, real photos or name edits (they need an encoder).
        return CatalogData(None, CombinerStageConfig(data_root=str(catalog_root), per_kind=30, val_per_kind=30,
                                                     exclude_kinds=exclude, photo_like=0.0, photo_triplets=0,
                                                     name_edits=0))
    return make


def test_left_out_kinds_are_in_no_train_epoch_and_no_val_triplet(data_of):
    every, some = data_of(()), data_of(LEFT_OUT)
    assert {t.kind for t in every.val} == set(triplets.KINDS)
    assert {t.kind for t in some.val} == set(triplets.KINDS) - set(LEFT_OUT)
    assert some.val == [t for t in every.val if t.kind not in LEFT_OUT]  # the other kinds' val triplets unchanged
    trips = triplets.generate(every.records["train"], seed=0, per_kind=30, phrasings="train")
    kinds = {(t.caption, every.train.id_of(t.reference), every.train.id_of(t.target)): t.kind for t in trips}
    full = [(it.caption, it.ref, it.tgt) for it in every.epoch(0)]
    kept = [(it.caption, it.ref, it.tgt) for it in some.epoch(0)]
    assert {kinds[k] for k in full} == set(triplets.KINDS)
    assert kept == [k for k in full if kinds[k] not in LEFT_OUT]  # the rest drawn as a run on every kind draws
    assert not {kinds[k] for k in kept} & set(LEFT_OUT)


def test_bad_exclusions_are_one_clear_error():
    with pytest.raises(ValueError, match="unknown triplet kind 'red' in exclude_kinds; valid: same_product_colour"):
        CombinerStageConfig(exclude_kinds=("colour", "red"))
    with pytest.raises(ValueError, match="catalog dataset only"):
        TextStageConfig(dataset="fashioniq", exclude_kinds=("colour",))
    with pytest.raises(ValueError, match="nothing to train on"):
        CombinerStageConfig(exclude_kinds=triplets.KINDS)
    with pytest.raises(ValueError, match="not the string"):
        CombinerStageConfig(exclude_kinds="colour")


def test_the_flag_reaches_the_config_and_its_resume_key(tmp_path, capsys):
    args = parser().parse_args(["combiner", "--exclude-kinds", "gender", "colour+gender", "--cache-dir", str(tmp_path)])
    cfg = from_args(CombinerStageConfig, args)
    assert cfg.exclude_kinds == ("gender", "colour+gender")
    assert from_args(CombinerStageConfig, parser().parse_args(["combiner"])).exclude_kinds == ()
    assert cfg.resume_file() != CombinerStageConfig(cache_dir=str(tmp_path)).resume_file()
    with pytest.raises(SystemExit):
        parser().parse_args(["combiner", "--exclude-kinds", "red"])
    assert "invalid choice: 'red'" in capsys.readouterr().err
