"""Slow clients against the demo server: N connections that send part of a request and then nothing, while
16 clients query /api/search.

    python3 benchmarks/bench_slow_clients.py                            # 2, 32, 128 idle; gunicorn.conf.py
    python3 benchmarks/bench_slow_clients.py --config none --gunicorn-args '-w 2 --timeout 120'   # old line
    python3 benchmarks/bench_slow_clients.py --stall body --idle 128    # whole header, then half a body

Starts gunicorn as configured (as bench_load.py does), then for each N in --idle: opens N connections that
each send half a request header (--stall head) or a whole header announcing a body and half of it
(--stall body), and hold them; a connection the server closes is opened again at once (as an attacker
would). While they are held, --clients closed-loop clients send composed queries for --seconds. An error is
any non-200 answer, a failed connection or no answer within --timeout seconds. Prints a markdown table (idle,
dropped idle connections, queries, errors, req/s, p50/p95/p99) and one JSON line; exits 1 on any error.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import selectors
import socket
import time

from serving import Server, add_server_args, machine, quoted_argv, run_clients, summary

log = logging.getLogger("bench_slow_clients")
BODY = b'{"mode": "composed", "caption": "is red instead", "k": 24}'
HEAD = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY))


class IdleConnections:
    """Hold n partial requests open on the server from a child process, reopening any it closes.

    A process of its own, not a thread: the reopening loop of thousands of connections would otherwise share
    the querying clients' GIL and slow them down, which a remote attacker does not do."""

    def __init__(self, port: int, n: int, stall: str, trickle: float, source: str = "127.0.0.1"):
        self.port, self.n, self.trickle, self.source = port, n, trickle, source
        # head: stop in the middle of the header block; body: the whole header, then half the body.
        self.partial = HEAD[: len(HEAD) // 2] if stall == "head" else HEAD + BODY[: len(BODY) // 2]
        ctx = multiprocessing.get_context("fork")
        self._dropped, self._failed, self._held = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=self._hold, daemon=True)
        self.sel: selectors.BaseSelector | None = None   # the child's

    @property
    def dropped(self) -> int:
        return self._dropped.value

    @property
    def failed_connects(self) -> int:
        return self._failed.value

    def _open(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(self.source, 0))
        s.sendall(self.partial)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)

    def _reopen(self, s: socket.socket) -> None:
        self.sel.unregister(s)
        s.close()
        try:
            self._open()
        except OSError:
            self._failed.value += 1

    def __enter__(self) -> "IdleConnections":
        self._proc.start()
        deadline = time.monotonic() + 60
        while self.held() < self.n and time.monotonic() < deadline and self._proc.is_alive():
            time.sleep(0.1)
        return self

    def _hold(self) -> None:
        self.sel = selectors.DefaultSelector()
        last_trickle = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                # Readable means the server answered (an error) or closed the connection: either way it let go.
                self._dropped.value += 1
                self._reopen(key.fileobj)
            if self.trickle and time.monotonic() - last_trickle >= self.trickle:
                last_trickle = time.monotonic()
                for key in list(self.sel.get_map().values()):
                    try:
                        key.fileobj.send(b"x")  # one more byte of a header value / the body, never the end
                    except OSError:
                        self._dropped.value += 1
                        self._reopen(key.fileobj)
            while len(self.sel.get_map()) < self.n and not self._stop.is_set():
                try:
                    self._open()
                except OSError:
                    self._failed.value += 1
                    break
            self._held.value = len(self.sel.get_map())

    def held(self) -> int:
        return self._held.value

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._proc.join(30)   # its sockets close as it exits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle", default="2,32,128", help="comma-separated numbers of idle partial requests, in turn")
    p.add_argument("--stall", choices=["head", "body"], default="head",
                   help="head: half a request header, then nothing; body: a whole header and half the body")
    p.add_argument("--trickle", type=float, default=0,
                   help="send one more byte on every idle connection this often, in seconds (0: never)")
    p.add_argument("--source", default="127.0.0.2",
                   help="local address the idle connections come from: another address than the querying "
                        "clients' 127.0.0.1, as an attacker's would be (the per-client limit counts per address)")
    p.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients querying meanwhile")
    p.add_argument("--seconds", type=float, default=20, help="how long the clients query, per idle count")
    p.add_argument("--warmup", type=float, default=5, help="seconds of queries before the first count")
    p.add_argument("--timeout", type=float, default=10, help="seconds a client waits for an answer (else an error)")
    add_server_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rows = []
    with Server.from_args(args) as server:
        refs = server.references(args.dataset)
        # Warm up every worker (first queries load lazily built parts) before anything is counted.
        run_clients(server.port, args.dataset, refs, args.clients, 0, args.warmup, timeout=args.timeout)
        for phase, n in enumerate(int(v) for v in args.idle.split(",")):
            with IdleConnections(server.port, n, args.stall, args.trickle, args.source) as idle:
                time.sleep(1)  # let the server take them in before the clients start
                cpu0 = server.cpu_seconds()
                lat, errors = run_clients(server.port, args.dataset, refs, args.clients, args.seconds,
                                          timeout=args.timeout, first_seed=(phase + 1) * args.clients)
                cpu = server.cpu_seconds() - cpu0
                row = {"idle": n, "held_at_end": idle.held(), "dropped_by_server": idle.dropped,
                       "failed_connects": idle.failed_connects, **summary(lat, errors, args.seconds),
                       "server_cpu_ms_per_query": round(1000 * cpu / len(lat), 1) if len(lat) else None}
            log.info("%s", row)
            rows.append(row)
            time.sleep(2)  # the held connections are gone; a worker stuck on one is free again
    load = machine()
    print(f"\nMeasured with `{quoted_argv()}` on {load['cores']} cores "
          f"(load average {load['loadavg_1m']} at the end)\n")
    print("| idle partial requests | dropped by server | queries | errors | req/s | p50 ms | p95 ms | p99 ms "
          "| max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['idle']} | {r['dropped_by_server']} | {r['queries']} | {r['errors']} | {r['throughput_qps']} "
              f"| {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    print()
    print(json.dumps({"config": args.config, "gunicorn_args": args.gunicorn_args, "stall": args.stall,
                      "source": args.source,
                      "trickle": args.trickle, "clients": args.clients, "seconds": args.seconds,
                      "timeout": args.timeout, **load, "rows": rows}))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
