"""The shopper's session in the API: `history` (earlier turns) and `filters` (facet filters) of /api/search,
validated strictly into what the ranking takes (cir.index.session.Turn, a facets filter); the ranking itself
is decided in cir.index.session, the filters applied inside cir.index.search.

    {"history": [{"reference": "15970", "caption": "make it for women", "feedback": {"not": ["1164"]}}, ...],
     "filters": {"gender": ["Women"], "baseColour": ["Red", "Maroon"]}}

Both optional: without them a search is answered exactly as before. Every mistake is a 400 naming the field
(history[2].feedback.not[0]: image '9' is not in dataset 'catalog').
"""
from __future__ import annotations

import json
from typing import Any

from cir.index import FilterError
from cir.index.session import MAX_TURNS, Turn
from cir.serving.datasets import Dataset
from cir.serving.errors import BadInput, NotFound
from cir.serving.inputs import valid_image_id, validate_text
from cir.serving.uploads import UploadStore

TURN_KEYS = ("reference", "upload", "caption", "feedback")
FEEDBACK_KEYS = ("not", "seen")
MAX_FEEDBACK_IDS = 200       # ids in one turn's feedback list


def _json_value(value: Any, what: str) -> Any:
    """A JSON body's value as it is; a query string's or form's text parsed as JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise BadInput(f"{what} must be JSON (in a query string or a form, its JSON text)") from None
    return value


def parse_filters(value: Any, ds: Dataset) -> dict[str, tuple[str, ...]] | None:
    """{attribute: [values]} from the dataset's vocabulary (AND across attributes, OR within one); None when
    missing or empty. Unknown attributes or values answer 400 naming them."""
    if value is None or value == "":
        return None
    value = _json_value(value, "filters")
    if not ds.facets:
        raise BadInput(f"dataset {ds.name!r} has no attributes to filter on")
    try:
        return ds.facets.parse(value) or None
    except FilterError as e:
        raise BadInput(str(e)) from None


def parse_history(value: Any, ds: Dataset, uploads: UploadStore) -> list[Turn]:
    """The earlier turns, oldest first (at most MAX_TURNS); [] when missing."""
    if value is None or value == "":
        return []
    value = _json_value(value, "history")
    if not isinstance(value, list):
        raise BadInput("history must be a list of earlier turns, oldest first: [{reference or upload, caption, "
                       "feedback}, ...]")
    if len(value) > MAX_TURNS:
        raise BadInput(f"history has {len(value)} turns; at most {MAX_TURNS} are kept (send the latest)")
    return [_turn(f"history[{i}]", t, ds, uploads) for i, t in enumerate(value)]


def _row(name: Any, what: str, ds: Dataset) -> int:
    """The index row of an image id of a history turn; a 400 (not a 404: the request is malformed)."""
    name = valid_image_id(name, what)
    if name is None:
        raise BadInput(f"{what} must be an image id")
    try:
        return ds.row(name)
    except NotFound as e:
        raise BadInput(f"{what}: {e}") from None


def _turn(where: str, turn: Any, ds: Dataset, uploads: UploadStore) -> Turn:
    if not isinstance(turn, dict):
        raise BadInput(f"{where} must be an object {{reference or upload, caption, feedback}}")
    extra = [str(k)[:40] for k in turn if k not in TURN_KEYS]
    if extra:
        raise BadInput(f"{where} has unknown field(s) {', '.join(map(repr, extra))}; valid: {', '.join(TURN_KEYS)}")
    if turn.get("reference") is not None and turn.get("upload") is not None:
        raise BadInput(f"{where} gives both a reference and an upload; give one")
    row = None if turn.get("reference") is None else _row(turn["reference"], f"{where}.reference", ds)
    if turn.get("upload") is not None:
        try:
            uploads.path(valid_image_id(turn["upload"], f"{where}.upload"))
        except NotFound as e:
            raise BadInput(f"{where}.upload: {e}") from None
    caption = None if turn.get("caption") is None else validate_text(turn["caption"], f"{where}.caption")
    feedback = turn.get("feedback") or {}
    if not isinstance(feedback, dict):
        raise BadInput(f"{where}.feedback must be an object like {{\"not\": [ids], \"seen\": [ids]}}")
    bad = [str(k)[:40] for k in feedback if k not in FEEDBACK_KEYS]
    if bad:
        raise BadInput(f"{where}.feedback has unknown field(s) {', '.join(map(repr, bad))}; valid: not, seen")
    lists = {}
    for key in FEEDBACK_KEYS:
        ids = feedback.get(key) or []
        if not isinstance(ids, list) or len(ids) > MAX_FEEDBACK_IDS:
            raise BadInput(f"{where}.feedback.{key} must be a list of at most {MAX_FEEDBACK_IDS} image ids")
        lists[key] = tuple(_row(x, f"{where}.feedback.{key}[{j}]", ds) for j, x in enumerate(ids))
    return Turn(row, caption, lists["not"], lists["seen"])
