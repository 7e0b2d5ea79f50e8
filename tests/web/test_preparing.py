"""The "preparing" page of a first start (cir.web.preparing): while app.py extracts the catalogue and loads
the models, its address answers 503 with the extraction's progress instead of refusing connections, then
hands the address to the app. The extraction here is a fake: a tqdm bar moved by the test."""
from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request

import pytest
from tqdm import tqdm

from cir.cli import serve
from cir.web.preparing import PreparingServer, tqdm_progress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_progress_is_read_from_the_extraction_bars():
    assert tqdm_progress([]) is None
    with tqdm(total=200, disable=False, file=io.StringIO()) as bar:
        bar.update(50)
        assert tqdm_progress([bar]) == 25
        assert tqdm_progress() == 25


def test_the_address_answers_while_preparing_then_the_app_takes_it():
    port = _free_port()
    with tqdm(total=10, file=io.StringIO()) as bar, PreparingServer("127.0.0.1", port):
        bar.update(4)
        status, headers, page = _get(f"http://127.0.0.1:{port}/")
        assert status == 503 and headers["Retry-After"] == "3"
        assert "Preparing the catalogue, 40 %" in page and 'http-equiv="refresh"' in page
        assert "<script" not in page and "style" not in page   # fits any Content-Security-Policy
        status, headers, body = _get(f"http://127.0.0.1:{port}/api/search?q=x")
        assert status == 503 and json.loads(body)["error"] == "Preparing"
    with socket.socket() as s:   # the address is free again for the app
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_app_py_serves_the_page_during_a_fake_extraction(monkeypatch):
    """serve.main: connections are answered during prepare() and create_app(), then app.run gets the port."""
    port = _free_port()
    seen = {}

    def fake_prepare(settings, reextract):
        with tqdm(total=4, file=io.StringIO()) as bar:
            bar.update(3)
            seen["extracting"] = _get(f"http://127.0.0.1:{port}/")

    class FakeApp:
        def run(self, host, port, **kw):
            seen["run"] = (host, port)

    def fake_create_app(settings):
        seen["loading"] = _get(f"http://127.0.0.1:{port}/")
        return FakeApp()
    monkeypatch.setattr(serve, "prepare", fake_prepare)
    monkeypatch.setattr(serve, "create_app", fake_create_app)
    assert serve.main(["--port", str(port)]) == 0
    assert seen["extracting"][0] == 503 and "Preparing the catalogue, 75 %" in seen["extracting"][2]
    assert seen["loading"][0] == 503 and "Loading the models" in seen["loading"][2]
    assert seen["run"] == ("127.0.0.1", port)
    with pytest.raises(urllib.error.URLError):   # the preparing server is gone (the fake app never listened)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_taken_port_is_left_to_the_app_to_report():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with PreparingServer("127.0.0.1", port) as p:
            assert p._server is None   # nothing listens on its behalf; app.run reports the taken port
