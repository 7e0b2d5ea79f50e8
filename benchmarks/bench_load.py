"""The demo under load: gunicorn serving the catalogue, N concurrent clients sending composed queries.

    python3 benchmarks/bench_load.py                       # 16 clients, 60 s, 2 gunicorn workers
    python3 benchmarks/bench_load.py --clients 16 --seconds 60 --captions repeated

Starts `gunicorn -w W 'app:create_app()'` on a free local port (the catalogue index must exist:
`python3 app.py --prepare-only`), waits for /api/health, then runs closed-loop clients (each sends its next
query when the previous answer arrives) for the given time. Every query is POST /api/search in composed
(Combiner) mode with a random catalogue reference and a caption:
  unique     every caption is new to the server (the text encoder runs every time; the worst case)
  repeated   captions drawn from a pool of 60 (the text LRU cache answers most of them)
Clients run in this process on the same machine, so they take some of its CPU. Prints a markdown table,
the command line, and last one JSON line. An error is any non-200 answer or a failed connection.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "navy blue", "black", "white", "green", "yellow", "pink", "grey", "brown", "purple", "beige",
           "maroon", "olive", "orange", "teal", "silver", "gold", "cream", "lavender", "blue"]
SHAPES = ["is {c} instead", "make it {c} and casual", "the same but in {c}", "{c} with longer sleeves",
          "a {c} formal one", "is {c} and for women", "{c}, more sporty", "do you have it in {c}?",
          "{c} please, for men", "similar but {c} and cheaper looking", "swap to {c}", "less plain, {c}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}; is the catalogue index extracted? "
                             "(python3 app.py --prepare-only)")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not become healthy within {timeout} s")


def references(port: int, dataset: str, n: int = 100) -> list[str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", f"/api/datasets/{dataset}/random?n={n}&seed=0")
    body = json.loads(c.getresponse().read())
    return [im["id"] for im in body["images"]]


def client(port: int, dataset: str, refs: list[str], captions: str, seed: int, stop: float,
           out: list, errors: list) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.time() < stop:
        c = rng.choice(COLOURS)
        caption = rng.choice(SHAPES).format(c=c)
        if captions == "unique":
            caption += f" #{seed}-{i}"  # a suffix makes it new to the server's cache; the encoder still runs
        elif rng.random() < 0.5:
            caption = SHAPES[0].format(c=COLOURS[rng.randrange(5)])
        body = json.dumps({"mode": "composed", "dataset": dataset, "reference": rng.choice(refs),
                           "caption": caption, "k": 24})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/search", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException) as e:
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            errors.append(repr(e))
        dt = (time.perf_counter() - t0) * 1000
        if ok:
            out.append((time.time(), dt))
        elif not errors or not errors[-1].startswith(("OSError", "Connection", "Remote", "Timeout")):
            errors.append(f"status {resp.status}")
        i += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    p.add_argument("--seconds", type=float, default=60, help="how long the clients send queries")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (one per core here)")
    p.add_argument("--captions", choices=["unique", "repeated"], default="unique",
                   help="unique: every caption new to the server; repeated: a pool of 60 (mostly cached)")
    p.add_argument("--dataset", default="catalog-all", help="dataset the queries search")
    p.add_argument("--features", default=str(REPO / "features"), help="features root the server reads")
    p.add_argument("--warmup", type=float, default=5, help="seconds of queries not counted, at the start")
    args = p.parse_args()

    port = free_port()
    env = {**os.environ, "CIR_FEATURES": args.features, "CIR_DEFAULT_DATASET": args.dataset,
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--timeout", "120",
           "--log-level", "warning", "app:create_app()"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        t_start = time.time()
        wait_healthy(port, proc, timeout=300)
        # Every worker must be up before timing: health answers as soon as one is.
        time.sleep(2 + 3 * args.workers)
        refs = references(port, args.dataset)
        lat: list = []
        errors: list = []
        stop = time.time() + args.warmup + args.seconds
        threads = [threading.Thread(target=client, args=(port, args.dataset, refs, args.captions, s, stop, lat,
                                                         errors)) for s in range(args.clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counted = np.array([d for ts, d in lat if ts >= t0 + args.warmup])
        window = args.seconds
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/metrics")
        server_metrics = json.loads(c.getresponse().read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    res = {"clients": args.clients, "seconds": window, "workers": args.workers, "captions": args.captions,
           "queries": int(len(counted)), "errors": len(errors), "throughput_qps": round(len(counted) / window, 1),
           "p50_ms": round(float(np.percentile(counted, 50)), 1), "p95_ms": round(float(np.percentile(counted, 95)), 1),
           "p99_ms": round(float(np.percentile(counted, 99)), 1), "max_ms": round(float(counted.max()), 1),
           "startup_s": round(t0 - t_start, 1), "cores": os.cpu_count(),
           "loadavg_1m": round(os.getloadavg()[0], 2), "server_metrics_one_worker": server_metrics,
           "first_errors": errors[:5]}
    print(f"Measured with `python3 benchmarks/bench_load.py --clients {args.clients} --seconds {args.seconds:g} "
          f"--workers {args.workers} --captions {args.captions}` on {os.cpu_count()} cores "
          f"(load average {res['loadavg_1m']} at the end)\n")
    print("| clients | workers | captions | queries | errors | throughput q/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.clients} | {args.workers} | {args.captions} | {res['queries']} | {res['errors']} | "
          f"{res['throughput_qps']} | {res['p50_ms']} | {res['p95_ms']} | {res['p99_ms']} |\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
