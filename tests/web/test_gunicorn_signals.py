"""gunicorn.conf.py under signals, on a trivial WSGI app that stands for the demo (no models): a reload (SIGHUP)
keeps answering while the new workers load, and a stop (SIGTERM) under a stream of requests resets none. And
their parts without a server: which workers the master retires, the listener's queue and its drop filter.

The demo's own numbers (its ~10 s model load, 8 clients, SIGKILL of a worker) are a benchmark:
benchmarks/bench_signals.py.
"""
from __future__ import annotations

import http.client
import logging
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gunicorn
import gunicorn.http.wsgi
import pytest

from cir.paths import REPO_DIR

CONF = REPO_DIR / "gunicorn.conf.py"
# Loading takes LOAD_S (the demo's models: ~10 s); each request then holds its worker's CPU for BUSY_S
# without yielding (a query does the same), so connections queue on the listener meanwhile.
APP = '''
import os, time
LOAD_S, BUSY_S = {load_s}, {busy_s}
time.sleep(LOAD_S)

def app(environ, start_response):
    end = time.perf_counter() + BUSY_S
    while time.perf_counter() < end:
        pass
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def conf(monkeypatch) -> dict:
    """gunicorn.conf.py's namespace; the banner globals it replaces in this process are restored after."""
    for mod, name in [(gunicorn, "SERVER"), (gunicorn, "SERVER_SOFTWARE"), (gunicorn.http.wsgi, "SERVER"),
                      (gunicorn.http.wsgi, "SERVER_SOFTWARE")]:
        monkeypatch.setattr(mod, name, getattr(mod, name))
    return runpy.run_path(str(CONF))


def _arbiter(conf: dict, num_workers: int, ready: dict[int, bool]) -> tuple[object, list[int]]:
    """The config's Arbiter without a server: workers pid -> ready (age = pid), and the pids it stops."""
    arbiter = conf["Arbiter"].__new__(conf["Arbiter"])
    arbiter._num_workers, arbiter.log = num_workers, logging.getLogger("test")
    arbiter.WORKERS = {pid: SimpleNamespace(pid=pid, age=pid, ready_flag=bytearray([r])) for pid, r in ready.items()}
    stopped: list[int] = []
    arbiter.kill_worker = lambda pid, sig: stopped.append(pid) if sig == signal.SIGTERM else None
    return arbiter, stopped


def test_old_workers_go_one_for_one_as_new_ones_are_ready(conf):
    arbiter, stopped = _arbiter(conf, 2, {1: True, 2: True, 3: False, 4: False})  # just after a reload
    arbiter._retire_replaced()
    assert stopped == []                        # the new ones are loading: the old ones serve
    arbiter.WORKERS[3].ready_flag[0] = 1
    arbiter._retire_replaced()
    arbiter._retire_replaced()
    assert stopped == [1]                       # one for one, oldest first, and each stopped once
    arbiter.WORKERS[4].ready_flag[0] = 1
    arbiter._retire_replaced()
    assert stopped == [1, 2]
    # Two reloads in a row: the middle generation, still loading, goes; the old one serves on.
    arbiter, stopped = _arbiter(conf, 2, {1: True, 2: True, 3: False, 4: False, 5: False, 6: False})
    arbiter._retire_replaced()
    assert stopped == [3, 4]
    # Fewer workers wanted (SIGTTOU): the oldest goes, as with gunicorn.
    arbiter, stopped = _arbiter(conf, 1, {1: True, 2: True})
    arbiter._retire_replaced()
    assert stopped == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO and socket filters are Linux's")
def test_a_dropping_listener_keeps_its_queue(conf):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        queued = [socket.create_connection(listener.getsockname(), timeout=2) for _ in range(2)]
        assert conf["_queued"](listener) == 2 and not conf["_dropping"](listener)
        conf["_drop_new_connections"](listener, logging.getLogger("test"))
        assert conf["_dropping"](listener)
        with pytest.raises(TimeoutError):  # its SYN goes unanswered
            socket.create_connection(listener.getsockname(), timeout=0.3)
        for c in queued:  # the queued connections are intact: accepted, they carry data both ways
            c.sendall(b"ping")
            server_side, _ = listener.accept()
            with server_side:
                assert server_side.recv(4) == b"ping"
                server_side.sendall(b"pong")
            assert c.recv(4) == b"pong"
            c.close()
        assert conf["_queued"](listener) == 0


@dataclass
class _Gunicorn:
    """gunicorn with the repository's config serving APP from `folder`."""
    folder: Path
    workers: int
    load_s: float
    busy_s: float
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    def __enter__(self) -> "_Gunicorn":
        (self.folder / "signals_app.py").write_text(APP.format(load_s=self.load_s, busy_s=self.busy_s))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
        self.log = open(self.folder / "gunicorn.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "-w", str(self.workers), "-b",
             f"127.0.0.1:{self.port}", "--log-level", "info", "--chdir", str(self.folder), "signals_app:app"],
            cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.server_log().count("Worker ready") < self.workers:
            assert self.proc.poll() is None, self.server_log()
            assert time.monotonic() < deadline, f"gunicorn did not start:\n{self.server_log()}"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def server_log(self) -> str:
        return (self.folder / "gunicorn.log").read_text()

    def get(self) -> tuple[float, str]:
        """(when the answer arrived, "pid N") or (when it failed, the failure's kind)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", "/")
            resp = c.getresponse()
            body = resp.read().decode()
            return time.monotonic(), f"pid {body}" if resp.status == 200 else f"status {resp.status}"
        except ConnectionRefusedError:
            return time.monotonic(), "refused"
        except (OSError, http.client.HTTPException) as e:
            return time.monotonic(), type(e).__name__
        finally:
            c.close()


@pytest.mark.slow
def test_reload_keeps_serving_while_the_new_workers_load(tmp_path):
    """gunicorn stops the old workers as soon as it has started the new ones: nothing answered while those
    loaded. Here the old worker answers until the new one is ready, then goes."""
    with _Gunicorn(tmp_path, workers=1, load_s=3.0, busy_s=0.0) as server:
        _, first = server.get()
        assert first.startswith("pid ")
        t_hup = time.monotonic()
        os.kill(server.proc.pid, signal.SIGHUP)
        answers = []
        while time.monotonic() - t_hup < 30 and not (answers and answers[-1][1] != first and
                                                      answers[-1][1].startswith("pid ")):
            answers.append(server.get())
            time.sleep(0.05)
        assert all(a.startswith("pid ") for _, a in answers), answers
        ends = [t_hup] + [t for t, _ in answers]
        assert max(b - a for a, b in zip(ends, ends[1:])) < 1.5, "a gap without answers during the reload"
        # The old worker still answered after the new one had been loading for most of its LOAD_S.
        assert max(t for t, a in answers if a == first) - t_hup > 2.5
        deadline = time.monotonic() + 20  # the master retires it within a second or so; it then exits
        while f"Worker exiting (pid: {first[4:]})" not in server.server_log():
            assert time.monotonic() < deadline, "the old worker was not stopped"
            time.sleep(0.1)
        assert f"Retiring worker (pid: {first[4:]})" in server.server_log()


def _clients(server: _Gunicorn, n: int, stop: threading.Event, out: list) -> list[threading.Thread]:
    """n closed-loop clients, one connection per request, until `stop`; a refused one retries after 0.1 s."""
    def run() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            t1, outcome = server.get()
            out.append((t0, t1, outcome))
            if outcome == "refused":
                stop.wait(0.1)
    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_stop_resets_no_connection(tmp_path):
    """SIGTERM while 6 clients keep sending: every request is answered or, once nothing listens, refused;
    none is reset (gunicorn's workers closed the listener with connections still queued on it)."""
    with _Gunicorn(tmp_path, workers=2, load_s=0.0, busy_s=0.005) as server:
        stop, records = threading.Event(), []
        threads = _clients(server, 6, stop, records)
        time.sleep(1.5)
        t_term = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(20) == 0
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(15)
        outcomes = [o for _, _, o in records]
        failed = [o for o in outcomes if not (o.startswith("pid ") or o == "refused")]
        assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {sorted(set(failed))}"
        in_flight = [o for t0, t1, o in records if t0 < t_term <= t1]
        assert in_flight and all(o.startswith("pid ") for o in in_flight)
        assert sum(o.startswith("pid ") for o in outcomes) > 50 and "refused" in outcomes
