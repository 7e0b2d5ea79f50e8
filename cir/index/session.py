"""Session-aware ranking: a shopper's earlier turns change the current turn's search, decided here only (the
API, query.py and benchmarks/bench_sessions.py all call `session_query`).

    turns = [Turn(row=ref0, caption="make it for women", seen=(...), not_rows=(...)), ...]   # oldest first
    sq = session_query(query, features, turns, caption, exclude, metadata, facets)
    scores, ids = search(sq.query, index, k, exclude=sq.exclude, boost=sq.boost, filters=...)

Three rules, each simple and measured (benchmarks/bench_sessions.py):

- earlier constraints are kept unless overridden: the metadata path's understood words (cir.index.metadata)
  of earlier captions are carried forward, newest first, unless a later caption names the same attribute
  (facets.attributes_of: "in red" after "in blue" drops blue; "for women" keeps blue). Words of no attribute
  (a brand) are carried until said again. Only when the metadata path is on (it reads the captions);
- results seen in earlier turns (the references clicked, and the `seen` ids a client sends) are demoted by
  SEEN_PENALTY: a shopper moving on from them wants something else, yet may still find one lower down;
- results marked "not" are excluded, and the query moves away from them (Rocchio: q - ROCCHIO_BETA x the
  mean of their features, renormalised), so that items like them drop too.

Without turns, the query, exclusions and terms are returned unchanged: a single-turn search is as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .facets import Facets
from .metadata import Metadata, Term, Terms, _member

SEEN_PENALTY = 0.1       # score points off a result seen in an earlier turn (scores are cosines)
ROCCHIO_BETA = 0.3       # how far the query moves away from the mean of the results marked "not"
MAX_TURNS = 20


@dataclass(frozen=True)
class Turn:
    """One earlier turn: the reference's row (None: an upload or none), the caption, the results marked
    "not" and the results seen (shown) in it."""

    row: int | None
    caption: str | None
    not_rows: tuple[int, ...] = ()
    seen: tuple[int, ...] = ()


@dataclass(frozen=True)
class SessionBoost:
    """A Boost for index.search: the carried Terms' change minus SEEN_PENALTY for a seen row."""

    terms: Terms | None
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # sorted unique rows
    penalty: float = SEEN_PENALTY

    def __bool__(self) -> bool:
        return bool(self.terms) or (len(self.seen) > 0 and self.penalty != 0)

    def adjust(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = self.terms.adjust(rows) if self.terms else np.zeros(rows.shape)
        return out - self.penalty * _member(rows, self.seen)


@dataclass
class SessionQuery:
    """What the current turn searches with: the query, the excluded rows, the boost, the terms understood."""

    query: torch.Tensor
    exclude: list[list[int]] | None
    boost: SessionBoost | Terms | None
    terms: Terms | None


def carried_terms(metadata: Metadata, facets: Facets | None, earlier: Sequence[str | None],
                  current: Terms) -> Terms:
    """The current caption's Terms plus the earlier captions' (newest first) whose attributes no later
    caption named; a word said again keeps its latest sense (wanted or avoided)."""
    boost, avoid = list(current.boost), list(current.avoid)
    said = {t.word for t in (*boost, *avoid)}
    named = set().union(*(_attrs(facets, t) for t in (*boost, *avoid)))
    for caption in reversed(list(earlier)):
        old = metadata.terms(caption)
        newly: set[str] = set()
        for terms, into in ((old.boost, boost), (old.avoid, avoid)):
            for t in terms:
                attrs = _attrs(facets, t)
                if t.word in said or (attrs and attrs & named):
                    continue
                into.append(t)
                said.add(t.word)
                newly |= attrs
        named |= newly | set().union(*(_attrs(facets, t) for t in (*old.boost, *old.avoid)))
    return Terms(tuple(boost), tuple(avoid), current.weight)


def _attrs(facets: Facets | None, term: Term) -> frozenset[str]:
    return facets.attributes_of(term.word) if facets else frozenset()


def session_query(query: torch.Tensor, features: torch.Tensor, turns: Sequence[Turn], caption: str | None,
                  exclude: list[list[int]] | None, metadata: Metadata | None, facets: Facets | None,
                  terms: Terms | None = None, seen_penalty: float = SEEN_PENALTY,
                  beta: float = ROCCHIO_BETA) -> SessionQuery:
    """The current turn's search under its session (see the module). `terms`: the current caption's
    metadata Terms when the metadata path is on (None: off, no words carried). One query [1, d]."""
    if not turns:
        return SessionQuery(query, exclude, terms, terms)
    if terms is not None and metadata is not None:
        terms = carried_terms(metadata, facets, [t.caption for t in turns], terms)
    nots = sorted({r for t in turns for r in t.not_rows})
    if nots and beta:
        away = features[torch.tensor(nots)].float().mean(0)
        query = F.normalize(query.float() - beta * F.normalize(away, dim=-1), dim=-1)
    ex = sorted({*(exclude or [[]])[0], *nots})
    seen = {r for t in turns for r in (*t.seen, *([t.row] if t.row is not None else []))}
    boost = SessionBoost(terms, np.asarray(sorted(seen), dtype=np.int64), seen_penalty)
    return SessionQuery(query, [ex] if ex else None, boost if boost else None, terms)
