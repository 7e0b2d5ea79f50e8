"""The web demo: a Flask app over the JSON API in front of serving.Engine, plus its one-page front end.

    python3 app.py                                        # extracts the catalogue once if needed, then serves
    python3 app.py --prepare-only && gunicorn -c gunicorn.conf.py 'app:create_app()'   # production (gevent)
    python3 app.py --reextract-unverified                 # also extracts again every folder without checksums

Before serving (and with --prepare-only), the prepare step (cir.serving.prepare) extracts the catalogue index
features/catalog-all when it is missing or stale, and again, in place, when it has no checksums (an older
extraction) or is damaged; the old files stay until the new ones are complete. Other feature folders
without checksums (FashionIQ, CIRR, image folders) are not extracted again unasked, since that can take many
minutes: a warning lists each with the command that does it, and --reextract-unverified does them all.
Meanwhile (and while the models load) the address already answers: a 503 page saying "Preparing the
catalogue, N %" that reloads itself (cir.web.preparing), instead of refusing connections for minutes.

`python3 app.py` runs Werkzeug's development server: for one user on localhost. It has one thread per
connection and drops a connection idle for 15 s, but nothing bounds how many connections it holds; anything
reachable by others is served by gunicorn (gunicorn.conf.py: gevent workers, I/O timeouts, bounded headers).

`create_app(settings)` loads the encoder, the Combiner checkpoints and every dataset's features once and
keeps them in `app.extensions["cir"]` (a serving.Engine); nothing lives at module level. `create_app()` with
no argument reads its settings from the CIR_* environment variables (serving.settings.Settings.from_env),
which is how gunicorn starts it; the flags below are generated from the same declarations. Routes:

    GET  /                                   the page (templates/index.html + static/app.js)
    GET  /api/health, /api/metrics           liveness and each dataset's index backend ("degraded" when one
                                             cannot be reached or a dataset found is damaged); query count,
                                             latency p50/p95, errors
    GET  /api/datasets                       datasets, search modes, models, limits
    GET  /api/datasets/<name>                one dataset, with its tag vocabulary
    GET  /api/datasets/<name>/images         browse references: ?page=&per_page=&q=
    GET  /api/datasets/<name>/random         random references: ?n=&seed=
    GET  /api/datasets/<name>/captions       a reference's annotated captions and targets: ?reference=ID
    POST /api/search                         (GET with a query string works too)
    POST /api/explain                        the /api/search fields + `result`: a Grad-CAM PNG (?format=json: the map)
    POST /api/upload                         multipart field "file" (or the raw image as the body)
    GET  /img/<name>/<id>, /thumb/<name>/<id>, /uploads/<id>, /uploads/<id>/thumb    images, by id only
    GET  /vendor/bootstrap/<file>            Bootstrap's CSS from the pinned package (cir.web.assets)
    GET  /favicon.ico                        the page's icon
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

from cir.serving.prepare import REEXTRACT_FLAG, prepare
from cir.serving.settings import Settings
from cir.utils import run_cli, setup_logging
from cir.web.app import create_app
from cir.web.guards import QuietRequestHandler
from cir.web.preparing import PreparingServer

log = logging.getLogger("app")


def parser() -> argparse.ArgumentParser:
    """The command line: the dev server's own flags, then one flag per option of Settings."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface; this server is for one user: serve "
                        "others with gunicorn)")
    p.add_argument("--port", type=int, default=5000, help="port to listen on")
    p.add_argument("--no-extract", action="store_true",
                   help="skip the prepare step: do not extract the catalogue features first (nor check the "
                        "other folders); serve whatever indexes exist")
    p.add_argument("--prepare-only", action="store_true",
                   help="run the prepare step, then exit (run before gunicorn): extract the catalogue features "
                        "if missing, or again if they have no checksums or are damaged; list the other folders "
                        "without checksums")
    p.add_argument(REEXTRACT_FLAG, action="store_true",
                   help="in the prepare step, also extract again, in place, every other feature folder the "
                        "server would load whose manifest records no checksums (an older extraction: served "
                        "unverified); this can take many minutes per FashionIQ or CIRR split")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    Settings.add_arguments(p.add_argument_group(
        "settings", "each also read from its environment variable (a flag given wins), as create_app() does"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.no_extract and args.reextract_unverified:
        p.error(f"{REEXTRACT_FLAG} is part of the prepare step, which --no-extract skips: drop one of them")
    settings = Settings.from_args(args)
    if args.prepare_only:
        prepare(settings, args.reextract_unverified)
        return 0
    # Until the app is loaded, the address answers "preparing, N %" instead of refusing connections.
    with PreparingServer(args.host, args.port) as waiting:
        if not args.no_extract:
            prepare(settings, args.reextract_unverified)
        waiting.phase = "Loading the models and indexes"
        app = create_app(settings)
    log.info("serving on http://%s:%d/", args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the development server is for one user on localhost (one thread per connection); serve "
                    "other users with gunicorn -c gunicorn.conf.py 'app:create_app()'")
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False,
            request_handler=QuietRequestHandler)
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
