"""How the project reads words out of product names, attribute values and captions: one tokeniser, so that
"T-Shirt", "tshirts" and "t-shirt" are the same word wherever they are met.

Mined name edits (cir.catalog.name_edits) and the metadata path of search (cir.index.metadata) both use it;
it lives here, beside the records, so that neither has to import the other.
"""
from __future__ import annotations

import re

# Grammar words carry no wish ("with", "of"); a closed class, not a vocabulary of edits.
FUNCTION_WORDS = frozenset({"and", "for", "the", "with", "from", "into", "onto"})
_JOIN = re.compile(r"\b([a-z])[-.](?=[a-z])")   # t-shirt -> tshirt, u.s -> us: one word, however written
_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped ("levi's" -> "levis", "don't" -> "dont"), a lone letter joined to
    what follows ("T-Shirt" -> "tshirt")."""
    return _JOIN.sub(r"\1", (text or "").lower().replace("'", "").replace("\u2019", ""))


def stem(token: str) -> str:
    """One form per word, whatever its number: 'shoes' -> 'shoe', 'watches' -> 'watch', 'dress' stays."""
    if token.endswith(("ches", "shes", "sses", "xes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us")):
        return token[:-1]
    return token


def is_word(token: str) -> bool:
    """Whether a normalised token can be a word of a name: 3 letters or more, not a number, no grammar word."""
    return len(token) >= 3 and not token.isdigit() and token not in FUNCTION_WORDS


def name_words(name: str) -> dict[str, str]:
    """The words of a product name (or any text): stem -> the form the text uses, in order.

    normalise()d; numbers, tokens under 3 letters and grammar words are left out.
    """
    out: dict[str, str] = {}
    for tok in _TOKEN.findall(normalise(name)):
        if is_word(tok):
            out.setdefault(stem(tok), tok)
    return out
