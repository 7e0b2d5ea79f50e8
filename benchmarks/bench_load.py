"""The demo under load: gunicorn serving the catalogue, N concurrent clients sending composed queries.

    python3 benchmarks/bench_load.py                       # 16 clients, 60 s, the repository's gunicorn.conf.py
    python3 benchmarks/bench_load.py --clients 16 --seconds 60 --captions repeated
    python3 benchmarks/bench_load.py --config none --gunicorn-args '-w 2 --timeout 120'   # the old sync line

Starts gunicorn with gunicorn.conf.py (README's production line) on a free local port (the catalogue index
must exist: `python3 app.py --prepare-only`), waits for /api/health, then runs closed-loop clients (each
sends its next query when the previous answer arrives) for the given time. Every query is POST /api/search
in composed (Combiner) mode with a random catalogue reference and a caption:
  unique     every caption is new to the server (the text encoder runs every time; the worst case)
  repeated   captions drawn from a pool of 60 (the text LRU cache answers most of them)
Clients run in this process on the same machine, so they take some of its CPU. Prints a markdown table,
the command line, and last one JSON line. An error is any non-200 answer or a failed connection; the exit
status is 1 when there was one.
"""
from __future__ import annotations

import argparse
import json
import logging

from serving import Server, add_server_args, machine, quoted_argv, run_clients, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    p.add_argument("--seconds", type=float, default=60, help="how long the clients send queries")
    p.add_argument("--captions", choices=["unique", "repeated"], default="unique",
                   help="unique: every caption new to the server; repeated: a pool of 60 (mostly cached)")
    p.add_argument("--warmup", type=float, default=5, help="seconds of queries not counted, at the start")
    add_server_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with Server.from_args(args) as server:
        refs = server.references(args.dataset)
        server_header = server.headers().get("Server")
        # The warm-up runs on its own, so that the CPU time below covers exactly the counted queries.
        _, warm_errors = run_clients(server.port, args.dataset, refs, args.clients, 0, args.warmup, args.captions,
                                     first_seed=args.clients)
        cpu0 = server.cpu_seconds()
        lat, errors = run_clients(server.port, args.dataset, refs, args.clients, args.seconds, 0, args.captions)
        cpu = server.cpu_seconds() - cpu0
        errors = warm_errors + errors
        load = machine()
        server_metrics = server.get_json("/api/metrics")
    res = {"clients": args.clients, "seconds": args.seconds, "config": args.config, "gunicorn_args": args.gunicorn_args,
           "workers": args.workers, "captions": args.captions, **summary(lat, errors, args.seconds),
           "server_cpu_ms_per_query": round(1000 * cpu / max(len(lat), 1), 1),
           "startup_s": round(server.startup_s, 1), **load, "server_header": server_header,
           "server_metrics_one_worker": server_metrics}
    print(f"\nMeasured with `{quoted_argv()}` on {load['cores']} cores "
          f"(load average {load['loadavg_1m']} at the end)\n")
    print("| clients | captions | queries | errors | throughput q/s | p50 ms | p95 ms | p99 ms | server CPU ms/query |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.clients} | {args.captions} | {res['queries']} | {res['errors']} | {res['throughput_qps']} | "
          f"{res['p50_ms']} | {res['p95_ms']} | {res['p99_ms']} | {res['server_cpu_ms_per_query']} |\n")
    print(json.dumps(res))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
