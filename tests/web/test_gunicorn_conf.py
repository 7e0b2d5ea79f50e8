"""gunicorn.conf.py: its settings load and validate through gunicorn's own Config, and a server started with it
(on a trivial WSGI app, one worker) keeps answering while clients hold partial requests, and hides its banner.

The demo's own numbers under slow clients and load are benchmarks (benchmarks/bench_slow_clients.py,
bench_load.py), not tests; nothing here asserts a duration.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from types import ModuleType, SimpleNamespace

import gunicorn
import gunicorn.http.wsgi
import pytest
from gunicorn.app.base import Application
from gunicorn.config import Config
from gunicorn.workers.ggevent import GeventWorker

from cir.paths import REPO_DIR

REPO = REPO_DIR
CONF = REPO / "gunicorn.conf.py"
TRIVIAL_APP = '''
def app(environ, start_response):
    body = environ.get("SERVER_SOFTWARE", "").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


class _Loader(Application):
    """Just enough of a gunicorn Application to run its config-file loader (no argv parsing, no app)."""

    def __init__(self):
        self.cfg = Config()

    def load(self):
        raise AssertionError("not used")


@pytest.fixture
def load_conf(monkeypatch):
    """Load gunicorn.conf.py as gunicorn does; undo the banner globals it replaces in this process."""
    for mod, name in [(gunicorn, "SERVER"), (gunicorn, "SERVER_SOFTWARE"), (gunicorn.http.wsgi, "SERVER"),
                      (gunicorn.http.wsgi, "SERVER_SOFTWARE")]:
        monkeypatch.setattr(mod, name, getattr(mod, name))
    monkeypatch.delitem(sys.modules, "__config__", raising=False)

    def load(**env: str) -> tuple[Config, dict]:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        loader = _Loader()
        namespace = loader.load_config_from_file(str(CONF))
        return loader.cfg, namespace
    return load


def test_every_setting_is_known_and_valid(load_conf):
    cfg, ns = load_conf()
    # gunicorn silently ignores names it does not know, so a typo would just not apply: catch it here.
    ours = {k for k, v in ns.items() if k.islower() and not k.startswith("_") and not isinstance(v, ModuleType)}
    unknown = sorted(k for k in ours if k not in cfg.settings)
    assert not unknown, f"not gunicorn settings: {unknown}"
    assert cfg.bind == ["0.0.0.0:8000"] and cfg.workers == 2 and cfg.keepalive > 0
    assert issubclass(cfg.worker_class, GeventWorker)
    assert cfg.threads == 1 and cfg.control_socket_disable and not cfg.preload_app
    assert cfg.limit_request_line == 8190 and cfg.limit_request_fields == 50
    assert cfg.pre_request.__module__ == "__config__"  # our hook, not gunicorn's no-op default


def test_environment_overrides(load_conf):
    cfg, _ = load_conf(GUNICORN_BIND="127.0.0.1:9000", GUNICORN_WORKERS="3", GUNICORN_WORKER_CLASS="gthread")
    assert cfg.bind == ["127.0.0.1:9000"] and cfg.workers == 3
    assert cfg.worker_class.__name__ == "ThreadWorker" and cfg.threads == 8
    cfg, _ = load_conf(GUNICORN_WORKER_CLASS="sync")
    assert cfg.worker_class.__name__ == "SyncWorker"  # threads stays 1, else gunicorn would switch to gthread


def test_bad_environment_value_says_which(load_conf):
    # SystemExit passes gunicorn's loader; Python prints its message as the process ends.
    with pytest.raises(SystemExit, match="GUNICORN_WORKERS='two' is not a whole number"):
        load_conf(GUNICORN_WORKERS="two")


def test_no_version_banner(load_conf):
    load_conf()
    req = SimpleNamespace(version=(1, 1), should_close=lambda: False, method="GET")
    resp = gunicorn.http.wsgi.Response(req, None, Config())
    resp.status, resp.status_code, resp.response_length = "200 OK", 200, 0
    server = [h for h in resp.default_headers() if h.startswith("Server:")]
    assert server == ["Server: cir-demo\r\n"]
    assert "gunicorn" not in gunicorn.http.wsgi.SERVER_SOFTWARE and gunicorn.__version__ not in server[0]


def test_pre_request_bounds_io_and_closes(load_conf):
    _, ns = load_conf()
    a, b = socket.socketpair()
    with a, b:
        req = SimpleNamespace(unreader=SimpleNamespace(sock=a), must_close=False)
        ns["pre_request"](None, req)
        assert a.gettimeout() == 15 and req.must_close
    _, ns = load_conf(GUNICORN_REUSE_CONNECTIONS="1", GUNICORN_IO_TIMEOUT="40")
    a, b = socket.socketpair()
    with a, b:
        req = SimpleNamespace(unreader=SimpleNamespace(sock=a), must_close=False)
        ns["pre_request"](None, req)
        assert a.gettimeout() == 40 and not req.must_close


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, timeout: float) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", "/")
    resp = c.getresponse()
    resp.body = resp.read()
    return resp


@contextlib.contextmanager
def _trivial_server(tmp_path, **env_over: str):
    """gunicorn.conf.py with one worker serving TRIVIAL_APP on a free port; yields the port."""
    (tmp_path / "trivial_app.py").write_text(TRIVIAL_APP)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}, **env_over}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(CONF), "-w", "1", "-b", f"127.0.0.1:{port}",
                             "--chdir", str(tmp_path), "trivial_app:app"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(port, 2)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _half_header(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    s.sendall(b"GET / HTTP/1.1\r\nHost: loc")
    return s


@pytest.mark.slow
def test_server_answers_while_partial_requests_are_held(tmp_path):
    """One gevent worker, 8 connections holding half a header: a request is still answered (the old sync line
    answered nothing until they closed), without a version banner, and the server drops the idle ones."""
    held = []
    with _trivial_server(tmp_path) as port:
        try:
            held = [_half_header(port) for _ in range(8)]
            resp = _get(port, 20)
            assert resp.status == 200 and resp.body == b"cir-demo"  # SERVER_SOFTWARE as the app sees it
            assert resp.getheader("Server") == "cir-demo" and resp.getheader("Connection") == "close"
            # The server gives up on each half-sent request (after `keepalive` seconds): recv sees the close.
            for s in held:
                assert s.recv(1024) == b""
        finally:
            for s in held:
                s.close()


@pytest.mark.slow
def test_one_address_cannot_take_every_connection(tmp_path):
    """With a limit of 4 per address, a 5th connection from the flooding address is answered 503 and closed
    at once, another address is served meanwhile, and the flooder is served again as soon as it lets go."""
    held = []
    with _trivial_server(tmp_path, GUNICORN_PER_CLIENT_CONNECTIONS="4") as port:
        try:
            held = [_half_header(port, "127.0.0.2") for _ in range(4)]
            time.sleep(0.5)   # the worker has accepted them
            refused = _half_header(port, "127.0.0.2")
            answer = refused.recv(1024)
            assert answer.startswith(b"HTTP/1.1 503") and b"too many open connections" in answer
            refused.close()
            assert _get(port, 10).status == 200     # 127.0.0.1 is another client
        finally:
            for s in held:
                s.close()
        time.sleep(0.5)
        again = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        again.sendall(b"GET / HTTP/1.1\r\nHost: loc\r\n\r\n")
        assert again.recv(1024).startswith(b"HTTP/1.1 200")
        again.close()
