"""Signals against the demo server under load: SIGHUP (reload), SIGKILL of one worker, SIGTERM (stop).

    python3 benchmarks/bench_signals.py                                 # 8 clients, the repository's gunicorn.conf.py
    python3 benchmarks/bench_signals.py --clients 8 --before 3 --phases hup,term
    python3 benchmarks/bench_signals.py --config /tmp/old.conf.py       # another config, to compare

Starts gunicorn as configured (benchmarks/serving.py: a free local port, its own process group) with
`--log-level info`, and runs --clients closed-loop clients that send composed POST /api/search queries, each
on a new connection (as the config answers one request per connection), every caption new. Then, in turn,
each phase with fresh clients for --before seconds, the signal, and:

- hup: SIGHUP to the master (reload: new workers load the models, the old ones go), clients until every new
  worker is ready and every old one has exited (at most --after s), then --settle s more;
- kill: SIGKILL to one worker (as the OOM killer would), clients until its replacement is ready, then --settle s;
- term: SIGTERM to the master (graceful stop), clients until the master has exited.

For each phase it counts the requests by outcome: 200, reset (the connection was dropped: ECONNRESET, EPIPE,
closed without an answer), refused (ECONNREFUSED: nothing listens; a client waits 0.2 s before it tries
again), 5xx, timeout (no answer within --timeout s); the longest gap without a 200 answer from 1 s before the
signal to the end of the phase (for term: to the last answer); and how long the server took: hup, until
every new worker is ready; kill, until its replacement is ready; term, until the master exited. Readiness
comes from the "Worker ready" line that gunicorn.conf.py's post_worker_init hook logs: a config to compare
needs that hook too. During term it also samples the listening socket's accept queue (/proc/net/tcp: the
connections the kernel accepted that no worker took yet) until the listener closes: the last sample is
what a close resets. Prints a markdown table and one JSON line; exits 1 when a request failed in hup, or one
in term was reset, got a 5xx or no answer (refusals once nothing listens are what a stopped server does).
The killed worker's requests in kill fail by design: the table reports them, the exit status does not.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving import Server, add_server_args, caption_for, machine, quoted_argv

log = logging.getLogger("bench_signals")
READY = re.compile(r"Worker ready \(pid: (\d+)\)")
OUTCOMES = ("ok", "reset", "refused", "5xx", "timeout", "other")


@dataclass
class Record:
    start: float      # time.time() when the request was sent
    end: float        # when its answer (or its failure) arrived
    outcome: str      # one of OUTCOMES


def outcome_of(e: BaseException) -> str:
    """What a failed request saw. RemoteDisconnected (closed before any answer) counts as a reset."""
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead,
                      http.client.BadStatusLine)):
        return "reset"
    if isinstance(e, TimeoutError):
        return "timeout"
    return "other"


@dataclass
class Clients:
    """Closed-loop clients, each a thread sending its next query when the previous one ended."""
    port: int
    dataset: str
    refs: list[str]
    n: int
    first_seed: int
    timeout: float
    records: list[Record] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Clients":
        self._threads = [threading.Thread(target=self._run, args=(s,), daemon=True)
                         for s in range(self.first_seed, self.first_seed + self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        i = 0
        while not self._stop.is_set():
            body = json.dumps({"mode": "composed", "dataset": self.dataset, "reference": rng.choice(self.refs),
                               "caption": caption_for(rng, "unique", seed, i), "k": 24})
            # A new connection per request: the config closes each one after its answer anyway.
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            t0 = time.time()
            try:
                conn.request("POST", "/api/search", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                outcome = "ok" if resp.status == 200 else "5xx" if resp.status >= 500 else "other"
            except (OSError, http.client.HTTPException) as e:
                outcome = outcome_of(e)
            finally:
                conn.close()
            self.records.append(Record(t0, time.time(), outcome))
            if outcome == "refused":
                self._stop.wait(0.2)  # nothing listens: try again a little later, not in a tight loop
            i += 1


class ListenQueue:
    """Samples the accept queue of the server's listening socket (Linux /proc/net/tcp) every 2 ms until the
    listener is gone: (time, connections queued) pairs. For a listening socket the rx_queue column is the
    number of connections the kernel completed that no process accepted yet."""

    def __init__(self, port: int):
        self.local = f":{port:04X}"
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def queued(self) -> int | None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if f[1].endswith(self.local) and f[3] == "0A":  # 0A: TCP_LISTEN
                    return int(f[4].split(":")[1], 16)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self.queued()
            if n is None:
                return
            self.samples.append((time.time(), n))
            time.sleep(0.002)

    def __enter__(self) -> "ListenQueue":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (gunicorn's workers, when pid is the master)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def ready_since(server: Server, t: float) -> dict[int, float]:
    """Workers that logged "Worker ready" at or after time t: pid -> when."""
    out = {}
    for when, line in list(server.log):
        m = READY.search(line)
        if m and when >= t:
            out[int(m.group(1))] = when
    return out


def wait_steady(server: Server, workers: int, timeout: float = 180) -> None:
    """Until the master has `workers` children and each has logged "Worker ready"."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = children(server.proc.pid)
        if len(kids) == workers and kids <= set(ready_since(server, 0)):
            return
        time.sleep(0.2)
    raise SystemExit(f"the server did not get back to {workers} ready workers within {timeout} s "
                     "(does the config log 'Worker ready' from post_worker_init?)")


def longest_gap(records: list[Record], t_from: float, t_to: float) -> float:
    """The longest time in [t_from, t_to] without a 200 answer."""
    ends = sorted(r.end for r in records if r.outcome == "ok" and t_from <= r.end <= t_to)
    points = [t_from, *ends, t_to]
    return max(b - a for a, b in zip(points, points[1:]))


def row(phase: str, clients: Clients, t_signal: float, t_end: float, took_s: float | None, **extra) -> dict:
    """A phase's counts by outcome, its longest gap and how long the server took (None: never)."""
    recs = clients.records
    counts = {k: sum(r.outcome == k for r in recs) for k in OUTCOMES}
    in_flight = [r for r in recs if r.start < t_signal <= r.end]
    return {"phase": phase, "requests": len(recs), **counts,
            "in_flight_at_signal": len(in_flight), "in_flight_failed": sum(r.outcome != "ok" for r in in_flight),
            "longest_gap_s": round(longest_gap(recs, t_signal - 1, t_end), 2),
            "took_s": None if took_s is None else round(took_s, 2), **extra}


def wait_for(done, limit: float) -> float | None:
    """Poll done() every 0.1 s for up to `limit` seconds: the time it took, or None."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if done():
            return time.time() - t0
        time.sleep(0.1)
    return None


def phase_hup(server: Server, clients: Clients, workers: int, after: float, settle: float) -> dict:
    """SIGHUP, then until every new worker is ready and every old one gone (at most `after` s), then `settle` s."""
    old = children(server.proc.pid)
    t = time.time()
    os.kill(server.proc.pid, signal.SIGHUP)

    def new_ready() -> dict[int, float]:
        return {p: w for p, w in ready_since(server, t).items() if p not in old}
    wait_for(lambda: len(new_ready()) >= workers and not old & children(server.proc.pid), after)
    time.sleep(settle)
    ready = new_ready()
    took = max(ready.values()) - t if len(ready) >= workers else None
    return row("hup", clients, t, time.time(), took, old_left=len(old & children(server.proc.pid)))


def phase_kill(server: Server, clients: Clients, after: float, settle: float) -> dict:
    """SIGKILL to one worker, then until its replacement is ready (at most `after` s), then `settle` s."""
    victim = min(children(server.proc.pid))
    t = time.time()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: ready_since(server, t), after)
    time.sleep(settle)
    ready = ready_since(server, t)
    return row("kill", clients, t, time.time(), min(ready.values()) - t if ready else None)


def phase_term(server: Server, clients: Clients) -> dict:
    """SIGTERM, sampling the listener's accept queue until it closes; clients until the master has exited."""
    with ListenQueue(server.port) as queue:
        time.sleep(0.2)
        t = time.time()
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(60)  # gunicorn kills what is left after graceful_timeout (15 s in the config)
        t_exit = time.time()
    time.sleep(0.5)  # a few refused attempts: nothing listens any more
    oks = [r.end for r in clients.records if r.outcome == "ok"]
    after = [n for ts, n in queue.samples if ts >= t]
    return row("term", clients, t, max(oks, default=t), t_exit - t,
               queued_at_close=after[-1] if after else None, queued_max=max(after, default=None),
               answered_after_signal=sum(e >= t for e in oks))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default="hup,kill,term",
                   help="comma-separated phases, in this order: hup, kill, term (term stops the server, so last)")
    p.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients in each phase")
    p.add_argument("--before", type=float, default=3, help="seconds of queries in each phase before the signal")
    p.add_argument("--after", type=float, default=180,
                   help="at most this many seconds after SIGHUP and after SIGKILL for the new workers to be "
                        "ready (the phase ends as soon as they are)")
    p.add_argument("--settle", type=float, default=2,
                   help="seconds of queries after the new workers are ready, before the phase ends")
    p.add_argument("--warmup", type=float, default=3, help="seconds of queries before the first phase")
    p.add_argument("--timeout", type=float, default=30, help="seconds a client waits for an answer (else a timeout)")
    p.add_argument("--server-log", default="",
                   help="also write gunicorn's log (info level, each line with the time it arrived) to this file")
    add_server_args(p)
    args = p.parse_args()
    args.phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    if not set(args.phases) <= {"hup", "kill", "term"} or "term" in args.phases[:-1]:
        p.error("--phases: hup, kill and term, with term last")
    return args


def run_phases(server: Server, args: argparse.Namespace) -> list[dict]:
    """Every phase with its own clients; the server is back to all workers ready before the next."""
    refs = server.references(args.dataset)
    workers = len(children(server.proc.pid))
    with Clients(server.port, args.dataset, refs, args.clients, 0, args.timeout):
        time.sleep(args.warmup)  # the first queries build lazily loaded parts in each worker
    rows = []
    for i, phase in enumerate(args.phases):
        wait_steady(server, workers)
        with Clients(server.port, args.dataset, refs, args.clients, (i + 1) * 1000, args.timeout) as c:
            time.sleep(args.before)
            if phase == "hup":
                r = phase_hup(server, c, workers, args.after, args.settle)
            elif phase == "kill":
                r = phase_kill(server, c, args.after, args.settle)
            else:
                r = phase_term(server, c)
        rows.append(r)
        log.info("%s", r)
    return rows


def print_table(rows: list[dict]) -> None:
    took = {"hup": "new workers ready", "kill": "replacement ready", "term": "master exited"}
    print("| signal | requests | 200 | reset | refused | 5xx | timeout | in flight at the signal (failed) "
          "| longest gap s | server took s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['requests']} | {r['ok']} | {r['reset']} | {r['refused']} | {r['5xx']} "
              f"| {r['timeout'] + r['other']} | {r['in_flight_at_signal']} ({r['in_flight_failed']}) "
              f"| {r['longest_gap_s']} | {r['took_s']} ({took[r['phase']]}) |")
    term = [r for r in rows if r["phase"] == "term"]
    if term:
        print(f"\nterm: {term[0]['answered_after_signal']} answers after SIGTERM; accept queue at the last sample "
              f"before the listener closed: {term[0]['queued_at_close']} (max {term[0]['queued_max']})")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with Server.from_args(args, log_level="info", log=[]) as server:
        rows = run_phases(server, args)
        notable = [line for _, line in server.log if "WARNING" in line or "ERROR" in line or "CRITICAL" in line]
    if args.server_log:
        Path(args.server_log).write_text("".join(f"{t:.3f} {line}\n" for t, line in server.log))
    load = machine()
    print(f"\nMeasured with `{quoted_argv()}` on {load['cores']} cores "
          f"(load average {load['loadavg_1m']} at the end)\n")
    print_table(rows)
    for line in notable[:20]:
        print("server:", line)
    print()
    print(json.dumps({"config": args.config, "gunicorn_args": args.gunicorn_args, "clients": args.clients,
                      "before": args.before, "after": args.after, **load, "rows": rows}))
    failed = [r for r in rows if r["phase"] == "hup" and r["requests"] != r["ok"]
              or r["phase"] == "term" and r["reset"] + r["5xx"] + r["timeout"] + r["other"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
