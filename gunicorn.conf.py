"""gunicorn settings for serving the demo in production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Chosen by measurement on a 2-core machine (benchmarks/bench_slow_clients.py and bench_load.py; the numbers
are in README, "Serving in production"): gevent workers, because a connection that sends part of a request
and then nothing costs a greenlet there, not a whole worker (sync) or a thread (gthread), and gunicorn drops
it after `keepalive` seconds. Two such connections froze the old `-w 2` sync line completely.

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
import os

import gunicorn
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
    """gunicorn's gevent worker, monkey-patching with aggressive=False, with a per-client connection limit.

    gunicorn's patch_all() is aggressive: it deletes select.epoll, and trio (imported under transformers by
    huggingface_hub's httpx) reads select.epoll at import time, so every worker failed to boot with
    "cannot import name 'HfApi'". Non-aggressive patching keeps epoll; everything the server waits on (its
    sockets, locks, sleeps) is still cooperative.
    """

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
