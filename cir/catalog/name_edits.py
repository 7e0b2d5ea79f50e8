"""Edits mined from product-name differences: "the same, but Nike", with no hand list of words.

Two items of one split with the same article type and gender whose product names differ in a word or two make
an edit: the reference, the target, and the target's new words ("Puma Men Black Tshirt" -> "Nike Men Black
Tshirt": "nike"). A sensible edit is one change: 1-2 new words making one phrase of one family, words the
split's names use more than once (no model codes), none saying what the reference already is (a black shirt
whose name left "black" out is not made "black"). The caption names the new words as shoppers type them ("the
same from nike", "do you have it in navy blue?"), with phrasings partitioned train/heldout as phrasings.pick
does; `wish` is the whole wish typed into a text search instead ("nike t-shirt", "men's navy blue shirt"), the
baseline a shopper has.

An item satisfies an edit (`satisfies`, `satisfying` for a whole gallery) when it has the wanted article type
and gender and its product name holds every new word as a token: one rule for training positives and for the
metric (name@K). Words are split train/heldout by a stable hash (a quarter held out), so a model trained on
train-word edits can be tested on words it never saw. Each edit is tagged with the family of its words, read
from the catalogue's own vocabulary: colour, gender, usage and type words are tokens of those attributes'
values, pattern words those cir.data.pattern_of reads; anything else (brand, material, style, model line) is
"name". Brands are the words names put before the wearer ("Nike Men ..."): "red tape" is a brand, not a
colour, and is asked for as one ("the same from red tape"). Mining is deterministic from a seed and stays
within the records given (one split).
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import Iterator, Mapping, Sequence

import numpy as np

from cir.catalog import phrasings as ph
from cir.catalog.descriptions import GENDER_PHRASES, article_phrase, with_a
from cir.data import known, pattern_of
from cir.data.words import name_words

WORDS = ("all", "train", "heldout")
FAMILIES = ("colour", "gender", "usage", "type", "pattern", "name")   # a word's: the first that holds it
FAMILY_ATTRS = {"colour": ("baseColour",), "gender": ("gender",), "usage": ("usage",),
                "type": ("articleType", "subCategory")}
HELDOUT_PERCENT = 25
MAX_NEW, MAX_GONE = 2, 2       # the target has 1-2 words the reference lacks; the reference at most 2 it lacks


@dataclass(frozen=True)
class NameEdit:
    reference: str
    target: str
    caption: str
    words: tuple[str, ...]                 # the target's new words (normalised tokens), in its name's order
    family: str                            # colour | gender | usage | type | pattern | name
    wish: str                              # the whole wish as a shopper would type it into a text search
    wanted: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # articleType, gender

    @property
    def kind(self) -> str:
        """The family, under the name other triplets use for their tag."""
        return self.family


# ----------------------------------------------------------------------------------------------- words
# Names are read into words by cir.data.words.name_words, the tokeniser the metadata path of search shares.

def word_partition(word: str) -> str:
    """'train' or 'heldout' (about a quarter), from a stable hash of the word: the same in every run."""
    h = int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "big")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def edit_partition(words: Sequence[str]) -> str:
    """An edit is held out when any of its words is: a model trained on "train" never saw it whole."""
    return "heldout" if any(word_partition(w) == "heldout" for w in words) else "train"


@lru_cache(maxsize=None)
def _value_words(value: str) -> frozenset[str]:
    """The words of an attribute value ("Navy Blue" -> navy, blue); none for a missing one."""
    return frozenset(name_words(value)) if known(value) else frozenset()


def own_words(attrs: Mapping[str, str]) -> frozenset[str]:
    """The words of an item's own colour, gender, usage and type: a new word among them says nothing new."""
    return frozenset().union(*(_value_words(attrs.get(k, "")) for keys in FAMILY_ATTRS.values() for k in keys))


class Vocabulary:
    """Which family each word belongs to, which words are brands, and which attribute values take several
    words: all read from the records' own data."""

    def __init__(self, attrs: Sequence[Mapping[str, str]]):
        self.family_words = {fam: frozenset().union(*(_value_words(a.get(k, "")) for a in attrs for k in keys))
                             for fam, keys in FAMILY_ATTRS.items()}
        # A brand is what a name says before its wearer ("Nike Men ..."): words there in most of their uses.
        gender = self.family_words["gender"]
        before, seen = Counter(), Counter()
        for a in attrs:
            words = list(name_words(a.get("productDisplayName", "")))
            first = next((i for i, w in enumerate(words) if w in gender), None)
            if first is not None:
                seen.update(words)
                before.update(words[:first])
        self.brands = frozenset(w for w, n in before.items() if 2 * n >= seen[w])
        # Values of several words ("navy blue", "off white"), by each of their words: a new "off" is said "off white".
        self.phrases: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        values = {a.get(k, "") for a in attrs for keys in FAMILY_ATTRS.values() for k in keys}
        for value in filter(known, values):
            words = tuple(name_words(value))
            for w in words if len(words) > 1 else ():
                self.phrases[w].add(words)
        self._family: dict[str, str] = {}
        self._pattern: dict[str, str] = {}

    def pattern(self, word: str) -> str:
        """The pattern a word names (cir.data.pattern_of), "" for none; looked up once per word."""
        if word not in self._pattern:
            self._pattern[word] = pattern_of(word)
        return self._pattern[word]

    def family(self, word: str) -> str:
        """The first family (FAMILIES' order) whose vocabulary holds the word; "name" when none does."""
        if word not in self._family:
            self._family[word] = next((f for f in FAMILIES[:-1] if (bool(self.pattern(word)) if f == "pattern"
                                                                    else word in self.family_words[f])), "name")
        return self._family[word]

    def is_brand(self, word: str) -> bool:
        """A brand's word that names no attribute ("tape" of Red Tape; not "coffee" of Coffee Brown)."""
        return word in self.brands and self.family(word) == "name"

    def edit_family(self, words: Sequence[str]) -> str | None:
        """The family the words share; "name" for a brand's ("red tape" is no colour); None when they are two
        changes at once ("solid black": a pattern and a colour)."""
        if any(self.is_brand(w) for w in words):
            return "name"
        found = {self.family(w) for w in words}
        return found.pop() if len(found) == 1 else None

    def said(self, words: Sequence[str], new: Sequence[str]) -> slice:
        """The span of a name's `words` to say for its `new` words: theirs, widened to the whole brand or the
        whole attribute values they are part of ("assn" is said "polo assn", "off" of "off white" "off white")."""
        pos = [words.index(w) for w in new]
        lo, hi = min(pos), max(pos) + 1
        wearer = next((i for i, w in enumerate(words) if w in self.family_words["gender"]), 0)
        if hi <= wearer and any(self.is_brand(w) for w in new):
            lo, hi = 0, wearer
        for p in {p for w in new for p in self.phrases.get(w, ())}:
            for i in range(len(words) - len(p) + 1):
                if tuple(words[i:i + len(p)]) == p and i < hi and i + len(p) > lo:
                    lo, hi = min(lo, i), max(hi, i + len(p))
        return slice(lo, hi)


# ----------------------------------------------------------------------------------------------- captions, wishes

def _brand_shapes(x: str) -> list[str]:
    return [f"the same from {x}", f"{x} instead", f"{with_a(x)} one", f"do you have it from {x}?",
            f"same but by {x}", f"the {x} version", f"I prefer {x}", f"make it {x}", f"any {x} ones?",
            f"show me {x} instead", f"swap the brand to {x}", f"looking for {with_a(x)} one",
            f"same style by {x}", f"{x} please", f"do you have it in {x}", f"I'd rather have {x}",
            f"same thing from {x}", f"{x} brand", f"want the {x} one", f"got this by {x}?",
            f"same idea, {x}", f"only {x}", f"{x} pls", f"switch to {x}"]


def _colour_shapes(x: str) -> list[str]:
    return [f"in {x}", f"make it {x}", f"do you have it in {x}?", f"{x} instead", f"{with_a(x)} one",
            f"the same in {x}", f"I want it in {x}", f"{x} colour please", f"show me {x} ones", f"switch to {x}",
            f"same but {x}", f"the {x} version", f"prefer {x}", f"{x} please", f"looking for {with_a(x)} one",
            f"same style in {x}", f"it should be {x}", f"change it to {x}", f"want the {x} one", f"{x} pls",
            f"same thing, {x}", f"{x} color", f"got it in {x}?", f"same, only {x}"]


def _word_shapes(x: str) -> list[str]:
    return [f"make it {x}", f"{x} instead", f"{with_a(x)} one", f"do you have it in {x}?", f"the {x} version",
            f"same but {x}", f"I want the {x} one", f"something {x}", f"show me {x} ones", f"{x} please",
            f"looking for {with_a(x)} one", f"the same, {x}", f"change it to {x}", f"I'd like {with_a(x)} one",
            f"is there {with_a(x)} one?", f"{x} would be better", f"want the {x} kind", f"same style, {x}",
            f"prefer {x}", f"one that is {x}", f"{x} pls", f"can I get it {x}?", f"{x} version please",
            f"same thing but {x}"]


def caption(rng: random.Random, new: str, old: str, family: str, brand: bool, phrasings: str = "all") -> str:
    """A relative caption naming the new words `new` ("nike", "navy blue"); `old`: the words the reference
    has instead ("" when none), named by a few templates at the end (appended: the partition holds)."""
    shapes = (_brand_shapes(new) if brand and family == "name" else _colour_shapes(new) if family == "colour"
              else _word_shapes(new))
    if old:
        shapes += [f"{new} instead of {old}", f"not {old}, {new}", f"{new} rather than {old}",
                   f"swap the {old} for {new}"]
    return ph.pick(rng, shapes, phrasings)


def wish(rng: random.Random, new: str, ref: Mapping[str, str]) -> str:
    """The wish typed as text: the new words and the reference's article, often its wearer ("nike t-shirt",
    "red casual shoes for men", "women's leather handbag")."""
    art = article_phrase(ref.get("articleType", ""))
    noun, adj = GENDER_PHRASES.get(ref.get("gender", ""), ("", ""))
    shapes = [f"{new} {art}"]
    if adj == "unisex":
        shapes.append(f"unisex {new} {art}")
    elif adj:
        shapes += [f"{new} {art} for {noun}", f"{adj} {new} {art}"]
    return rng.choice(shapes)


# ----------------------------------------------------------------------------------------------- the rule

def satisfies(attrs: Mapping[str, str], edit: NameEdit) -> bool:
    """Whether an item fulfils the edit: the wanted article type and gender, every new word in its name."""
    return (all(attrs.get(k, "") == v for k, v in edit.wanted.items())
            and set(edit.words) <= set(name_words(attrs.get("productDisplayName", ""))))


def satisfying(edits: Sequence[NameEdit], gallery: Sequence[Mapping[str, str]]) -> np.ndarray:
    """`satisfies` for every edit and gallery item at once: bool [len(edits), len(gallery)].

    One mask per distinct word (from an inverted index of the gallery's names) and per distinct wanted
    condition: thousands of edits over a split take a fraction of a second.
    """
    out = np.zeros((len(edits), len(gallery)), dtype=bool)
    if not edits or not gallery:
        return out
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, a in enumerate(gallery):
        for w in name_words(a.get("productDisplayName", "")):
            rows_of[w].append(row)
    columns = {k: np.array([a.get(k, "") for a in gallery], dtype=object)
               for k in sorted({k for e in edits for k in e.wanted})}
    masks: dict = {}

    def mask(key) -> np.ndarray:  # a word, or a wanted condition as sorted (attribute, value) pairs
        if key not in masks:
            if isinstance(key, str):
                m = np.zeros(len(gallery), dtype=bool)
                m[rows_of.get(key, [])] = True
            else:
                m = np.ones(len(gallery), dtype=bool)
                for k, v in key:
                    m &= columns[k] == v
            masks[key] = m
        return masks[key]

    for i, e in enumerate(edits):
        out[i] = mask(tuple(sorted(e.wanted.items())))
        for w in e.words:
            out[i] &= mask(w)
    return out


# ----------------------------------------------------------------------------------------------- mining

class _Names:
    """One split's records with their name words, the words' counts and the vocabulary, for mining."""

    def __init__(self, records: Sequence):
        self.records = sorted(records, key=lambda r: r.name)
        self.attrs = [r.attrs for r in self.records]
        self.words = [name_words(a.get("productDisplayName", "")) for a in self.attrs]
        self.sets = [frozenset(ws) for ws in self.words]
        self.counts = Counter(w for ws in self.words for w in ws)
        self.vocab = Vocabulary(self.attrs)
        self.own = [own_words(a) for a in self.attrs]

    def says_reference(self, word: str, ref: int) -> bool:
        """Whether a new word only says what the reference already is (its colour, type, usage, gender or
        pattern): "black" for a black shirt whose name left the colour out is no edit."""
        pattern = self.attrs[ref].get("pattern", "")
        return word in self.own[ref] or (bool(pattern) and self.vocab.pattern(word) == pattern)


def _near_pairs(names: _Names) -> Iterator[tuple[int, int]]:
    """(reference, target) rows of one article type and gender whose names differ, by at most 2 words each
    way; both orders of each pair, once. Every such pair shares the bucket of its common words, which each
    name reaches by dropping at most 2 words: no all-pairs scan."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    drop = max(MAX_NEW, MAX_GONE)
    for row, (a, ws) in enumerate(zip(names.attrs, names.sets)):
        group, words = (a.get("articleType", ""), a.get("gender", "")), sorted(ws)
        for k in range(min(drop, len(words) - 1) + 1):   # something must stay in common
            for gone in combinations(words, k):
                buckets[(group, ws.difference(gone))].append(row)
    for (_, common), rows in buckets.items():
        n = len(common)
        for i, r in enumerate(rows):
            sr = names.sets[r]
            for t in rows[i + 1:]:
                # Counted in the bucket of exactly their common words only, never again in a smaller one.
                st = names.sets[t]
                if len(sr & st) == n:
                    if len(st) > n:   # the target has words the reference lacks
                        yield r, t
                    if len(sr) > n:
                        yield t, r


def _candidates(names: _Names, min_count: int) -> dict[tuple[str, ...], dict[int, list[int]]]:
    """new words -> reference row -> target rows, for the pairs that make a sensible edit: 1-2 new words,
    one phrase of the target's name and one change (one family), each word in at least `min_count` names of
    the split (no one-off model codes), none merely saying what the reference already is."""
    out: dict[tuple[str, ...], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    rare = {w for w, n in names.counts.items() if n < min_count}
    for r, t in _near_pairs(names):
        added = names.sets[t] - names.sets[r]
        if not 1 <= len(added) <= MAX_NEW or added & rare:
            continue
        tw = names.words[t]
        new = tuple(w for w in tw if w in added)
        if len(new) > 1:  # "Nike Men White" for "Puma Men Black" is two changes, said by no one phrase
            order = list(tw)
            if order.index(new[-1]) - order.index(new[0]) != len(new) - 1 or names.vocab.edit_family(new) is None:
                continue
        if not any(names.says_reference(w, r) for w in new):
            out[new][r].append(t)
    return out


def _edit(names: _Names, rng: random.Random, ref: int, tgt: int, new: tuple[str, ...], phrasings: str) -> NameEdit:
    rw, tw, ra = names.words[ref], names.words[tgt], names.attrs[ref]
    order = list(tw)
    said = " ".join(tw[w] for w in order[names.vocab.said(order, new)])
    old = " ".join(rw[w] for w in rw if w not in tw)
    family = names.vocab.edit_family(new) or "name"
    brand = any(names.vocab.is_brand(w) for w in new)
    return NameEdit(names.records[ref].name, names.records[tgt].name,
                    caption(rng, said, old, family, brand, phrasings), new, family, wish(rng, said, ra),
                    {"articleType": ra.get("articleType", ""), "gender": ra.get("gender", "")})


def mine(records: Sequence, seed: int = 0, per_word: int = 20, limit: int | None = None, words: str = "all",
         phrasings: str = "all", min_count: int = 2) -> list[NameEdit]:
    """Name edits among `records` (one split's catalogue ImageRecords), in a seeded random order.

    per_word: at most this many edits of the same new words (each another reference), so "black" does not
    crowd out the rest; limit: at most this many in all. words: "all", or the "train" / "heldout" partition of
    the words (word_partition); phrasings: "all" caption templates or their "train" / "heldout" partition.
    """
    if words not in WORDS:
        raise ValueError(f"unknown words {words!r}; valid: {', '.join(WORDS)}")
    if phrasings not in ph.PHRASINGS:
        raise ValueError(f"unknown phrasings {phrasings!r}; valid: {', '.join(ph.PHRASINGS)}")
    rng = random.Random(seed)
    names = _Names(records)
    edits = []
    for new, by_ref in _candidates(names, min_count).items():
        if words != "all" and edit_partition(new) != words:
            continue
        refs = list(by_ref)
        rng.shuffle(refs)
        for ref in refs[:per_word]:
            edits.append(_edit(names, rng, ref, rng.choice(by_ref[ref]), new, phrasings))
    rng.shuffle(edits)
    edits = edits[:limit] if limit is not None else edits
    # The rule, not the mining, has the last word: keep an edit only where an item besides the reference
    # fulfils it (its target, by construction) and the reference does not.
    sat = satisfying(edits, names.attrs)
    row = {r.name: i for i, r in enumerate(names.records)}
    return [e for e, s in zip(edits, sat) if not s[row[e.reference]] and s.sum() > 0]
