"""Session-aware ranking (cir.index.session): without turns nothing changes; earlier words are carried
unless the same attribute is named again; seen rows are demoted, "not" rows excluded and moved away from.
Data: the real catalogue's test split (its metadata and facets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir.data import catalog_images
from cir.index import Facets, Metadata
from cir.index.session import ROCCHIO_BETA, SEEN_PENALTY, SessionBoost, Turn, carried_terms, session_query


@pytest.fixture(scope="module")
def world(catalog_root):
    records = catalog_images(catalog_root, "test")
    return Metadata.from_records(records), Facets.from_records(records)


def _words(terms) -> tuple[list[str], list[str]]:
    return [t.word for t in terms.boost], [t.word for t in terms.avoid]


def test_no_turns_changes_nothing(world):
    meta, facets = world
    q = F.normalize(torch.randn(1, 8), dim=-1)
    terms = meta.terms("in red")
    sq = session_query(q, torch.zeros(5, 8), [], "in red", [[3]], meta, facets, terms)
    assert sq.query is q and sq.exclude == [[3]] and sq.boost is terms and sq.terms is terms


@pytest.mark.parametrize("earlier, now, boost, avoid", [
    (["make it for women"], "in red", ["red", "women"], []),           # kept: another attribute
    (["in blue"], "in red", ["red"], []),                              # overridden: the same attribute
    (["in blue", "for women"], "in red", ["red", "women"], []),
    (["not black"], "for women", ["women"], ["black"]),                # an avoided word carried too
    (["in red"], "not red", [], ["red"]),                              # said again: the latest sense wins
    (["in blue", "in green"], "for women", ["women", "green"], []),    # the newest of one attribute
])
def test_carried_words(world, earlier, now, boost, avoid):
    meta, facets = world
    got = _words(carried_terms(meta, facets, earlier, meta.terms(now)))
    assert sorted(got[0]) == sorted(boost) and got[1] == avoid


def test_seen_demoted_not_excluded_and_moved_away(world):
    meta, facets = world
    feats = F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = F.normalize(feats[0:1] + feats[1:2], dim=-1)
    turns = [Turn(row=4, caption=None, not_rows=(1,), seen=(2, 3))]
    sq = session_query(q, feats, turns, None, [[0]], meta, facets, None)
    assert sq.exclude == [[0, 1]] and isinstance(sq.boost, SessionBoost)
    assert sq.boost.adjust(np.array([2, 3, 4, 5])).tolist() == [-SEEN_PENALTY] * 3 + [0.0]
    want = F.normalize(q - ROCCHIO_BETA * feats[1:2], dim=-1)
    assert torch.allclose(sq.query, want, atol=1e-6)
    assert float(sq.query @ feats[1]) < float(q @ feats[1])
