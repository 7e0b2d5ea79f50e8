"""Shared pieces of the server benchmarks (bench_load.py, bench_slow_clients.py): start gunicorn, query it.

`Server` starts `python3 -m gunicorn` on a free local port in its own process group, with the repository's
gunicorn.conf.py (or another config, or none: the plain command line as given) and waits until every worker
answers. `run_clients` runs closed-loop clients that send composed POST /api/search queries (each sends its
next query when the previous answer arrives); `summary` turns their latencies into req/s and percentiles.
An error is any non-200 answer, a failed connection or an answer slower than the client timeout.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "gunicorn.conf.py"
COLOURS = ["red", "navy blue", "black", "white", "green", "yellow", "pink", "grey", "brown", "purple", "beige",
           "maroon", "olive", "orange", "teal", "silver", "gold", "cream", "lavender", "blue"]
SHAPES = ["is {c} instead", "make it {c} and casual", "the same but in {c}", "{c} with longer sleeves",
          "a {c} formal one", "is {c} and for women", "{c}, more sporty", "do you have it in {c}?",
          "{c} please, for men", "similar but {c} and cheaper looking", "swap to {c}", "less plain, {c}"]
log = logging.getLogger("serving")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_server_args(p) -> None:
    """The flags that say how the server is started (shared by both benchmarks)."""
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="gunicorn config file (default: the repository's gunicorn.conf.py); 'none': no config "
                        "file at all, only --gunicorn-args (how the old README line ran)")
    p.add_argument("--gunicorn-args", default="",
                   help="extra gunicorn command-line flags, after the config (they override it), e.g. "
                        "'-w 2 --timeout 120' for the old sync line or '-k gthread --threads 8'")
    p.add_argument("--workers", type=int, default=None,
                   help="gunicorn worker processes (default: the config's; sets GUNICORN_WORKERS)")
    p.add_argument("--dataset", default="catalog-all", help="dataset the queries search")
    p.add_argument("--features", default=str(REPO / "features"), help="features root the server reads")


@dataclass
class Server:
    """gunicorn serving the demo on 127.0.0.1:<free port>; use as a context manager (stops the whole group)."""
    config: str = str(DEFAULT_CONFIG)
    extra_args: Sequence[str] = ()
    workers: int | None = None
    env: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    empty_config: Path | None = None
    log_level: str = "warning"
    # When a list: gunicorn's log (its stderr) is read into it as (time.time(), line) instead of passing through,
    # so that a benchmark can time what the server reports (bench_signals.py: workers booting, ready, exiting).
    log: list | None = None

    def command(self, config_file: str) -> list[str]:
        # The bind goes last among the flags so that it beats the config's and any given in extra_args.
        return [sys.executable, "-m", "gunicorn", "-c", config_file, *self.extra_args,
                "-b", f"127.0.0.1:{self.port}", "--log-level", self.log_level, "app:create_app()"]

    @classmethod
    def from_args(cls, args, **kw) -> "Server":
        """The server add_server_args's flags describe, serving args.features with args.dataset as default."""
        env = {"CIR_FEATURES": args.features, "CIR_DEFAULT_DATASET": args.dataset}
        return cls(args.config, shlex.split(args.gunicorn_args), args.workers, env, **kw)

    def __enter__(self) -> "Server":
        # gunicorn reads ./gunicorn.conf.py when no -c is given, so "no config" needs an explicit empty one.
        config_file = self.config
        if self.config == "none":
            fd, name = tempfile.mkstemp(suffix=".py", prefix="gunicorn-none-")
            os.close(fd)
            self.empty_config = Path(name)
            config_file = name
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        if self.workers is not None:
            env["GUNICORN_WORKERS"] = str(self.workers)
        cmd = self.command(config_file)
        log.info("starting %s", " ".join(cmd))
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                     stderr=subprocess.PIPE if self.log is not None else None, text=True)
        if self.log is not None:
            threading.Thread(target=self._read_log, daemon=True).start()
        try:
            self.wait_healthy(timeout=300)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.time() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append((time.time(), line.rstrip("\n")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.empty_config is not None:
            self.empty_config.unlink(missing_ok=True)

    def wait_healthy(self, timeout: float) -> None:
        """Wait for /api/health, then until every worker has loaded (health answers as soon as one has)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.proc.returncode}; is the catalogue index extracted? "
                                 "(python3 app.py --prepare-only)")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/api/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"the server did not become healthy within {timeout} s")
        # Workers load in parallel, a few seconds each; this is the old fixed wait, which held for 2 workers.
        time.sleep(2 + 3 * (self.workers or 2))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's processes (Linux /proc; 0 elsewhere).

        Unlike req/s, CPU time per query hardly depends on what else runs on the machine, so it compares
        worker setups fairly on a busy one.
        """
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if int(fields[2]) == self.proc.pid:  # process group: gunicorn's master and its workers
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def get_json(self, path: str, timeout: float = 10) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", path)
        return json.loads(c.getresponse().read())

    def headers(self, path: str = "/api/health") -> dict[str, str]:
        """The response headers of one GET (to check what the server reveals about itself)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", path)
        resp = c.getresponse()
        resp.read()
        return dict(resp.getheaders())

    def references(self, dataset: str, n: int = 100) -> list[str]:
        body = self.get_json(f"/api/datasets/{dataset}/random?n={n}&seed=0")
        if "images" not in body:  # e.g. the dataset is not extracted: say so, not a KeyError
            raise SystemExit(f"dataset {dataset!r}: {body.get('message', body)} (extract it first: "
                             "python3 app.py --prepare-only, or pass --dataset)")
        return [im["id"] for im in body["images"]]


def caption_for(rng: random.Random, captions: str, seed: int, i: int) -> str:
    """unique: new to the server's text cache every time; repeated: half from a pool of 5, the rest of 240."""
    colour = rng.choice(COLOURS)  # drawn before the shape: the same query stream as before this module
    caption = rng.choice(SHAPES).format(c=colour)
    if captions == "unique":
        caption += f" #{seed}-{i}"  # a suffix makes it new to the server's cache; the encoder still runs
    elif rng.random() < 0.5:
        caption = SHAPES[0].format(c=COLOURS[rng.randrange(5)])
    return caption


def client(port: int, dataset: str, refs: list[str], captions: str, seed: int, stop: float,
           out: list, errors: list, timeout: float = 30) -> None:
    """One closed-loop client until `stop` (time.time()): appends (end time, ms) per 200 answer, else an error."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    i = 0
    while time.time() < stop:
        body = json.dumps({"mode": "composed", "dataset": dataset, "reference": rng.choice(refs),
                           "caption": caption_for(rng, captions, seed, i), "k": 24})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/search", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                out.append((time.time(), (time.perf_counter() - t0) * 1000))
            else:
                errors.append(f"status {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{type(e).__name__}: {e} after {time.perf_counter() - t0:.1f} s")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        i += 1
    conn.close()


def run_clients(port: int, dataset: str, refs: list[str], n: int, seconds: float, warmup: float = 0,
                captions: str = "unique", timeout: float = 30, first_seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n clients for warmup + seconds; returns the latencies (ms) of answers after the warm-up, and the errors.

    Client i draws its queries with seed first_seed + i: runs against the same server need seeds of their own,
    else "unique" captions repeat ones an earlier run sent, and the server's text cache answers them.
    """
    lat: list = []
    errors: list = []
    t0 = time.time()
    stop = t0 + warmup + seconds
    threads = [threading.Thread(target=client, args=(port, dataset, refs, captions, s, stop, lat, errors, timeout))
               for s in range(first_seed, first_seed + n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.array([d for ts, d in lat if ts >= t0 + warmup]), errors


def summary(lat: np.ndarray, errors: list[str], seconds: float) -> dict:
    """Queries, errors, req/s and latency percentiles (None when nothing was answered)."""
    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 1) if len(lat) else None
    return {"queries": int(len(lat)), "errors": len(errors), "throughput_qps": round(len(lat) / seconds, 1),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": round(float(lat.max()), 1) if len(lat) else None, "first_errors": errors[:5]}


def machine() -> dict:
    """What the numbers were measured on: cores and the load average (other work on the machine shows there)."""
    return {"cores": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def quoted_argv() -> str:
    """This benchmark's own command line, as a user would type it (for the README table's caption), with the
    GUNICORN_* variables gunicorn.conf.py reads when they are set."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("GUNICORN_")]
    argv = ["python3", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]
    return " ".join(env + [shlex.quote(a) for a in argv])
