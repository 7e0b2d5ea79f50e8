"""The web demo: a Flask app over the JSON API in front of serving.Engine, plus its one-page front end.

    python3 app.py                                        # extracts the catalogue once if needed, then serves
    python3 app.py --prepare-only && gunicorn -c gunicorn.conf.py 'app:create_app()'   # production (gevent)

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
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cir import encoders
from cir.extraction import IndexStore, index_name, open_dataset_index
from cir.serving.settings import Settings
from cir.utils import run_cli, setup_logging
from cir.web.app import create_app
from cir.web.guards import QuietRequestHandler

log = logging.getLogger("app")


def ensure_catalog(settings: Settings) -> None:
    """Extract the whole catalogue's features (features/catalog-all) unless they are up to date."""
    if settings.encoder_obj is None:
        settings.encoder_obj = encoders.load(settings.encoder, settings.device, text=settings.stage1)
    store = IndexStore(Path(settings.features_root))
    log.info("checking the catalogue index %s (extracting it takes about two minutes the first time)",
             store.root / index_name("catalog", "all"))
    open_dataset_index(settings.encoder_obj, "catalog", "all", store, settings.data_root)


def parser() -> argparse.ArgumentParser:
    """The command line: the dev server's own flags, then one flag per option of Settings."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface; this server is for one user: serve "
                        "others with gunicorn)")
    p.add_argument("--port", type=int, default=5000, help="port to listen on")
    p.add_argument("--no-extract", action="store_true",
                   help="do not extract the catalogue features first; serve whatever indexes exist")
    p.add_argument("--prepare-only", action="store_true",
                   help="extract the catalogue features if missing, then exit (run before gunicorn)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    Settings.add_arguments(p.add_argument_group(
        "settings", "each also read from its environment variable (a flag given wins), as create_app() does"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    settings = Settings.from_args(args)
    if not args.no_extract:
        ensure_catalog(settings)
    if args.prepare_only:
        return 0
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
