"""The page a browser gets while `python3 app.py` prepares: on a first start the catalogue is extracted (about
two minutes, longer on a busy machine) and the models are loaded before the app listens, and the browser used
to get "connection refused" all that time. PreparingServer listens on the app's address meanwhile and answers
every request with a 503 and a small page that reloads itself every few seconds and says how far extraction
is (the extraction's own tqdm bars are read: no counter to thread through cir.extraction); API clients get
the same as JSON, with Retry-After. The app takes the address over once it is loaded.
"""
from __future__ import annotations

import html
import json
import logging
import threading
from typing import Callable, Iterable

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger("app")

REFRESH_S = 3
# The page needs no script or style of its own: it runs under the app's policy (cir.web.assets).
_CSP = "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}"><title>Preparing the catalogue</title></head>
<body><h1>Composed image retrieval</h1><p>{what}</p>
<p>This page reloads itself every {refresh} s; the search page appears when everything is ready.</p></body></html>
"""


def tqdm_progress(bars: Iterable | None = None) -> int | None:
    """Percent done over the open tqdm bars that have a total (the extraction's), None when none is open."""
    if bars is None:
        from tqdm import tqdm
        bars = list(getattr(tqdm, "_instances", []))
    done = total = 0
    for bar in bars:
        if getattr(bar, "total", None):
            done, total = done + min(bar.n, bar.total), total + bar.total
    return None if not total else int(100 * done / total)


class PreparingServer:
    """`with PreparingServer(host, port): prepare(...); create_app(...)` then `app.run(host, port)`: the
    address answers 503 + a self-reloading progress page in between. `phase` says what is being done. If the
    address cannot be taken (another server holds it) this does nothing: app.run then reports it as before."""

    def __init__(self, host: str, port: int, progress: Callable[[], int | None] = tqdm_progress):
        self.host, self.port, self.progress = host, port, progress
        self.phase = "Preparing the catalogue"
        self._server = None
        self._thread: threading.Thread | None = None

    def message(self) -> str:
        pct = self.progress()
        return f"{self.phase}, {pct} %" if pct is not None else f"{self.phase}…"

    def __call__(self, environ, start_response):
        request, what = Request(environ), self.message()
        headers = {"Retry-After": str(REFRESH_S), "Cache-Control": "no-store", "Content-Security-Policy": _CSP}
        if request.path.startswith("/api/"):
            body = json.dumps({"error": "Preparing", "message": f"{what}; try again shortly", "status": 503})
            resp = Response(body, 503, headers, mimetype="application/json")
        else:
            resp = Response(_PAGE.format(refresh=REFRESH_S, what=html.escape(what)), 503, headers,
                            mimetype="text/html")
        return resp(environ, start_response)

    def __enter__(self) -> "PreparingServer":
        try:
            self._server = make_server(self.host, self.port, self, threaded=True)
        except (OSError, SystemExit) as e:   # werkzeug exits when the port is taken
            log.warning("no 'preparing' page on %s:%d: %s", self.host, self.port, e)
            return self
        self._thread = threading.Thread(target=self._server.serve_forever, name="preparing", daemon=True)
        self._thread.start()
        log.info("http://%s:%d/ says how far the preparation is until the app serves", self.host, self.port)
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()   # the app binds the same address next (SO_REUSEADDR is set)
            self._thread.join(5)
            self._server = None
