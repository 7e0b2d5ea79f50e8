"""Families of catalogue triplet kinds: what a leave-kinds-out run holds out, to measure how the composed path
generalises to an edit it was never taught (benchmarks/bench_generalisation.py, `train.py combiner
--exclude-kinds`).

A kind teaches a change when its condition rules out the reference's own value of what changes (the reference
fails the condition on that attribute alone). Holding out a family removes every kind that teaches its change,
pairs included, or the change would still be taught; the kinds a family holds out are the kinds it is
evaluated on. The families:

  colour              a named other colour: colour, same_product_colour, every colour+ pair, and negation
                      ("not red" moves away from the reference's colour: a colour change without the new name)
  type                another article type or category: type, every +type pair, and matching ("shoes to match"
                      asks for another category in the same colour, the type change across sub-categories)
  usage               usage, every +usage pair, and negation ("not casual")
  gender              gender and every +gender pair (matching keeps the wearer: its gender tuple holds the
                      reference's own)
  pattern             pattern, every +pattern pair, and negation ("not striped", "not plain")
  matching            matching alone (another category in the reference's colour), the type kinds still taught
  negation            negation alone: the only kind with unwanted attributes; other captions may say "not red"
                      but always name the wanted value too
  pairs               every a+b kind: both single changes taught, never two at once
  same_but_different  same_but_different alone: nothing changes, every other kind changes something
"""
from __future__ import annotations

from typing import Sequence

from cir.catalog.triplets import KINDS

# Changes a kind teaches beyond what its name says (a+b teaches a, b and "pairs"; a single kind teaches itself).
TEACHES_ALSO: dict[str, frozenset[str]] = {
    "same_product_colour": frozenset({"colour"}),
    "matching": frozenset({"type"}),
    "negation": frozenset({"colour", "usage", "pattern"}),
}
FAMILY_NAMES = ("colour", "type", "usage", "gender", "pattern", "matching", "negation", "pairs",
                "same_but_different")


def teaches(kind: str) -> frozenset[str]:
    """The changes (family names) a triplet kind teaches."""
    parts = set(kind.split("+"))
    if len(parts) > 1:
        parts.add("pairs")
    return frozenset(parts) | TEACHES_ALSO.get(kind, frozenset())


# family -> the kinds it holds out (in triplets.KINDS order); also the kinds it is evaluated on.
FAMILIES: dict[str, tuple[str, ...]] = {f: tuple(k for k in KINDS if f in teaches(k)) for f in FAMILY_NAMES}


def held_out(families: Sequence[str]) -> tuple[str, ...]:
    """The kinds holding out `families` leaves out of training, in triplets.KINDS order."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown kind famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(FAMILY_NAMES)}")
    return tuple(k for k in KINDS if any(k in FAMILIES[f] for f in families))


def held_out_changes(excluded: Sequence[str]) -> frozenset[str]:
    """The changes no kind left in training teaches once `excluded` kinds are out: the families whose every
    teaching kind is excluded (other training sources teaching such a change must then be left out too)."""
    taught = {c for k in KINDS if k not in excluded for c in teaches(k)}
    return frozenset(c for k in excluded for c in teaches(k) if c not in taught)
