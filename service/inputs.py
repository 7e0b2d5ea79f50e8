"""Validation of what a client sends: captions, filters and integers, with messages that match the cause."""
from __future__ import annotations

import unicodedata
from typing import Any

from service.errors import BadInput

MAX_CAPTION_CHARS = 1000
MAX_FILTER_CHARS = 200


def validate_text(value: Any, what: str = "caption", max_chars: int = MAX_CAPTION_CHARS) -> str:
    """A stripped, non-empty, printable string of at most `max_chars` characters, or BadInput."""
    if value is None:
        raise BadInput(f"the {what} is missing")
    if not isinstance(value, str):
        raise BadInput(f"the {what} must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadInput(f"the {what} is empty: say how the wanted item differs, e.g. 'is red with longer sleeves'"
                       if what == "caption" else f"the {what} is empty")
    if len(text) > max_chars:
        raise BadInput(f"the {what} has {len(text)} characters; at most {max_chars} are allowed")
    for i, ch in enumerate(text):
        # Cc: control characters (newlines, tabs, NUL, escapes); Cs: lone surrogates that cannot be encoded.
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise BadInput(f"the {what} contains a control character (U+{ord(ch):04X}) at position {i}; "
                           "use plain text on one line")
    return text


def parse_int(value: Any, what: str, lo: int, hi: int, default: int) -> int:
    """An integer in [lo, hi] from JSON or a query string; BadInput otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadInput(f"{what} must be an integer between {lo} and {hi}")
    try:
        n = int(value) if isinstance(value, (int, str)) else int(str(value))
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be an integer between {lo} and {hi}, not {str(value)[:40]!r}") from None
    if not lo <= n <= hi:
        raise BadInput(f"{what} must be between {lo} and {hi}, not {n}")
    return n
