"""query.py's new arguments, without an index: --filter parsing, the session file, argument errors."""
from __future__ import annotations

import json

import pytest

from cir.cli import query


def test_filters_parse_and_errors():
    assert query._filters(["gender=Women", "baseColour=Red", "baseColour= Maroon "]) == {
        "gender": ["Women"], "baseColour": ["Red", "Maroon"]}
    for bad in ("gender", "=Women", "gender="):
        with pytest.raises(ValueError, match="ATTR=VALUE"):
            query._filters([bad])


def test_session_file(tmp_path):
    path = tmp_path / "s.json"
    assert query._read_session(path) == []
    path.write_text(json.dumps([{"reference": "1", "caption": "in red"}]))
    assert query._read_session(path)[0]["caption"] == "in red"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a session file"):
        query._read_session(path)


@pytest.mark.parametrize("argv, message", [
    ([], "give one of"),
    (["a", "--image", "x.jpg"], "give one of"),
    (["--not", "3", "red"], "--not marks a result"),
])
def test_argument_errors(argv, message, capsys, tmp_path):
    if "--image" in argv:
        (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
        argv = [a if a != "x.jpg" else str(tmp_path / "x.jpg") for a in argv]
    with pytest.raises(SystemExit) as e:
        query.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
