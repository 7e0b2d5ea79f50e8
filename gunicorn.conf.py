"""gunicorn settings for serving the demo in production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Chosen by measurement on a 2-core machine (benchmarks/bench_slow_clients.py and bench_load.py; the numbers
are in README, "Serving in production"): gevent workers, because a connection that sends part of a request
and then nothing costs a greenlet there, not a whole worker (sync) or a thread (gthread), and gunicorn drops
it after `keepalive` seconds. Two such connections froze the old `-w 2` sync line completely.

Signals (benchmarks/bench_signals.py; docs/serving.md, "Signals: reload, stop, a killed worker"): SIGHUP
reloads without a pause, since an old worker is stopped only once a newer one has loaded the app (Arbiter,
installed by on_starting); SIGTERM stops without resetting a connection, since the listener drops new
connection attempts and the workers take in what is queued on it before they close it (Arbiter.handle_term,
GeventWorker.handle_exit). SIGINT and SIGQUIT stay gunicorn's quick stop, SIGKILL loses what it kills.

Settings read from the environment, where a deployment differs from this machine:
    GUNICORN_BIND            address:port to listen on (default 0.0.0.0:8000)
    GUNICORN_WORKERS         worker processes (default 2: one per core of the 2-core machine it was measured on)
    GUNICORN_WORKER_CLASS    gevent (default), or gthread / sync to compare (see the benchmarks)
    GUNICORN_THREADS         threads per gthread worker (default 8; ignored by gevent)
    GUNICORN_REUSE_CONNECTIONS  1: keep connections open between requests (default 0: one request each)
    GUNICORN_IO_TIMEOUT      seconds a request body or a response write may stall before the connection is
                             dropped (default 15)
    GUNICORN_SERVER_HEADER   what the Server response header says (default "cir-demo": no product, no version)
    GUNICORN_PER_CLIENT_CONNECTIONS  open connections one client address may hold per worker (default 64; 0: no
                             limit, which is what to set behind a proxy: every connection then comes from it)
gunicorn's own flags given on the command line override everything here.
"""
import collections
import contextlib
import ctypes
import mmap
import os
import signal
import socket
import struct
import sys
import time

import gevent
import gunicorn
import gunicorn.arbiter
import gunicorn.http.wsgi
from gevent import monkey
from gevent import socket as gsocket
from gunicorn.workers import ggevent


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a whole number") from None


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, monkey-patching with aggressive=False, with a per-client connection limit,
    emptying the listener's queue on a stop.

    gunicorn's patch_all() is aggressive: it deletes select.epoll, and trio (imported under transformers by
    huggingface_hub's httpx) reads select.epoll at import time, so every worker failed to boot with
    "cannot import name 'HfApi'". Non-aggressive patching keeps epoll; everything the server waits on (its
    sockets, locks, sleeps) is still cooperative.
    """

    # Arbiter.handle_term holds back new connections only for workers that then empty the queue (not gthread
    # or sync, the comparison settings): an attribute, since a reload re-reads this file into a new class.
    DRAINS_ON_STOP = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._per_client: collections.Counter = collections.Counter()   # address -> connections open now

    def patch(self) -> None:
        monkey.patch_all(aggressive=False)
        # As gunicorn's patch(): re-wrap the listening sockets as gevent sockets.
        self.sockets = [gsocket.socket(s.FAMILY, gsocket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets]

    def handle(self, listener, client, addr) -> None:
        """Serve the connection unless its address already holds PER_CLIENT_CONNECTIONS of this worker's.

        worker_connections bounds the total: one address re-opening half-sent requests as fast as they are
        closed could hold all of them, and everyone else waited in the listen queue (2,500 such connections
        made every normal search take over a second). Refused connections get a 503 and are closed at once.
        """
        peer = addr[0] if isinstance(addr, tuple) and addr else None
        held = self._per_client
        if PER_CLIENT_CONNECTIONS and peer is not None and held[peer] >= PER_CLIENT_CONNECTIONS:
            with contextlib.suppress(OSError):
                client.settimeout(0)   # never wait on a client that does not read
                client.send(TOO_MANY)
            client.close()
            return
        held[peer] += 1
        try:
            super().handle(listener, client, addr)
        finally:
            held[peer] -= 1
            if held[peer] <= 0:
                del held[peer]

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM: on a stop, take in what waits on the listener first; else (retired after a reload) as gunicorn.

        gunicorn's worker closes its listening socket within a second and then finishes the requests it holds.
        When the last descriptor of that socket closes (on a stop: the master closed its own first), the kernel
        resets every connection still queued on it, accepted by the kernel with their requests sent
        (bench_signals.py: 7 resets with 8 clients, and 7 connections queued at the last sample before the
        close). On a stop the master's handle_term has made the listener drop new connection attempts, so the
        queue only shrinks: accept until it is empty, then stop. On a reload the master and the new workers
        keep the listener open, so nothing is reset and the worker stops at once. Out of the signal handler,
        as gunicorn does for SIGQUIT and SIGUSR1.
        """
        gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self) -> None:
        if any(_dropping(s) for s in self.sockets):
            # Bounded: what this worker accepts must still finish within graceful_timeout.
            deadline = time.monotonic() + DRAIN_S
            while any(_queued(s) for s in self.sockets) and time.monotonic() < deadline:
                gevent.sleep(0.01)
            left = sum(_queued(s) for s in self.sockets)
            if left:
                self.log.warning("Worker %s stops with %d connections queued on the listener: if it is the "
                                 "last to close it, they are reset", self.pid, left)
        self.alive = False  # gunicorn's run loop: close the listener, finish the requests in flight, exit


def _queued(sock) -> int:
    """Connections waiting in a TCP listener's accept queue (Linux TCP_INFO, as gunicorn's backlog metric reads
    it); 0 where that cannot be read (another system, a Unix socket)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack("B" * 8 + "I" * 24, info)[12]  # tcpi_unacked: for a listener, its queue
    except (AttributeError, OSError, struct.error):
        return 0


# One classic BPF instruction, "return 0": keep no byte of the packet, i.e. drop it (struct sock_filter).
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, k = 0
_SO_ATTACH_FILTER = _SO_GET_FILTER = 26  # Linux; the socket module does not name them


def _dropping(sock) -> bool:
    """Whether a socket filter is attached to the listener (by the master's handle_term, on a stop)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, _SO_GET_FILTER, 8))  # b"" without a filter
    except (AttributeError, OSError):
        return False


def _drop_new_connections(sock, log) -> None:
    """Make a TCP listener drop every incoming packet: new connection attempts (SYNs) go unanswered, while
    connections already in its accept queue stay as they are (each has a socket of its own, without the filter).

    A listening socket cannot refuse new connections and keep its queue: only closing it refuses, and closing
    resets the queue. Dropped SYNs are retried by the client (after 1 s, then 2 s, ...) and, once the listener
    is closed, answered with a refusal: a request that never reached the server, safe to retry elsewhere.
    """
    if not sys.platform.startswith("linux") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    program = ctypes.create_string_buffer(_DROP_ALL)
    try:  # struct sock_fprog {unsigned short len; struct sock_filter *filter}; the kernel copies the program
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HP", 1, ctypes.addressof(program)))
    except OSError as e:
        log.warning("cannot hold back new connections while stopping (%s): the ones queued at the last "
                    "close are reset", e)


def _is_ready(worker) -> bool:
    """Whether a worker has loaded the app (post_worker_init set its flag); one without a flag counts as ready."""
    flag = getattr(worker, "ready_flag", None)
    return flag is None or flag[0] == 1


class Arbiter(gunicorn.arbiter.Arbiter):
    """gunicorn's master, changed in how it replaces and stops workers (on_starting installs it).

    Reload (SIGHUP): gunicorn starts the new workers and stops the old ones at once; the new ones then spend
    ~10 s loading the models (a minute and more on busy cores) and nothing is answered meanwhile
    (bench_signals.py: 74 s without an answer, 16 of 172 requests timed out). Here a surplus (older) worker is
    stopped only once a newer worker is ready to take its place, so the old ones serve until the new ones
    can (with it, on the same busy cores: 1,905 answers, none failed, at most 0.24 s between two). Stop (SIGTERM): the
    listeners drop new connection attempts first, so the workers can empty the accept queue before the last
    one closes it (GeventWorker.handle_exit).
    """

    def handle_term(self) -> None:
        # Only when this master alone holds the listeners: under systemd socket activation the socket
        # outlives us (nothing is reset, the next start serves the queue), and after a USR2 upgrade or with
        # reuse_port another master's workers still accept on it, so dropping would take it from them.
        alone = self.reexec_pid == self.master_pid == 0 and not self.systemd and not self.cfg.reuse_port
        if alone and getattr(self.worker_class, "DRAINS_ON_STOP", False):
            for listener in self.LISTENERS:
                _drop_new_connections(listener.sock, self.log)
        super().handle_term()

    def manage_workers(self) -> None:
        self._retire_replaced()
        if len(self.WORKERS) <= self.num_workers:
            super().manage_workers()  # spawns the missing ones (and logs its metrics); none is surplus to stop

    def reap_workers(self) -> None:
        super().reap_workers()
        # reload() waits for the old workers to exit (up to graceful_timeout) calling only this: retire them
        # from here too, else they would go only after that wait.
        self._retire_replaced()

    def _retire_replaced(self) -> None:
        """Stop the oldest workers beyond `workers`, each only while more workers are ready than needed; one
        still loading goes at once (a newer generation replaces it: two reloads in a row)."""
        live = sorted((w for w in self.WORKERS.values() if not getattr(w, "retiring", False)), key=lambda w: w.age)
        ready = sum(_is_ready(w) for w in live)
        for worker in live[:max(0, len(live) - self.num_workers)]:
            if _is_ready(worker):
                if ready <= self.num_workers:
                    continue  # the newer ones are still loading: this one keeps serving
                ready -= 1
            worker.retiring = True  # stopped once: not counted, not signalled again while it finishes
            self.log.info("Retiring worker (pid: %s): a newer one is ready", worker.pid)
            self.kill_worker(worker.pid, signal.SIGTERM)


# Listen on every interface by default, as the README's line always did; put a proxy in front for TLS.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Queries are CPU-bound (text encoder, Combiner, scan): one worker per core; each loads the models (~0.5 GB).
workers = _int_env("GUNICORN_WORKERS", 2)
# gevent: idle or slow connections wait in greenlets, so they cannot take the workers away from real queries
# (GeventWorker below: gunicorn's, with a monkey-patching the app's imports survive).
WORKER_CLASS = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
worker_class = GeventWorker if WORKER_CLASS == "gevent" else WORKER_CLASS
# Only for gthread (a comparison setting): threads per worker. 1 otherwise, since gunicorn quietly turns
# "sync" with more than one thread into gthread.
threads = _int_env("GUNICORN_THREADS", 8 if WORKER_CLASS == "gthread" else 1)
# Open connections per gevent worker. Each costs a greenlet and a file descriptor only; the limit bounds
# memory under a connection flood (2 x 1000 stays far below the 20,000 open files allowed here).
worker_connections = 1000
# A worker silent this long is killed and restarted. Generous: booting one loads the encoder and every index
# (seconds, more on a cold disk cache), and the arbiter counts that as silence too. A query takes ~10 ms.
timeout = 120
# On stop or restart, in-flight requests get this long to finish (queries ~10 ms, uploads well under 1 s).
graceful_timeout = 15
# A stopping worker first takes in the connections queued on the listener, for at most this long (see
# GeventWorker.handle_exit): a third of graceful_timeout, so what it accepts last still has 10 s to finish.
DRAIN_S = graceful_timeout / 3
# Seconds an idle kept-alive connection stays open. Under gevent this also bounds how long the whole head of
# every request may take to arrive (gunicorn reads it under this timeout), which is what ends a slow client
# that sends half a header; 0 would switch that guard off.
keepalive = 5
# GET /api/search carries the caption in the query string: 1,000 non-ASCII characters percent-encode to up
# to ~9 KB, so allow gunicorn's maximum instead of its 4 KB default (POST bodies are not affected).
limit_request_line = 8190
# Browsers send ~20 header fields; 50 leaves room for a proxy's and bounds the parsing work per request.
limit_request_fields = 50
# The app sets no cookies, so no header needs more than gunicorn's default 8 KB.
limit_request_field_size = 8190
# No preloading: gevent must patch the standard library in each worker before the app imports torch and
# threading, and a worker that loads the models itself restarts cleanly on its own.
preload_app = False
# gunicorn 25+ opens an unauthenticated control socket in $HOME by default, one path shared by every gunicorn
# of the user (benchmarks running side by side would collide on it); nothing here uses gunicornc.
control_socket_disable = True

IO_TIMEOUT = float(_int_env("GUNICORN_IO_TIMEOUT", 15))
# Connections one client address may hold open per worker (GeventWorker.handle). A browser opens at most 6 per
# host; 64 leaves room for a whole office behind one NAT address, and an attacker's flood from one address then
# holds at most 64 x workers of the 1000 x workers slots. Behind a proxy every connection comes from the proxy's
# address: set 0 there and limit per client in the proxy (docs/serving.md has an nginx recipe).
PER_CLIENT_CONNECTIONS = _int_env("GUNICORN_PER_CLIENT_CONNECTIONS", 64)
_TOO_MANY_BODY = b"too many open connections from your address\n"
TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY))
# One request per connection (the answer says "Connection: close"). A gevent or gthread worker keeps a
# kept-alive connection to itself, so clients spread unevenly over the workers stay uneven: with 16
# persistent clients one worker queued most of them (p99 ~1 s against ~0.4 s). A new connection per request
# goes to whichever worker is free, as with sync workers; on a local network or behind a proxy (which talks
# to gunicorn without keep-alive anyway) it costs a fraction of a millisecond. GUNICORN_REUSE_CONNECTIONS=1
# keeps connections open instead.
REUSE_CONNECTIONS = _int_env("GUNICORN_REUSE_CONNECTIONS", 0) == 1

# No version banner: gunicorn sends `Server: gunicorn` on every response and puts `gunicorn/<version>` into
# each request's SERVER_SOFTWARE. Both come from module globals that gunicorn.http.wsgi copied at import;
# workers are forked from this process after this file ran, so they inherit the replacements.
SERVER_HEADER = os.environ.get("GUNICORN_SERVER_HEADER", "cir-demo")
gunicorn.SERVER = gunicorn.SERVER_SOFTWARE = SERVER_HEADER
gunicorn.http.wsgi.SERVER = gunicorn.http.wsgi.SERVER_SOFTWARE = SERVER_HEADER


def pre_request(worker, req) -> None:
    """Before the app runs: a per-read/write timeout on the connection, and one request per connection.

    gunicorn bounds the head (see keepalive) but not the body or the response: a client that announces a body
    and stalls, or never reads the answer, would hold its greenlet (gevent) or thread (gthread) for good.
    With a socket timeout a stalled read ends in werkzeug's ClientDisconnected (a 400) and a stalled write
    in a dropped connection. It is per operation, so a slow but moving 10 MB upload is not cut off.
    """
    sock = getattr(req.unreader, "sock", None)
    if sock is not None:
        sock.settimeout(IO_TIMEOUT)
    if not REUSE_CONNECTIONS:
        req.must_close = True  # see REUSE_CONNECTIONS


def on_starting(server) -> None:
    """In the master, before any worker: our Arbiter's reload and stop (see its docstring). gunicorn's command
    line builds its own arbiter, so the class is swapped on the instance; a reload re-reads this file but
    keeps the instance."""
    server.__class__ = Arbiter


def pre_fork(server, worker) -> None:
    """In the master: a one-byte flag shared with the worker about to be forked (anonymous shared memory, no
    file), which post_worker_init sets once the app is loaded; the Arbiter retires old workers by it."""
    worker.ready_flag = mmap.mmap(-1, 1)
    worker.forked_at = time.monotonic()


def post_worker_init(worker) -> None:
    """In the worker, once the app (models, indexes) is loaded and before it accepts: say it is ready."""
    if getattr(worker, "ready_flag", None) is not None:
        worker.ready_flag[0] = 1
    loaded_s = time.monotonic() - getattr(worker, "forked_at", time.monotonic())
    worker.log.info("Worker ready (pid: %s), app loaded in %.1f s", worker.pid, loaded_s)
