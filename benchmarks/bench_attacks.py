"""Issue 20's attacks replayed against the production line (gunicorn.conf.py's gevent workers, started by
serving.Server on a free local port), each while a few normal clients search.

    python3 benchmarks/bench_attacks.py                     # every attack, full length (~15 min on 2 cores)
    python3 benchmarks/bench_attacks.py --quick             # shorter phases, 500 idle connections only
    python3 benchmarks/bench_attacks.py --only 1,3 --quick  # some of them
    python3 benchmarks/bench_attacks.py --only 7 --idle 500,2500,5000 --seconds 30

Attacks (the numbers of --only):
  1  the 64,022-byte body "[" * 21 + '"' + '\\"' * 32000 POSTed to /api/search in a loop from 2 connections
     (expect 400, and normal searches as fast as without it)
  2  malformed chunked bodies (a bad chunk size, a 100 KB chunk extension, 20,000 trailer lines) on
     raw sockets to POST /api/search, /api/explain, /api/upload, /api/health and GET /api/health (expect 400)
  3  explanations (PNG and ?format=json) and thumbnails of a 5712x4284 JPEG and a 10000x10000 PNG in an
     image folder extracted with extract_features.py into a temporary features root beside the --features
     folders: seconds each, worker memory (VmRSS before/after, VmHWM peak); the JPEG is decoded at reduced
     size (expect 200), the PNG has more than --max-pixels to decode (expect 413); then a small PNG of that
     folder is replaced on disk by a 1-bit 15000x15000 one (225 MP, over twice PIL's bomb limit): its
     explanation and thumbnail must be a 4xx
  4  a server given damaged Combiner checkpoints (truncated, garbage, NaN weights) beside the good one:
     it boots, health lists only the good one, the log names each skipped file, searches and explanations
     naming a damaged one are 400, the good one 200
  5  a copy of features/catalog-test served, its features.safetensors truncated to 50% while serving:
     answers unchanged, same workers, /api/health reports the folder (serving: true)
  6  damaged feature folders beside a good one (names.json listing an id twice with its checksum recomputed,
     manifest.json a symlink loop, a dangling manifest link): health reports each, none is served
  7  N half-header connections from another address, 127.0.0.2 (bench_slow_clients.IdleConnections,
     reopened as soon as the server closes one), for each N of --idle: normal clients' p50/p99/max and errors
     (the per-client connection limit of gunicorn.conf.py refuses what is beyond 64 per worker)
  8  a raw JPEG upload sent as application/x-www-form-urlencoded (expect 201), a 2-frame MPO upload (201,
     decoded as its first frame), ids holding a newline on /api/search, /img and /thumb (400)
Row 0 is the baseline: the same normal clients with no attack, on the server of attacks 1, 2, 7 and 8.

Per attack: requests sent, answers by status, 5xx, hangs (no answer within --timeout seconds; an explanation
within --explain-timeout), NaN/Infinity or invalid JSON in any JSON answer (every answer is parsed with
json.loads refusing NaN), silent corruption (a fixed probe query answers differently after the attack than
before it while /api/health does not report the dataset), worker restarts (a worker pid gone) and unexpected
answers or failed checks; and the normal clients' queries, errors, p50/p99/max. Prints a markdown table, the
notes (what failed and how), and one JSON line; exits 1 on any 5xx, hang, NaN, silent corruption, restart or
unexpected answer. Every file it writes (images, features, weights, uploads, server logs) is in a temporary
folder, deleted at the end (--keep-temp keeps it).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import shlex
import shutil
import tempfile
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from attacks_common import (
    LoggedServer,
    NormalLoad,
    Tally,
    ask_probes,
    check_probes,
    check_workers,
    health,
    hwm_mb,
    post_json,
    print_report,
    probe_queries,
    raw_request,
    request,
    rss_mb,
    worker_pids,
)
from attacks_files import (
    SWAPPED,
    bomb_png,
    copy_folder,
    damaged_combiners,
    dangling_manifest_folder,
    duplicate_id_folder,
    extract_folder,
    first_pixel,
    jpeg_bytes,
    link_folders,
    mpo_bytes,
    multipart,
    symlink_loop_folder,
    write_big_images,
)
from bench_slow_clients import IdleConnections
from serving import REPO, add_server_args

log = logging.getLogger("bench_attacks")
ATTACKS = {1: "escaped-quote body", 2: "malformed chunked bodies", 3: "explain large images",
           4: "damaged weights", 5: "features truncated while serving", 6: "damaged folders",
           7: "connection slots", 8: "uploads, ids with a newline"}
ON_MAIN_SERVER = {1, 2, 7, 8}
BACKTRACKING_BODY = ("[" * 21 + '"' + '\\"' * 32000).encode()


@dataclass
class Ctx:
    """What every attack needs: the flags, the temporary folder, and the main server when it runs."""
    args: argparse.Namespace
    tmp: Path
    server: LoggedServer | None = None
    refs: list = field(default_factory=list)
    seed: int = 0

    def serve(self, name: str, env: dict | None = None) -> LoggedServer:
        """A server (not started: use `with`) on the flags' config, its log and uploads in the temp folder."""
        a = self.args
        base = {"CIR_FEATURES": a.features, "CIR_DEFAULT_DATASET": a.dataset,
                "CIR_UPLOAD_DIR": str(self.tmp / f"uploads-{name}")}
        return LoggedServer(a.config, shlex.split(a.gunicorn_args), a.workers, {**base, **(env or {})},
                            log_path=self.tmp / f"server-{name}.log", boot_timeout=a.boot_timeout)

    def guarded(self, server: LoggedServer, dataset: str, refs: list, tally: Tally, body: Callable[[], None]) -> None:
        """Run `body` (the attack) while --clients normal clients search; the probes before and after it
        must answer the same, and every worker must still be the one it was."""
        queries = probe_queries(dataset, refs)
        before = ask_probes(server.port, queries, tally)
        pids = worker_pids(server.proc.pid)
        self.seed += 1
        with NormalLoad(server.port, dataset, refs, self.args.clients, tally, self.seed, self.args.timeout):
            body()
        check_probes(server.port, queries, before, tally, dataset)
        check_workers(server.proc.pid, pids, tally)


def boot_failed(tally: Tally, server: LoggedServer, error: BaseException) -> None:
    tail = " | ".join(server.log_text().strip().splitlines()[-4:])
    tally.fail(f"the server did not start or serve ({error}); its log ends: {tail[-600:]}")


# ----------------------------------------------------------------------------------------------- 0, 1, 2

def baseline(ctx: Ctx) -> list[Tally]:
    tally = Tally("0 baseline (no attack)")
    ctx.guarded(ctx.server, ctx.args.dataset, ctx.refs, tally, lambda: time.sleep(ctx.args.seconds))
    return [tally]


def in_threads(n: int, seconds: float, step: Callable[[], None]) -> None:
    """Call `step` in a loop from n threads for `seconds`."""
    stop = time.time() + seconds

    def loop() -> None:
        while time.time() < stop:
            step()
    threads = [threading.Thread(target=loop) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def escaped_quotes(ctx: Ctx) -> list[Tally]:
    tally = Tally("1 escaped-quote body, 2 connections")
    assert len(BACKTRACKING_BODY) == 64_022
    times: list[float] = []

    def step() -> None:
        ans = request(ctx.server.port, "POST", "/api/search", BACKTRACKING_BODY,
                      {"Content-Type": "application/json"}, ctx.args.timeout)
        body = tally.record("escaped-quote body", ans, (400,))
        times.append(ans.seconds * 1000)
        if ans.status == 400 and body and "nested too deeply" not in body.get("message", ""):
            tally.note(f"400 for another reason: {body.get('message')}")
    ctx.guarded(ctx.server, ctx.args.dataset, ctx.refs, tally, lambda: in_threads(2, ctx.args.seconds, step))
    times.sort()
    if times:
        tally.extra["attack_answer_ms"] = {"p50": round(times[len(times) // 2], 1), "max": round(times[-1], 1)}
    return [tally]


def malformed_bodies(method: str, path: str) -> dict[str, bytes]:
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    return {"bad chunk size": head + b"zz\r\n{}\r\n0\r\n\r\n",
            "100 KB chunk extension": head + b"2;" + b"x" * 100_000 + b"\r\n{}\r\n0\r\n\r\n",
            "20,000 trailer lines": head + b"2\r\n{}\r\n0\r\n" + b"X-T: 1\r\n" * 20_000 + b"\r\n"}


CHUNKED_ROUTES = [("POST", "/api/search"), ("POST", "/api/explain"), ("POST", "/api/upload"),
                  ("POST", "/api/health"), ("GET", "/api/health")]


def malformed_chunked(ctx: Ctx) -> list[Tally]:
    tally = Tally("2 malformed chunked bodies")

    def body() -> None:
        for _ in range(ctx.args.rounds):
            for method, path in CHUNKED_ROUTES:
                for what, raw in malformed_bodies(method, path).items():
                    ans = raw_request(ctx.server.port, raw, ctx.args.timeout)
                    tally.record(f"{method} {path}, {what}", ans, (400,))
    ctx.guarded(ctx.server, ctx.args.dataset, ctx.refs, tally, body)
    return [tally]


# ----------------------------------------------------------------------------------------------- 3

def prepare_big_folder(ctx: Ctx, tally: Tally) -> tuple[Path, list[str]] | None:
    """The large images, extracted into a features root that also links the --features folders."""
    images = write_big_images(ctx.tmp / "bigimages")
    root = ctx.tmp / "features-big"
    link_folders(Path(ctx.args.features), root)
    try:
        folder, seconds = extract_folder(images["jpeg"].parent, root, ctx.tmp / "extract.log")
    except (RuntimeError, OSError) as e:
        tally.fail(f"extraction of the large images failed: {e}")
        return None
    manifest = json.loads((folder / "manifest.json").read_text())
    names = json.loads((folder / "names.json").read_text())
    tally.extra["extract_s"] = round(seconds, 1)
    for skipped in manifest.get("skipped") or []:
        tally.note(f"extraction skipped {skipped}")
    if not names:
        tally.fail("the extraction indexed none of the large images")
        return None
    return root, names


def explain_once(ctx: Ctx, port: int, dataset: str, ref: str, result: str, fmt: str, tally: Tally,
                 expect=(200,)) -> float:
    """One explanation of `result` (fmt png or json), or its thumbnail (fmt thumb); returns the seconds."""
    if fmt == "thumb":
        ans = request(port, "GET", f"/thumb/{dataset}/{urllib.parse.quote(result)}", timeout=ctx.args.explain_timeout)
    else:
        payload = {"mode": "composed", "dataset": dataset, "reference": ref, "caption": "is blue instead",
                   "result": result}
        path = "/api/explain" + ("?format=json" if fmt == "json" else "")
        ans = post_json(port, path, payload, ctx.args.explain_timeout)
    body = tally.record(f"{fmt} of {result}", ans, expect)
    magic = {"png": b"\x89PNG", "thumb": b"\xff\xd8"}.get(fmt)
    if ans.status == 200 and magic and not ans.body.startswith(magic):
        tally.fail(f"{fmt} of {result}: the answer is not a {fmt}: {ans.body[:40]!r}")
    if ans.status == 200 and fmt == "json" and not isinstance(body, dict):
        tally.fail(f"json of {result}: no JSON object in the answer")
    if ans.status is not None and ans.seconds > ctx.args.timeout:
        tally.note(f"{fmt} of {result} took {ans.seconds:.1f} s (over --timeout, under --explain-timeout)")
    return ans.seconds


def explain_large(ctx: Ctx) -> list[Tally]:
    tally = Tally("3 explain 24 MP JPEG + 100 MP PNG")
    swapped = Tally("3 a folder image swapped for a 225 MP PNG")
    prepared = prepare_big_folder(ctx, tally)
    if prepared is None:
        return [tally]
    root, names = prepared
    big = [n for n in names if n != SWAPPED]
    dataset = f"folder-{(ctx.tmp / 'bigimages').name}"
    server = ctx.serve("explain", {"CIR_FEATURES": str(root)})
    try:
        with server:
            refs = server.references(ctx.args.dataset)
            pids = sorted(worker_pids(server.proc.pid))
            rss0 = {p: rss_mb(p) for p in pids}
            times: dict[str, list[float]] = {}

            def body() -> None:
                for _ in range(ctx.args.explain_rounds):
                    for result in big:
                        ref = next((n for n in big if n != result), result)
                        for fmt in ("png", "json", "thumb"):
                            # over --max-pixels (25 MP) once decoded: refused before any pixel is read
                            expect = (413,) if result.endswith(".png") else (200,)
                            seconds = explain_once(ctx, server.port, dataset, ref, result, fmt, tally, expect)
                            times.setdefault(f"{result} {fmt}", []).append(round(seconds, 2))
            ctx.guarded(server, ctx.args.dataset, refs, tally, body)
            tally.extra["seconds_each"] = times
            tally.extra["worker_mb"] = {str(p): {"rss_before": rss0[p], "rss_after": rss_mb(p),
                                                 "peak_hwm": hwm_mb(p)} for p in pids}
            if SWAPPED in names:
                ctx.guarded(server, ctx.args.dataset, refs, swapped,
                            lambda: _swap_for_bomb(ctx, server.port, dataset, big[0], swapped))
    except SystemExit as e:
        boot_failed(tally, server, e)
    return [tally, swapped]


def _swap_for_bomb(ctx: Ctx, port: int, dataset: str, ref: str, tally: Tally) -> None:
    """The indexed small PNG is replaced on disk by a 225 MP one: explaining it or its thumbnail must be a
    4xx (the file cannot be read within limits), never a 500."""
    bomb_png(ctx.tmp / "bigimages" / SWAPPED)
    for _ in range(ctx.args.rounds):
        for fmt in ("png", "json", "thumb"):
            explain_once(ctx, port, dataset, ref, SWAPPED, fmt, tally, expect=(400, 404, 413))


# ----------------------------------------------------------------------------------------------- 4

def damaged_weights(ctx: Ctx) -> list[Tally]:
    tally = Tally("4 damaged Combiner weights")
    good = REPO / "weights" / "combiner.safetensors"
    if not good.is_file():
        tally.fail(f"{good} is missing: nothing to damage")
        return [tally]
    bad = damaged_combiners(good, ctx.tmp / "weights")
    spec = ",".join([f"good={good}"] + [f"{name}={path}" for name, path in bad.items()])
    server = ctx.serve("weights", {"CIR_COMBINERS": spec})
    try:
        with server:
            refs = server.references(ctx.args.dataset)
            h = health(server.port)
            tally.extra["health_combiners"] = h.get("combiners")
            if h.get("combiners") != ["good"]:
                tally.fail(f"health lists combiners {h.get('combiners')}, expected only ['good']")
            text = server.log_text()
            for name, path in bad.items():
                if path.name not in text:
                    tally.fail(f"the server log does not name the skipped {name} checkpoint {path}")
            ctx.guarded(server, ctx.args.dataset, refs, tally, lambda: _ask_each_combiner(ctx, server, refs, bad,
                                                                                         tally))
    except SystemExit as e:
        boot_failed(tally, server, e)
    return [tally]


def _ask_each_combiner(ctx: Ctx, server: LoggedServer, refs: list, bad: dict, tally: Tally) -> None:
    for _ in range(ctx.args.rounds):
        for name in ["good", *bad]:
            want = (200,) if name == "good" else (400, 404)
            for path in ("/api/search", "/api/explain?format=json"):
                payload = {"mode": "composed", "dataset": ctx.args.dataset, "reference": refs[0],
                           "caption": "is red instead", "combiner": name, "result": refs[1]}
                timeout = ctx.args.explain_timeout if "explain" in path else ctx.args.timeout
                tally.record(f"{path} combiner={name}", post_json(server.port, path, payload, timeout), want)


# ----------------------------------------------------------------------------------------------- 5

def truncated_features(ctx: Ctx) -> list[Tally]:
    tally = Tally("5 features truncated while serving")
    root = ctx.tmp / "features-truncate"
    copy_folder(Path(ctx.args.features) / "catalog-test", root / "catalog-test")
    target = root / "catalog-test" / "features.safetensors"
    server = ctx.serve("truncate", {"CIR_FEATURES": str(root), "CIR_DEFAULT_DATASET": "catalog-test"})
    try:
        with server:
            refs = server.references("catalog-test")
            if health(server.port).get("status") != "ok":
                tally.fail(f"health before the attack: {health(server.port)}")
            queries = probe_queries("catalog-test", refs)
            before = ask_probes(server.port, queries, tally)

            def body() -> None:
                time.sleep(1)
                size = target.stat().st_size
                with open(target, "r+b") as f:
                    f.truncate(size // 2)
                log.info("truncated %s from %d to %d bytes", target, size, size // 2)
                tally.extra["truncated_bytes"] = [size, size // 2]
                end = time.time() + ctx.args.seconds
                while time.time() < end:
                    tally.sent += len(queries)   # the probes are this attack's requests
                    if check_probes(server.port, queries, before, tally, "catalog-test"):
                        tally.fail("an answer changed after the file was truncated")
                        break
            ctx.guarded(server, "catalog-test", refs, tally, body)
            _check_reported(tally, health(server.port), "catalog-test", serving=True)
    except SystemExit as e:
        boot_failed(tally, server, e)
    return [tally]


def _check_reported(tally: Tally, h: dict, name: str, serving: bool) -> None:
    damaged = (h.get("damaged") or {}).get(name)
    tally.extra.setdefault("health", {})[name] = damaged
    if h.get("status") == "ok" or not damaged:
        tally.fail(f"/api/health does not report {name}: status {h.get('status')!r}, damaged "
                   f"{sorted(h.get('damaged') or {})}")
    elif bool(damaged.get("serving")) != serving:
        tally.fail(f"/api/health reports {name} with serving={damaged.get('serving')}, expected {serving}")


# ----------------------------------------------------------------------------------------------- 6

def damaged_folders(ctx: Ctx) -> list[Tally]:
    tally = Tally("6 damaged feature folders")
    src = Path(ctx.args.features) / "catalog-test"
    root = ctx.tmp / "features-folders"
    copy_folder(src, root / "catalog-test")
    dup = duplicate_id_folder(src, root / "dup-names")
    symlink_loop_folder(src, root / "loop-manifest")
    dangling_manifest_folder(src, root / "dangling-manifest")
    damaged = ["dup-names", "loop-manifest", "dangling-manifest"]
    server = ctx.serve("folders", {"CIR_FEATURES": str(root), "CIR_DEFAULT_DATASET": "catalog-test"})
    try:
        with server:
            refs = server.references("catalog-test")
            h = health(server.port)
            tally.extra["health_status"] = h.get("status")
            for name in damaged:
                _check_reported(tally, h, name, serving=False)
                if name in (h.get("datasets") or []):
                    tally.bump("silent")
                    tally.note(f"SILENT: {name} is served (datasets: {h.get('datasets')})")

            def body() -> None:
                for _ in range(ctx.args.rounds):
                    for name in damaged:
                        payload = {"mode": "image", "dataset": name, "reference": dup}
                        tally.record(f"search in {name}", post_json(server.port, "/api/search", payload), (400, 404))
            ctx.guarded(server, "catalog-test", refs, tally, body)
    except SystemExit as e:
        boot_failed(tally, server, e)
    return [tally]


# ----------------------------------------------------------------------------------------------- 7, 8

def connection_slots(ctx: Ctx) -> list[Tally]:
    out = []
    for n in ctx.args.idle:
        tally = Tally(f"7 {n} half-header connections")
        t0 = time.perf_counter()
        try:
            with IdleConnections(ctx.server.port, n, "head", 0, "127.0.0.2") as idle:
                time.sleep(1)   # let the server take them in before the clients start
                ctx.guarded(ctx.server, ctx.args.dataset, ctx.refs, tally, lambda: time.sleep(ctx.args.seconds))
                tally.sent = n + idle.dropped
                tally.extra.update(held_at_end=idle.held(), dropped_by_server=idle.dropped,
                                   failed_connects=idle.failed_connects)
        except OSError as e:
            tally.fail(f"could not open {n} connections: {e}")
        tally.extra["seconds"] = round(time.perf_counter() - t0, 1)
        out.append(tally)
        time.sleep(2)   # the held connections are gone before the next phase
    return out


def small_items(ctx: Ctx) -> list[Tally]:
    tally = Tally("8 form upload, MPO, ids with a newline")
    ctx.guarded(ctx.server, ctx.args.dataset, ctx.refs, tally, lambda: _small_items(ctx, tally))
    return [tally]


def _small_items(ctx: Ctx, tally: Tally) -> None:
    port, ds = ctx.server.port, ctx.args.dataset
    ans = request(port, "POST", "/api/upload", jpeg_bytes(), {"Content-Type": "application/x-www-form-urlencoded"})
    up = tally.record("raw JPEG upload as application/x-www-form-urlencoded", ans, (201,))
    if ans.status == 201 and (up or {}).get("format") != "JPEG":
        tally.fail(f"the form-typed raw upload was stored as {up}")
    mpo = mpo_bytes()
    if mpo is None:
        tally.note("this PIL cannot write a 2-frame MPO: the MPO upload was skipped")
    else:
        data, kind = multipart("file", "phone.jpg", mpo)
        ans = request(port, "POST", "/api/upload", data, {"Content-Type": kind})
        up = tally.record("2-frame MPO upload", ans, (201,))
        if ans.status == 201 and up:
            stored = request(port, "GET", up["url"])
            red, _, blue = first_pixel(stored.body) if stored.status == 200 else (0, 0, 255)
            if up.get("format") != "MPO" or not (red > 200 and blue < 40):
                tally.fail(f"the MPO upload is not its first (red) frame: format {up.get('format')}, "
                           f"pixel red={red} blue={blue}")
    for bad in (ctx.refs[0] + "\n", "a\nb", "x\r\ny"):
        ans = post_json(port, "/api/search", {"mode": "image", "dataset": ds, "reference": bad})
        tally.record(f"search reference={bad!r}", ans, (400,))
        quoted = urllib.parse.quote(bad, safe="")
        for route in ("img", "thumb"):
            tally.record(f"GET /{route}/{ds}/{quoted}", request(port, "GET", f"/{route}/{ds}/{quoted}"), (400,))


RUNNERS: dict[int, Callable[[Ctx], list[Tally]]] = {
    1: escaped_quotes, 2: malformed_chunked, 3: explain_large, 4: damaged_weights, 5: truncated_features,
    6: damaged_folders, 7: connection_slots, 8: small_items}


# ----------------------------------------------------------------------------------------------- main

def run_one(ctx: Ctx, number: int) -> list[Tally]:
    """One attack; an attack that breaks itself (not the server) is a failed row, and the others still run."""
    log.info("attack %d: %s", number, ATTACKS[number])
    t0 = time.perf_counter()
    try:
        tallies = RUNNERS[number](ctx)
    except Exception as e:   # noqa: BLE001 - reported in the table, with the traceback in the log
        log.error("attack %d broke: %s", number, traceback.format_exc())
        tally = Tally(f"{number} {ATTACKS[number]}")
        tally.fail(f"the attack itself failed: {type(e).__name__}: {e}")
        tallies = [tally]
    for t in tallies:
        t.extra.setdefault("seconds", round(time.perf_counter() - t0, 1))
    return tallies


def run_all(ctx: Ctx, chosen: list[int]) -> list[Tally]:
    tallies: list[Tally] = []
    main_ones = [n for n in chosen if n in ON_MAIN_SERVER]
    if main_ones:
        server = ctx.serve("main")
        try:
            with server:
                ctx.server = server
                ctx.refs = server.references(ctx.args.dataset)
                tallies += baseline(ctx)
                for n in main_ones:
                    tallies += run_one(ctx, n)
        except SystemExit as e:
            tally = Tally("0 main server")
            boot_failed(tally, server, e)
            tallies.append(tally)
        ctx.server = None
    for n in chosen:
        if n not in ON_MAIN_SERVER:
            tallies += run_one(ctx, n)
    return sorted(tallies, key=lambda t: int(t.attack.split()[0]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated attack numbers to run (default: all), e.g. 1,3")
    p.add_argument("--quick", action="store_true",
                   help="short run: 5 s phases, 1 round, 1 explanation round, --idle 500 (unless given)")
    p.add_argument("--seconds", type=float, default=None,
                   help="how long the timed attacks (1, 5, 7, the baseline) run, per phase (default 20; --quick 5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeats of the request lists of attacks 2 and 4 (default 3; --quick 1)")
    p.add_argument("--explain-rounds", type=int, default=None,
                   help="explanations of each large image in each format (default 3; --quick 1)")
    p.add_argument("--idle", default=None,
                   help="attack 7: comma-separated numbers of half-header connections (default 500,2500; --quick 500)")
    p.add_argument("--clients", type=int, default=4, help="normal closed-loop search clients during each attack")
    p.add_argument("--timeout", type=float, default=10,
                   help="seconds without an answer that make a request a hang (default 10)")
    p.add_argument("--explain-timeout", type=float, default=60,
                   help="the same for an explanation, which decodes the image (default 60; over --timeout is noted)")
    p.add_argument("--boot-timeout", type=float, default=600,
                   help="seconds a server may take to boot before its attack fails (default 600: a niced run "
                        "on a busy machine boots slowly)")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary folder (images, features, weights, server logs) and print its path")
    add_server_args(p)
    p.set_defaults(dataset="catalog")   # the normal clients' dataset (features/catalog-all may be stale)
    args = p.parse_args(argv)
    chosen = [int(x) for x in args.only.split(",") if x.strip()] if args.only else sorted(ATTACKS)
    unknown = [n for n in chosen if n not in ATTACKS]
    if unknown:
        p.error(f"--only: no attack {unknown}; they are 1-{len(ATTACKS)}")
    args.chosen = chosen
    args.seconds = args.seconds if args.seconds is not None else 5 if args.quick else 20
    args.rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    args.explain_rounds = args.explain_rounds if args.explain_rounds is not None else 1 if args.quick else 3
    try:
        args.idle = [int(x) for x in (args.idle or ("500" if args.quick else "500,2500")).split(",")]
    except ValueError:
        p.error(f"--idle: comma-separated whole numbers, not {args.idle!r}")
    if min(args.seconds, args.rounds, args.explain_rounds, args.clients, args.timeout, *args.idle) <= 0:
        p.error("--seconds, --rounds, --explain-rounds, --clients, --timeout and --idle must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # attack 7 holds thousands of sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="cir-attacks-"))
    log.info("temporary folder %s", tmp)
    try:
        tallies = run_all(Ctx(args, tmp), args.chosen)
    finally:
        if args.keep_temp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if print_report(args, tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())
