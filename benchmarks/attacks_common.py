"""Shared pieces of bench_attacks.py: requests that never wait longer than the hang timeout (HTTP and raw
sockets), strict JSON reading (NaN/Infinity refused), the per-attack tally, closed-loop normal clients that
measure what an attack costs everyone else, the probe queries that detect silent corruption, and the
server's worker processes (pids and resident memory, from /proc), and the report (markdown table, JSON line).

An answer is one of: a status code; `None`, no answer within the timeout (a hang); `0`, the connection was
closed or reset without an answer.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from serving import Server, caption_for, machine, quoted_argv

log = logging.getLogger("bench_attacks")
HANG_S = 10.0
MAX_NOTES = 12
SCORE_TOLERANCE = 2e-4   # scores are rounded to 4 decimals: the last digit may differ between workers


@dataclass
class Answer:
    status: int | None          # None: no answer within the timeout; 0: closed or reset without an answer
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    error: str = ""

    def short(self) -> str:
        if self.status is None:
            return f"no answer within {self.seconds:.1f} s"
        if self.status == 0:
            return f"no answer ({self.error})"
        return f"{self.status} {self.body[:160]!r}"


def strict_json(data: bytes):
    """json.loads that refuses NaN, Infinity and -Infinity (what Python's json writes, and no JSON reader takes)."""
    def refuse(name: str):
        raise ValueError(f"{name} in a JSON answer")
    return json.loads(data, parse_constant=refuse)


def request(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
            timeout: float = HANG_S) -> Answer:
    """One HTTP request on a new connection, waiting at most `timeout` seconds for each read."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.perf_counter() - t0)
    except TimeoutError:
        return Answer(None, seconds=time.perf_counter() - t0)
    except (OSError, http.client.HTTPException) as e:
        return Answer(0, seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def post_json(port: int, path: str, payload: dict, timeout: float = HANG_S) -> Answer:
    return request(port, "POST", path, json.dumps(payload), {"Content-Type": "application/json"}, timeout)


def raw_request(port: int, data: bytes, timeout: float = HANG_S) -> Answer:
    """Send raw bytes, read the answer until the connection closes or the answer is complete (its
    Content-Length), at most `timeout` seconds in all. A server that answers and closes before reading all
    of `data` is fine (that is what a guard does)."""
    t0 = time.perf_counter()
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            while not _complete(got):
                s.settimeout(max(0.05, timeout - (time.perf_counter() - t0)))
                part = s.recv(65536)
                if not part:
                    break
                got += part
    except TimeoutError:
        if not _complete(got):
            return Answer(None, seconds=time.perf_counter() - t0)
    except OSError as e:
        if not got:
            return Answer(0, seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    return _parse_raw(got, time.perf_counter() - t0)


def _complete(got: bytes) -> bool:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def _parse_raw(got: bytes, seconds: float) -> Answer:
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Answer(0, seconds=seconds, error=f"closed without an HTTP answer ({got[:60]!r})")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return Answer(int(parts[1]), headers, body, seconds)


@dataclass
class Tally:
    """What one attack got: requests sent, answers by status, and the failures (5xx, hangs, NaN or invalid
    JSON, silent corruption, workers that died, answers or checks other than expected)."""
    attack: str
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: int = 0
    hangs: int = 0
    nan: int = 0
    silent: int = 0
    restarts: int = 0
    unexpected: int = 0
    notes: list = field(default_factory=list)
    normal: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, text: str) -> None:
        with self._lock:
            if len(self.notes) < MAX_NOTES:
                self.notes.append(text)
            elif len(self.notes) == MAX_NOTES:
                self.notes.append("(more left out)")
        log.warning("%s: %s", self.attack, text)

    def bump(self, what: str, n: int = 1) -> None:
        """Add n to one of the failure counters (server_errors, hangs, nan, silent, restarts, unexpected)."""
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def fail(self, text: str) -> None:
        """A check other than a status failed (health, a skipped file, a decoded frame...)."""
        self.bump("unexpected")
        self.note(f"FAILED: {text}")

    def record(self, what: str, ans: Answer, expect=(400,), attack: bool = True):
        """Count one answer; returns its strictly parsed JSON body (None when it is not JSON)."""
        with self._lock:
            if attack:
                self.sent += 1
                self.statuses["hang" if ans.status is None else ans.status or "closed"] += 1
            if ans.status is None:
                self.hangs += 1
            elif ans.status >= 500:
                self.server_errors += 1
        if ans.status is None or ans.status >= 500:
            self.note(f"{what}: {ans.short()}")
        elif expect and ans.status not in expect:
            self.bump("unexpected")
            self.note(f"{what}: expected {'/'.join(map(str, expect))}, got {ans.short()}")
        return self.check_body(what, ans)

    def check_body(self, what: str, ans: Answer):
        if not ("json" in ans.headers.get("content-type", "") or ans.body[:1] in (b"{", b"[")):
            return None
        try:
            return strict_json(ans.body)
        except ValueError as e:   # NaN/Infinity, or not JSON at all although it says so
            self.bump("nan")
            self.note(f"{what}: bad JSON answer ({e}): {ans.body[:160]!r}")
            return None

    def failures(self) -> int:
        return self.server_errors + self.hangs + self.nan + self.silent + self.restarts + self.unexpected

    def row(self) -> dict:
        return {"attack": self.attack, "sent": self.sent, "answers": {str(k): v for k, v in self.statuses.items()},
                "5xx": self.server_errors, "hangs": self.hangs, "nan_or_bad_json": self.nan,
                "silent_corruption": self.silent, "worker_restarts": self.restarts,
                "unexpected": self.unexpected, "normal": self.normal, **self.extra, "notes": self.notes}


def latency_summary(lat_ms: list[float], errors: int, seconds: float) -> dict:
    a = np.array(lat_ms)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(a, q)), 1) if len(a) else None
    return {"queries": len(a), "errors": errors, "qps": round(len(a) / max(seconds, 1e-9), 1),
            "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(float(a.max()), 1) if len(a) else None}


class NormalLoad:
    """`n` closed-loop clients sending composed searches while an attack runs (a context manager). Every
    answer is read strictly; a 5xx, a hang or a NaN counts in the attack's tally, and `tally.normal` gets
    queries, errors (any non-200), q/s and p50/p99/max."""

    def __init__(self, port: int, dataset: str, refs: list[str], n: int, tally: Tally, seed: int,
                 timeout: float = HANG_S):
        self.port, self.dataset, self.refs, self.tally, self.timeout = port, dataset, refs, tally, timeout
        self.lat: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(seed * 1000 + i,), daemon=True)
                         for i in range(n)]
        self._t0 = 0.0

    def __enter__(self) -> "NormalLoad":
        self._t0 = time.perf_counter()
        for t in self._threads:
            t.start()
        return self

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        i = 0
        while not self._stop.is_set():
            body = {"mode": "composed", "dataset": self.dataset, "reference": rng.choice(self.refs),
                    "caption": caption_for(rng, "unique", seed, i), "k": 24}
            ans = post_json(self.port, "/api/search", body, self.timeout)
            i += 1
            self.tally.record("normal search", ans, expect=(200,), attack=False)
            if ans.status == 200:
                self.lat.append(ans.seconds * 1000)
            else:
                self.errors += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        if self._threads:
            self.tally.normal = latency_summary(self.lat, self.errors, time.perf_counter() - self._t0)


# ----------------------------------------------------------------------------------------------- probes

PROBE_CAPTIONS = ["is red instead", "the same but in navy blue", "black with longer sleeves", "a white formal one"]


def probe_queries(dataset: str, refs: list[str]) -> list[dict]:
    """Fixed queries whose answers must not change during an attack: composed, image and text searches."""
    qs = [{"mode": "composed", "dataset": dataset, "reference": r, "caption": c, "k": 10}
          for r, c in zip(refs, PROBE_CAPTIONS)]
    qs.append({"mode": "image", "dataset": dataset, "reference": refs[0], "k": 10})
    qs.append({"mode": "text", "dataset": dataset, "caption": "a green t-shirt for men", "k": 10})
    return qs


def ask_probes(port: int, queries: list[dict], tally: Tally) -> list[tuple | None]:
    """Each probe's (ids, scores), None for an answer that is not a 200 with results."""
    out = []
    for q in queries:
        ans = post_json(port, "/api/search", q)
        body = tally.record(f"probe {q['mode']} {q.get('reference', '')}", ans, expect=(200,), attack=False)
        out.append((tuple(body["ids"]), tuple(body["scores"])) if ans.status == 200 and body else None)
    return out


def same_answer(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and all(abs(x - y) <= SCORE_TOLERANCE for x, y in zip(a[1], b[1]))


def health(port: int) -> dict:
    ans = request(port, "GET", "/api/health")
    try:
        return strict_json(ans.body) if ans.status == 200 else {"status": f"HTTP {ans.short()}"}
    except ValueError as e:
        return {"status": f"bad JSON: {e}"}


def check_probes(port: int, queries: list[dict], before: list, tally: Tally, dataset: str) -> int:
    """Ask the probes again; a changed answer while /api/health does not report `dataset` under `damaged` is
    silent corruption. Returns how many answers changed."""
    after = ask_probes(port, queries, tally)
    changed = [q for q, a, b in zip(queries, before, after) if not same_answer(a, b)]
    if not changed:
        return 0
    h = health(port)
    reported = dataset in (h.get("damaged") or {})   # another dataset's damage excuses nothing
    for q in changed:
        if reported:
            tally.note(f"answer changed, health reports it ({h.get('status')}): {q}")
        else:
            tally.bump("silent")
            tally.note(f"SILENT CORRUPTION: answer changed while health says {h.get('status')!r}: {q}")
    return len(changed)


# ----------------------------------------------------------------------------------------------- processes

class LoggedServer(Server):
    """Server whose output (gunicorn's and the app's log) goes to `log_path` (to check what it warned about)."""

    def __init__(self, *args, log_path: Path, boot_timeout: float = 600, **kw):
        super().__init__(*args, **kw)
        self.log_path, self.boot_timeout = log_path, boot_timeout

    def wait_healthy(self, timeout: float) -> None:
        """serving.Server's wait, for boot_timeout seconds; when it gives up, the error says what the master
        and its workers were doing (state and CPU seconds: starved by other work, or stuck)."""
        try:
            super().wait_healthy(self.boot_timeout)
        except SystemExit as e:
            raise SystemExit(f"{e}; processes: {process_states(self.proc.pid)}") from None

    def command(self, config_file: str) -> list[str]:
        # exec keeps the pid: the shell becomes gunicorn's master, in the same process group
        return ["sh", "-c", 'exec "$@" >>"$0" 2>&1', str(self.log_path), *super().command(config_file)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_pids(master: int) -> set[int]:
    """gunicorn's workers: the processes whose parent is the master."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


def process_states(master: int) -> str:
    """'pid state cpu-seconds' for gunicorn's master and each worker (from /proc/<pid>/stat)."""
    out = []
    for pid in [master, *sorted(worker_pids(master))]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            out.append(f"{pid} gone")
            continue
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out.append(f"{pid} {fields[0]} {cpu:.1f} s CPU")
    return ", ".join(out)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def check_workers(master: int, before: set[int], tally: Tally) -> None:
    """Workers that are gone since `before` (died or were killed and replaced) count as restarts."""
    gone = before - worker_pids(master)
    if gone:
        tally.bump("restarts", len(gone))
        tally.note(f"worker(s) {sorted(gone)} died or were replaced during the attack")


def hwm_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had (its peak, e.g. while decoding 100 MP)."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        return None


# ----------------------------------------------------------------------------------------------- report

COLUMNS = ["attack", "sent", "answers", "5xx", "hangs", "NaN", "silent", "restarts", "unexpected",
           "normal q", "normal errors", "p50 ms", "p99 ms", "max ms"]


def table_row(t: Tally) -> list:
    n = t.normal or {}
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(t.statuses.items(), key=lambda kv: str(kv[0]))) or "-"
    return [t.attack, t.sent, answers, t.server_errors, t.hangs, t.nan, t.silent, t.restarts, t.unexpected,
            n.get("queries", "-"), n.get("errors", "-"), n.get("p50_ms", "-"), n.get("p99_ms", "-"),
            n.get("max_ms", "-")]


def print_report(args, tallies: list[Tally]) -> int:
    """The markdown table (one row per attack and a total), the notes, then one JSON line; returns the
    number of failures."""
    load = machine()
    print(f"\nMeasured with `{quoted_argv()}` on {load['cores']} cores (load average {load['loadavg_1m']} at "
          f"the end)\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * (len(COLUMNS) - 1))
    for t in tallies:
        print("| " + " | ".join(str(v) for v in table_row(t)) + " |")
    keys = ["sent", "server_errors", "hangs", "nan", "silent", "restarts", "unexpected"]
    total = {k: sum(getattr(t, k) for t in tallies) for k in keys}
    print(f"| **total** | {total['sent']} | | {total['server_errors']} | {total['hangs']} | {total['nan']} | "
          f"{total['silent']} | {total['restarts']} | {total['unexpected']} | | | | | |\n")
    for t in tallies:
        details = {k: v for k, v in t.extra.items()}
        if t.notes or details:
            print(f"- **{t.attack}**: " + "; ".join(t.notes + [json.dumps(details)]))
    failures = sum(t.failures() for t in tallies)
    print()
    print(json.dumps({"attacks": args.chosen, "quick": args.quick, "seconds": args.seconds, "clients": args.clients,
                      "timeout": args.timeout, "config": args.config, **load, "total": total,
                      "failures": failures, "rows": [t.row() for t in tallies]}))
    return failures
