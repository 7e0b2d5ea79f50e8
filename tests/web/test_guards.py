"""cir.web.guards against the second round of hostile traffic (issue 20): the JSON depth check on a body built
to make a backtracking scanner spin, bodies the server cannot read (malformed chunked framing) on every POST
route, and answers that would carry NaN. Each case is a reproduced attack; none may answer 500 or hang.

The depth check's speed is a benchmark line in docs/serving.md, not an assertion here: the tests check what
it answers."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import pytest
from flask import Flask
from gunicorn.http.errors import InvalidChunkSize, LimitRequestHeaders

from cir.paths import REPO_DIR
from cir.serving.errors import BadInput
from cir.serving.settings import Settings
from cir.web.app import create_app
from cir.web.assets import content_security_policy
from cir.web.guards import MAX_JSON_DEPTH, install_guards, parse_json_object, too_deep

# issue 20: 21 brackets, then an unterminated string of 32,000 escaped quotes (64,022 bytes, under the 64 KB cap)
ESCAPED_QUOTES = "[" * 21 + '"' + '\\"' * 32000


# ----------------------------------------------------------------------------------------------- depth

def test_the_backtracking_payload_is_refused_by_depth():
    assert len(ESCAPED_QUOTES) == 64_022
    assert too_deep(ESCAPED_QUOTES, MAX_JSON_DEPTH)
    with pytest.raises(BadInput, match="nested too deeply"):
        parse_json_object(ESCAPED_QUOTES.encode())


def test_the_scan_reads_strings_and_escapes():
    # the same escaped quotes, under the limit before the string and brackets after it (inside it): the
    # whole text is scanned, and nothing inside the unterminated string counts
    assert not too_deep("[" * 15 + '"' + '\\"' * 32000 + "[" * 10, MAX_JSON_DEPTH)
    assert not too_deep('{"a": "' + "[" * 100 + '"}', 20)                   # brackets in a string
    assert too_deep('["\\\\"' + "[" * 30, 20)                               # \\ ends in a backslash: the
    assert not too_deep('["\\\\\\"' + "[" * 30, 20)                         # quote closes; \\\" does not
    assert too_deep("[" * 21 + "]" * 21, 20) and not too_deep("[" * 20 + "]" * 20, 20)
    assert too_deep("[{}]" * 50, 1) and not too_deep("[{}]" * 50, 2)   # depth, not the count of brackets
    assert not too_deep("[" * 15 + '"' + '\\"' * 100 + "\\" + "[" * 10, 20)   # ends in a lone backslash
    assert too_deep("[" * 15 + '"a", ' * 1000 + "[" * 6, 20)                # many strings between brackets
    assert not too_deep('[' * 15 + '"' * 999 + "[" * 10, 20)                # odd quotes: the last runs to the end


# ----------------------------------------------------------------------------------------------- unreadable bodies

class BrokenStream(io.BytesIO):
    """A wsgi.input that fails as gunicorn's does on malformed chunked framing."""

    def __init__(self, error: Exception):
        super().__init__(b"")
        self.error = error

    def read(self, *args):
        raise self.error

    readline = readinto = read


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    return create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads"), warm_up=False))


ERRORS = [InvalidChunkSize(b"zz"), LimitRequestHeaders("limit request headers fields"), OSError("reset")]


@pytest.mark.parametrize("route", ["/api/search", "/api/explain", "/api/upload", "/api/health"])
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_unreadable_chunked_body_is_400_on_every_post_route(app, route, error):
    r = app.test_client().post(route, input_stream=BrokenStream(error), content_type="application/json",
                               headers={"Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
    body = r.get_json()
    assert r.status_code == 400 and body["status"] == 400, (route, r.status_code, body)
    assert "request body could not be read" in body["message"] or "could not understand" in body["message"]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_unreadable_body_with_a_length_is_400(app, error):
    for route, kind in [("/api/search", "application/json"), ("/api/upload", "image/jpeg"),
                        ("/api/search", "application/x-www-form-urlencoded")]:
        r = app.test_client().post(route, input_stream=BrokenStream(error), content_type=kind,
                                   headers={"Content-Length": "100"})
        assert r.status_code == 400 and r.get_json()["status"] == 400, (route, kind, r.get_json())


def _bare_app() -> Flask:
    app = Flask("bare")
    app.add_url_rule("/nan", "nan", lambda: {"scores": [float("nan"), float("inf")]}, methods=["POST"])
    install_guards(app, max_upload_bytes=2**20, upload_max_age_s=60, csp=content_security_policy("local"))
    return app


def test_no_answer_carries_nan():
    r = _bare_app().test_client().post("/nan")
    assert r.status_code == 500 and b"NaN" not in r.data and b"Infinity" not in r.data


# ----------------------------------------------------------------------------------------------- a real gunicorn

GUARDED_APP = '''
from flask import Flask, request
from cir.web.assets import content_security_policy
from cir.web.guards import install_guards

app = Flask("guarded")
app.post("/echo")(lambda: {"n": len(request.get_data())})
install_guards(app, max_upload_bytes=2**20, upload_max_age_s=60, csp=content_security_policy("local"))
'''

HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
MALFORMED = {
    "bad chunk size": HEAD + b"zz\r\n{}\r\n0\r\n\r\n",
    "100 KB chunk extension": HEAD + b"2;" + b"x" * 100_000 + b"\r\n{}\r\n0\r\n\r\n",
    "20,000 trailer lines": HEAD + b"2\r\n{}\r\n0\r\n" + b"X-T: 1\r\n" * 20_000 + b"\r\n",
}


def _ask(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading all of it
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except ConnectionResetError:
            pass
        return data


@pytest.mark.slow
def test_gunicorn_answers_malformed_chunked_bodies_with_400(tmp_path):
    (tmp_path / "guarded_app.py").write_text(GUARDED_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}, "PYTHONPATH": str(REPO_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(REPO_DIR / "gunicorn.conf.py"), "-w", "1",
                             "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "guarded_app:app"], cwd=REPO_DIR,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _ask_ok(port):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        for what, raw in MALFORMED.items():
            answer = _ask(port, raw)
            assert answer.startswith(b"HTTP/1.1 400"), (what, answer[:300])
        assert _ask_ok(port)   # and it goes on serving
    finally:
        proc.terminate()
        proc.wait(30)


def _ask_ok(port: int) -> bool:
    try:
        answer = _ask(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200") and b'"n":2' in answer
