"""Searches while other users ask for explanations: gunicorn serving the catalogue, --clients closed-loop
clients sending composed searches and, beside them, 0, 2, 8 and 16 clients asking /api/explain.

    python3 benchmarks/bench_explain_load.py                         # 16 search clients, 30 s per row
    python3 benchmarks/bench_explain_load.py --explainers 0,8 --seconds 20

Starts gunicorn with gunicorn.conf.py (README's production line; the catalogue index must exist:
`python3 app.py --prepare-only`). For each number of explain clients, runs the search clients (as
bench_load.py) and the explain clients together for --seconds after a warm-up. Each explanation is of a random
catalogue result for a composed query with a caption new to the server, so none comes from the explanation
cache (the worst case); a 503 (every explanation slot busy for 2 s) is counted apart, as the answer a busy
server gives. Then one client repeats a single explanation --repeats times: the cached answer's latency.
Prints a markdown table (search q/s, p50, p95, p99; explanations/s, their p50, 503s), the command line and one
JSON line; exits 1 if a search failed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import threading
import time

import numpy as np
from serving import Server, add_server_args, caption_for, machine, quoted_argv, run_clients, summary


def explain_body(dataset: str, refs: list[str], rng: random.Random, seed: int, i: int) -> str:
    return json.dumps({"mode": "composed", "dataset": dataset, "reference": rng.choice(refs),
                       "caption": caption_for(rng, "unique", seed, i), "result": rng.choice(refs)})


def explainer(port: int, dataset: str, refs: list[str], seed: int, stop: float, out: dict) -> None:
    """One closed-loop explain client until `stop`: appends ms per 200 answer; counts 503s and other errors."""
    rng, i = random.Random(seed), 0
    while time.time() < stop:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/explain", explain_body(dataset, refs, rng, seed, i),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            key = "ms" if resp.status == 200 else "busy" if resp.status == 503 else "errors"
        except (OSError, http.client.HTTPException):
            key = "errors"
        out[key].append((time.time(), (time.perf_counter() - t0) * 1000))
        conn.close()
        i += 1


def phase(server: Server, args, refs: list[str], n_explain: int, seed: int) -> dict:
    """Search and explain clients together: the searches' summary and the explanations' counts."""
    out = {"ms": [], "busy": [], "errors": []}
    t0 = time.time()
    stop = t0 + args.warmup + args.seconds
    threads = [threading.Thread(target=explainer, args=(server.port, args.dataset, refs, seed + 1000 + k, stop, out))
               for k in range(n_explain)]
    for t in threads:
        t.start()
    lat, errors = run_clients(server.port, args.dataset, refs, args.clients, args.seconds, args.warmup,
                              first_seed=seed)
    for t in threads:
        t.join()
    counted = [ms for ts, ms in out["ms"] if ts >= t0 + args.warmup]
    return {"explain_clients": n_explain, **summary(lat, errors, args.seconds),
            "explanations_per_s": round(len(counted) / args.seconds, 1),
            "explain_p50_ms": round(float(np.percentile(counted, 50)), 1) if counted else None,
            "explain_busy_503": len(out["busy"]), "explain_errors": len(out["errors"])}


def cached_repeat(server: Server, dataset: str, refs: list[str], repeats: int) -> dict:
    """One explanation asked `repeats` times in a row: the first renders it, the rest hit the cache (when the
    same worker answers: each worker keeps its own cache)."""
    body = explain_body(dataset, refs, random.Random(7), 7, 0)
    times, hits = [], 0
    for _ in range(repeats):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/api/explain", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        times.append((time.perf_counter() - t0) * 1000)
        hits += resp.getheader("X-Cache") == "hit"
        conn.close()
    return {"repeats": repeats, "first_ms": round(times[0], 1), "cache_hits": hits,
            "repeat_p50_ms": round(float(np.median(times[1:])), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent closed-loop search clients")
    p.add_argument("--explainers", default="0,2,8,16", help="comma-separated numbers of explain clients, one row each")
    p.add_argument("--seconds", type=float, default=30, help="how long each row's clients run (after the warm-up)")
    p.add_argument("--warmup", type=float, default=5, help="seconds of each row not counted, at its start")
    p.add_argument("--repeats", type=int, default=50, help="times the cached explanation is asked for")
    add_server_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = []
    with Server.from_args(args) as server:
        refs = server.references(args.dataset)
        for i, n in enumerate(int(x) for x in args.explainers.split(",")):
            rows.append(phase(server, args, refs, n, seed=100 * (i + 1)))
            logging.info("%s", rows[-1])
        cached = cached_repeat(server, args.dataset, refs, args.repeats)
    load = machine()
    print(f"\nMeasured with `{quoted_argv()}` on {load['cores']} cores (load average {load['loadavg_1m']} at "
          f"the end); {args.clients} search clients\n")
    print("| explain clients | search q/s | p50 ms | p95 ms | p99 ms | search errors | explanations/s | "
          "explain p50 ms | explain 503 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['explain_clients']} | {r['throughput_qps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['errors']} | {r['explanations_per_s']} | {r['explain_p50_ms']} | {r['explain_busy_503']} |")
    print(f"\nOne explanation asked {cached['repeats']} times: first {cached['first_ms']} ms, then "
          f"{cached['cache_hits']} cache hits, p50 {cached['repeat_p50_ms']} ms\n")
    print(json.dumps({"rows": rows, "cached": cached, **load}))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
