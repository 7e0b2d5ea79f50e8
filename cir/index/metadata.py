"""The metadata path of composed search: the words of a caption that name something in the dataset's own
metadata (a brand of its product names, one of its colours, types or patterns) become soft boosts, or under a
negation ("not red", "without the print") soft penalties, of the learned ranking.

    meta = Metadata.from_records(records, index.names)   # once per dataset: word -> rows posting lists
    terms = meta.terms("the same from nike, not red")     # boost: nike; avoid: red
    scores, ids = search(query, index, k, boost=terms)    # score + w * boost share - w * avoid share

A row's words are those of its product name and of its attribute values (META_ATTRS), read by the project's
one tokeniser (cir.data.words: "T-Shirt", "tshirts" and "t-shirt" are one word), with the inflections of a
pattern name joined to it ("stripes" -> striped). A caption word is a term when the dataset's vocabulary
holds it, it is no grammar or request word (STOP_WORDS), and it discriminates: at most `max_df` of the rows
have it ("men" on a mostly-men catalogue would lift nearly everything). A negation cue (NEGATION_CUES) makes
the words after it, up to the next comma, "but", "and" or the end, words to avoid.

search() applies Terms to the top candidates of the ordinary ranking (index.search: every backend, exclude
and subset kept); the learned path (the Combiner) is untouched, and a dataset without metadata (FashionIQ,
CIRR, folders) gets an empty Metadata whose terms are always empty: a no-op. The defaults of the weight and
of max_df were picked on the catalogue's val split (benchmarks/bench_name_edits.py --split val --sweep).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np

from cir.data.products import known, pattern_of
from cir.data.words import is_word, name_words, normalise, stem

# The attributes whose values are a row's words besides its product name.
META_ATTRS = ("productDisplayName", "gender", "subCategory", "articleType", "baseColour", "usage", "pattern")
# Both picked on the catalogue's val split (bench_name_edits.py --split val --sweep: the best mean of the
# Combiner's name-edit R@10 and name@10 and triplet R@10 and attr@10; 0.2 to 0.5 within 0.1 of each other).
DEFAULT_WEIGHT = 0.2
DEFAULT_MAX_DF = 0.5      # a term is in at most this share of the rows

# Words of a request that never name an item: grammar (pronouns, determiners, prepositions, auxiliaries) and
# the verbs and fillers shoppers wrap a wish in ("make it", "show me", "the same style", "in red colour"). A
# closed class, so no vocabulary of fashion hides in it. Checked on the word as typed and on its stem.
STOP_WORDS = frozenset("""
    about above after again all also although among another any anything are aren around because been before
    being below between both but can cannot could did does doing done down during each either else even ever
    every everything few for from had has have having her here hers him his how into its itself just least
    less like lot lots made make many may maybe might mine more most much must near need needs neither nor
    not nothing now off once one ones only onto other others our ours out over own perhaps please pls plz
    quite rather really same see seem shall she should show shown similar since some something still such
    than that the their theirs them then there these they thing things this those though through too under
    until upon very want wanted wants was way were what when where which while who whom whose why will with
    within without would yet you your yours
    got get gets give find look looking looks try swap switch change changed turn keep prefer preferred
    love instead version versions kind kinds sort style styles idea item items option options
    colour color colours colors coloured colored shade tone brand brands new different better good nice
    available thanks hey yes rid
""".split())
# A cue puts the words after it, up to the next boundary, among the words to avoid.
NEGATION_CUES = frozenset({"not", "no", "non", "without", "never", "nothing", "none", "neither", "nor", "except",
                           "excluding", "avoid", "minus", "isnt", "arent", "wasnt", "werent", "dont", "doesnt",
                           "didnt", "wont", "cant", "cannot", "shouldnt", "hate", "dislike", "less", "too", "skip",
                           "lose", "tired", "ditch", "drop", "remove"})
# "red is not for me", "stripes aren't my thing": a "not" after a copula, or a negated copula, that covers no
# word after it negates the words of its clause before it.
COPULAS = frozenset({"is", "are", "was", "were"})
BACKWARD_CUES = frozenset({"isnt", "arent", "wasnt", "werent"})
# Two-word cues: the second word ends the cue ("anything but black": this "but" opens a scope, ends none).
PAIR_CUES = frozenset({("anything", "but"), ("everything", "but"), ("instead", "of"), ("rather", "than"),
                       ("other", "than"), ("rid", "of")})
BOUNDARIES = frozenset({",", ";", ":", ".", "!", "?", "(", ")", "but", "and", "however", "though", "although"})
_CAPTION_TOKEN = re.compile(r"[a-z0-9]+|[,;:.!?()]")


@lru_cache(maxsize=1 << 16)   # bounded: captions come from shoppers, any token may be new
def word_keys(token: str) -> tuple[str, ...]:
    """The keys a normalised token is found under: its stem, and the pattern it inflects ("stripes" ->
    stripe, striped; "checks" -> check, checked). Other words of a pattern ("floral", "plain") keep their own
    key only: they say more than the pattern does."""
    s = stem(token)
    p = pattern_of(token).lower()
    return (s, p) if p and p != s and s[:4] == p[:4] else (s,)


def row_words(attrs: Mapping[str, str], keys: Sequence[str] = META_ATTRS) -> set[str]:
    """The keys of an item: the words of its product name and of its known attribute values."""
    out: set[str] = set()
    for k in keys:
        value = attrs.get(k, "")
        if known(value):
            for tok in name_words(value).values():
                out.update(word_keys(tok))
    return out


@dataclass(frozen=True)
class Term:
    """A caption word the dataset's metadata holds: the word as typed and the rows that have it."""

    word: str
    rows: np.ndarray            # sorted unique row ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Term) and other.word == self.word and np.array_equal(other.rows, self.rows)

    def __hash__(self) -> int:
        return hash(self.word)


@dataclass(frozen=True)
class Terms:
    """A caption's understood words: `boost` (wanted) and `avoid` (negated), and the weight applied.

    A Boost for index.search: a row's score changes by weight x (share of the boost terms it has) - weight x
    (share of the avoid terms it has). Empty (falsy) when nothing was understood: search() then ranks as
    without it.
    """

    boost: tuple[Term, ...] = ()
    avoid: tuple[Term, ...] = ()
    weight: float = DEFAULT_WEIGHT

    def __bool__(self) -> bool:
        return bool(self.boost or self.avoid) and self.weight != 0

    @property
    def words(self) -> dict[str, list[str]]:
        """What was understood, for a shopper to see: {"boost": [...], "avoid": [...]}."""
        return {"boost": [t.word for t in self.boost], "avoid": [t.word for t in self.avoid]}

    def adjust(self, rows: np.ndarray) -> np.ndarray:
        """The score change of each row id in `rows` (any shape; float64, same shape)."""
        rows = np.asarray(rows)
        out = np.zeros(rows.shape)
        for terms, sign in ((self.boost, 1.0), (self.avoid, -1.0)):
            if terms:
                has = sum(_member(rows, t.rows).astype(np.float64) for t in terms)
                out += sign * self.weight * has / len(terms)
        return out


def _member(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """rows in sorted_rows, elementwise (a binary search per row: posting lists can be long)."""
    if len(sorted_rows) == 0:
        return np.zeros(rows.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return sorted_rows[pos] == rows


class Metadata:
    """A dataset's words per row, as posting lists (key -> sorted row ids), and how captions are read
    against them (`terms`). Empty for a dataset without metadata: every caption then gives empty Terms."""

    def __init__(self, postings: Mapping[str, np.ndarray], n: int, weight: float = DEFAULT_WEIGHT,
                 max_df: float = DEFAULT_MAX_DF):
        if not 0 < max_df <= 1:
            raise ValueError(f"max_df is a share of the rows, in (0, 1], not {max_df}")
        self.postings, self.n, self.weight, self.max_df = dict(postings), n, float(weight), float(max_df)

    @classmethod
    def from_records(cls, records: Iterable, names: Sequence[str] | None = None, attrs: Sequence[str] = META_ATTRS,
                     weight: float = DEFAULT_WEIGHT, max_df: float = DEFAULT_MAX_DF) -> "Metadata":
        """From ImageRecords (with .attrs): in row order, or mapped to rows by `names` (an index's names; a
        row without a record has no words)."""
        records = list(records)
        if names is None:
            rows_attrs = [r.attrs for r in records]
        else:
            by_name = {r.name: r.attrs for r in records}
            rows_attrs = [by_name.get(n, {}) for n in names]
        lists: dict[str, list[int]] = {}
        for row, a in enumerate(rows_attrs):
            for key in row_words(a or {}, attrs):
                lists.setdefault(key, []).append(row)
        return cls({k: np.asarray(v, dtype=np.int64) for k, v in lists.items()}, len(rows_attrs), weight, max_df)

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return bool(self.postings)

    def with_settings(self, weight: float | None = None, max_df: float | None = None) -> "Metadata":
        """The same posting lists under another weight or max_df (a sweep builds them once)."""
        return Metadata(self.postings, self.n, self.weight if weight is None else weight,
                        self.max_df if max_df is None else max_df)

    def rows(self, token: str) -> np.ndarray:
        """The rows having a normalised token under any of its keys (word_keys), sorted."""
        found = [self.postings[k] for k in word_keys(token) if k in self.postings]
        if len(found) <= 1:
            return found[0] if found else np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(found))

    def terms(self, caption: str | None) -> Terms:
        """The caption's words this dataset's metadata holds and that discriminate, boosted or avoided."""
        if not self.postings or not caption:
            return Terms(weight=self.weight)
        boost: dict[str, Term] = {}
        avoid: dict[str, Term] = {}
        for token, negated in read_caption(caption):
            key = stem(token)
            if key in boost or key in avoid:
                if negated and key in boost:     # said both ways ("red, well not red"): the negation wins
                    avoid[key] = boost.pop(key)
                continue
            rows = self.rows(token)
            if 0 < len(rows) <= self.max_df * self.n:
                (avoid if negated else boost)[key] = Term(token, rows)
        return Terms(tuple(boost.values()), tuple(avoid.values()), self.weight)

    def boosts(self, captions: Sequence[str | None]) -> list[Terms]:
        """terms() of each caption: search()'s `boost` for a batch."""
        return [self.terms(c) for c in captions]


def read_caption(caption: str) -> list[tuple[str, bool]]:
    """The caption's candidate words, in order, each with whether a negation covers it.

    Normalised as names are (cir.data.words); grammar and request words (STOP_WORDS), negation cues and
    tokens that are no word (numbers, under 3 letters) are left out. A cue covers the words after it up to
    the next boundary (a comma or other punctuation, "but", "and") or the end: "not red, but checked" -> red
    negated, checked not; "anything but black", "instead of blue", "rather than red" are cues too. A "not"
    after "is" / "are" that covers nothing negates its clause's words before it instead ("red is not for me").
    """
    tokens = _CAPTION_TOKEN.findall(normalise(caption))
    out: list[tuple[str, bool]] = []
    negated, clause, back = False, 0, None    # back: where the words a backward "is not" covers end
    for i, tok in enumerate(tokens + ["."]):  # a final boundary closes the last clause
        prev = tokens[i - 1] if i else ""
        if tok in NEGATION_CUES or (prev, tok) in PAIR_CUES:
            negated = True
            if back is None and (tok in BACKWARD_CUES or (tok == "not" and prev in COPULAS)):
                back = len(out)
        elif tok in BOUNDARIES:
            if back is not None and back == len(out):   # "is not" with nothing after it in its clause
                out[clause:back] = [(w, True) for w, _ in out[clause:back]]
            negated, clause, back = False, len(out), None
        elif is_word(tok) and tok not in STOP_WORDS and stem(tok) not in STOP_WORDS:
            out.append((tok, negated))
    return out
