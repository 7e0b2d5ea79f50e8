"""Validation of what a client sends: captions, filters, names, integers and booleans, with messages that match
the cause.

Strict types: a value that is missing (absent or null; an empty string, which is how a query string or a form
says "not given") takes the default; any other type (a boolean, a number, a list, an object) where a string
is expected is an error, never silently the default.
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Collection

from cir.serving.errors import BadInput

MAX_CAPTION_CHARS = 1000
MAX_FILTER_CHARS = 200

# Characters that draw nothing: zero-width space / non-joiner / joiner, word joiner, invisible operators,
# BOM, soft hyphen, Mongolian vowel separator, Hangul fillers, braille blank. Inside text some are legitimate
# (a joiner in an emoji sequence, a non-joiner in Persian), so they are only trimmed at the ends, and a text
# made of nothing else is empty.
INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u115f\u1160\u3164"
                      "\uffa0\u2800")
# Bidirectional overrides, embeddings and isolates reorder what a reader sees ("Trojan Source"); line and
# paragraph separators break a line like a newline does. Both are control characters here.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_EDGES = re.compile("^[\\s" + "".join(sorted(INVISIBLE)) + "]+|[\\s" + "".join(sorted(INVISIBLE)) + "]+$")


def _is_blank(ch: str) -> bool:
    # Cf (format) characters are all invisible (direction marks, tags, joiners) whether listed or not.
    return ch.isspace() or ch in INVISIBLE or unicodedata.category(ch) == "Cf"


def _control(ch: str) -> bool:
    # Cc: C0/C1 controls (newlines, tabs, NUL, escapes); Cs: lone surrogates; Zl/Zp: U+2028 / U+2029.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS


def validate_text(value: Any, what: str = "caption", max_chars: int = MAX_CAPTION_CHARS) -> str:
    """A trimmed, non-empty, printable single-line string of at most `max_chars` characters, or BadInput."""
    if value is None:
        raise BadInput(f"the {what} is missing")
    if not isinstance(value, str):
        raise BadInput(f"the {what} must be a string, not {_shown(value)}")
    if len(value) > 4 * max_chars:  # refuse before scanning a huge string character by character
        raise BadInput(f"the {what} has {len(value)} characters; at most {max_chars} are allowed")
    text = _EDGES.sub("", value)
    if all(_is_blank(ch) for ch in text):
        raise BadInput(f"the {what} is empty: say how the wanted item differs, e.g. 'is red with longer sleeves'"
                       if what == "caption" else f"the {what} is empty")
    if len(text) > max_chars:
        raise BadInput(f"the {what} has {len(text)} characters; at most {max_chars} are allowed")
    for i, ch in enumerate(text):
        if _control(ch):
            kind = "bidirectional control" if ch in BIDI_CONTROLS else "control"
            raise BadInput(f"the {what} contains a {kind} character (U+{ord(ch):04X}) at position {i}; "
                           "use plain text on one line")
    return text


def _shown(value: Any, limit: int = 40) -> str:
    """A short, safe rendering of a client's value for an error message."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)[:limit]  # as the client wrote it: false, 3, 1.5
    return repr(str(value)[:limit])


def optional_name(value: Any, what: str) -> str | None:
    """A client's name for something (a dataset, a mode, a model): None when missing, else a string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput(f"{what} must be a string, not {_shown(value)}")
    return value


def valid_image_id(value: Any, what: str) -> str | None:
    """optional_name for an image id (a reference, a target, a result, a path in /img and /thumb): ids never
    hold a control character or a line break (extraction skips such file names), so one is a 400 saying so,
    the same on every route."""
    name = optional_name(value, what)
    if name is not None:
        bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")), None)
        if bad is not None:
            raise BadInput(f"{what} {name[:60]!r} contains a control character (U+{ord(bad):04X}); image ids "
                           "never do")
    return name


def choice(value: Any, what: str, options: Collection[str], default: str | None = None) -> str | None:
    """One of `options` (or `default` when the value is missing); BadInput naming the valid ones otherwise."""
    name = optional_name(value, what)
    if name is None:
        return default
    if name not in options:
        raise BadInput(f"unknown {what} {name[:60]!r}; valid: {', '.join(options) or 'none'}")
    return name


def parse_int(value: Any, what: str, lo: int, hi: int, default: int) -> int:
    """An integer in [lo, hi] from JSON or a query string; BadInput otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{what} must be an integer between {lo} and {hi}, not {_shown(value)}")
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        n = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise BadInput(f"{what} must be an integer between {lo} and {hi}, not {_shown(value)}") from None
    if not lo <= n <= hi:
        raise BadInput(f"{what} must be between {lo} and {hi}, not {str(n)[:40]}")
    return n


# How a query string or a form writes a boolean (JSON has true and false).
BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False}


def parse_bool(value: Any, what: str, default: bool) -> bool:
    """A boolean: JSON true / false, or "true" / "false" / "1" / "0" from a query string or a form; missing
    takes `default`; anything else (a number, "yes", a list) is BadInput."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.strip().lower()]
    raise BadInput(f"{what} must be a boolean (true or false), not {_shown(value)}")
