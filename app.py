"""The web demo: a Flask app over the JSON API in front of service.Engine, plus its one-page front end.

    python3 app.py                                        # extracts the catalogue once if needed, then serves
    python3 app.py --prepare-only && gunicorn -w 2 -b 0.0.0.0:8000 --timeout 120 'app:create_app()'

`create_app(config)` loads the encoder, the Combiner checkpoints and every dataset's features once and keeps
them in `app.extensions["cir"]` (a service.Engine); nothing lives at module level. `create_app()` with no
argument reads its settings from environment variables (see AppConfig.from_env), which is how gunicorn
starts it. Routes:

    GET  /                                   the page (templates/index.html + static/app.js)
    GET  /api/health, /api/metrics           liveness and each dataset's index backend ("degraded" when one
                                             cannot be reached); query count, latency p50/p95, errors
    GET  /api/datasets                       datasets, search modes, models, limits
    GET  /api/datasets/<name>                one dataset, with its tag vocabulary
    GET  /api/datasets/<name>/images         browse references: ?page=&per_page=&q=
    GET  /api/datasets/<name>/random         random references: ?n=&seed=
    POST /api/search                         (GET with a query string works too)
    POST /api/upload                         multipart field "file" (or the raw image as the body)
    GET  /img/<name>/<id>, /thumb/<name>/<id>, /uploads/<id>, /uploads/<id>/thumb    images, by id only
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException

from service.datasets import Dataset
from service.engine import Engine, Settings
from service.errors import ApiError, BadInput, NotFound
from service.inputs import MAX_CAPTION_CHARS, MAX_FILTER_CHARS, parse_int, validate_text
from service.uploads import default_upload_dir
from utils import REPO_DIR, run_cli, setup_logging
from web_guards import QuietRequestHandler, install_guards, parse_json_object

log = logging.getLogger("app")
MB = 1024 * 1024
ATTRIBUTION = ("Product photos: “Fashion Product Images (Small)” (Myntra catalogue), published for research use. "
               "FashionIQ annotations: CDLA licence. CIRR annotations: MIT licence.")


@dataclass
class AppConfig:
    """Everything the demo is started with. Paths may be relative to the working directory."""

    data_root: str | None = None            # dataset images root, overriding the one each index's manifest
                                            # recorded; None: the recorded root, else ../shared/data
                                            # (from_env fills it from $CIR_DATA_ROOT)
    features_root: Path = REPO_DIR / "features"   # index folders (features/<name>/manifest.json ...)
    encoder: str = "lite"                   # encoder name (must be the one the indexes were extracted with)
    device: str = "auto"                    # auto (CUDA when present), cpu, cuda, cuda:1 ...
    datasets_file: Path | None = None       # JSON list of datasets; None: every index under features_root
    default_dataset: str = "catalog-all"    # dataset the page opens with (falls back to another catalogue)
    combiners: Mapping[str, str] | None = None         # name -> Combiner checkpoint; None: the shipped
                                                       # weights/combiner*.safetensors that exist
    text_checkpoints: Mapping[str, str] | None = None  # extra text sides, name -> stage-1 checkpoint;
                                                       # None: "stage1" when weights/lite-text exists
    upload_dir: Path = field(default_factory=default_upload_dir)  # where uploads are stored (re-encoded JPEG
                                            # + features .npy): $XDG_CACHE_HOME or ~/.cache/cir-demo/uploads
    max_upload_bytes: int = 10 * MB         # larger uploads get 413
    max_image_pixels: int = 25_000_000      # width x height above this gets 413: every phone's default photo
                                            # fits (12 MP; 24.5 MP on recent iPhone Pros); a 48-200 MP
                                            # full-resolution shot must be scaled down (see README, limits)
    upload_quota_mb: float = 512            # all stored uploads together; the oldest are deleted beyond it
    upload_quota_count: int = 1000          # stored uploads at most; the oldest are deleted beyond it
    upload_ttl_s: float = 3600              # an upload is deleted this long after it was stored
    upload_decodes: int = 2                 # uploads decoded at once per worker; more wait 2 s, then get 503
    default_k: int = 24                     # results per query when the request does not say
    max_k: int = 200                        # largest k a request may ask for
    text_cache_size: int = 4096             # LRU of encoded captions (per text encoder)
    upload_cache_size: int = 256            # LRU of upload features kept in memory (they are on disk too)
    thumb_size: int = 256                   # long side of thumbnails, px
    thumb_cache_size: int = 2048            # LRU of thumbnail JPEGs in memory
    query_threads: int | None = 1           # torch threads while a query encodes (1: one caption gains nothing
                                            # from more, and a busy CPU makes them wait); None: leave as is
    encoder_obj: Any = None                 # an already-loaded Encoder to use (CLI, tests, benchmarks)
    warm_up: bool = True                    # run one query per text encoder at start-up
    index_backend: str = "exact"            # ranking backend of every dataset (index.py): exact, faiss[:hnsw|
                                            # ivfpq][?...], milvus (milvus-lite beside the features), milvus:URI

    # environment variable -> field, for create_app() without arguments (gunicorn)
    ENV = {"CIR_DATA_ROOT": "data_root", "CIR_FEATURES": "features_root", "CIR_ENCODER": "encoder",
           "CIR_DEVICE": "device", "CIR_DATASETS_FILE": "datasets_file", "CIR_DEFAULT_DATASET": "default_dataset",
           "CIR_COMBINERS": "combiners", "CIR_TEXT_ENCODERS": "text_checkpoints", "CIR_UPLOAD_DIR": "upload_dir",
           "CIR_MAX_UPLOAD_MB": "max_upload_bytes", "CIR_MAX_PIXELS": "max_image_pixels",
           "CIR_DEFAULT_K": "default_k", "CIR_TEXT_CACHE": "text_cache_size", "CIR_QUERY_THREADS": "query_threads",
           "CIR_INDEX_BACKEND": "index_backend", "CIR_UPLOAD_QUOTA_MB": "upload_quota_mb",
           "CIR_UPLOAD_QUOTA_COUNT": "upload_quota_count", "CIR_UPLOAD_TTL_S": "upload_ttl_s",
           "CIR_UPLOAD_DECODES": "upload_decodes"}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AppConfig":
        """Defaults, overridden by the CIR_* variables that are set (see ENV).

        CIR_MAX_UPLOAD_MB is in megabytes; CIR_COMBINERS and CIR_TEXT_ENCODERS are `name=path,name=path`
        (an empty value means none).
        """
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for var, name in cls.ENV.items():
            value = env.get(var)
            if value is None or (value == "" and name not in ("combiners", "text_checkpoints")):
                continue
            try:
                if name in ("features_root", "upload_dir", "datasets_file"):
                    kw[name] = Path(value).expanduser()
                elif name == "max_upload_bytes":
                    kw[name] = int(float(value) * MB)
                elif name in ("max_image_pixels", "default_k", "text_cache_size", "query_threads",
                              "upload_quota_count", "upload_decodes"):
                    kw[name] = int(value)
                elif name in ("upload_quota_mb", "upload_ttl_s"):
                    kw[name] = float(value)
                elif name in ("combiners", "text_checkpoints"):
                    kw[name] = _name_paths(value)
                else:
                    kw[name] = value
            except ValueError as e:
                raise ValueError(f"${var}={value!r}: {e}") from None
        return cls(**kw)

    def settings(self) -> Settings:
        return Settings(features_root=Path(self.features_root), upload_dir=Path(self.upload_dir),
                        encoder=self.encoder, device=self.device, data_root=self.data_root,
                        datasets_file=Path(self.datasets_file) if self.datasets_file else None,
                        default_dataset=self.default_dataset, combiners=self.combiners,
                        text_checkpoints=self.text_checkpoints, max_upload_bytes=self.max_upload_bytes,
                        max_image_pixels=self.max_image_pixels, upload_quota_mb=self.upload_quota_mb,
                        upload_quota_count=self.upload_quota_count, upload_ttl_s=self.upload_ttl_s,
                        upload_decodes=self.upload_decodes, default_k=self.default_k, max_k=self.max_k,
                        text_cache_size=self.text_cache_size, upload_cache_size=self.upload_cache_size,
                        thumb_cache_size=self.thumb_cache_size, thumb_size=self.thumb_size,
                        query_threads=self.query_threads,
                        encoder_obj=self.encoder_obj, warm_up=self.warm_up, index_backend=self.index_backend)


def _name_paths(value: str) -> dict[str, str]:
    """'a=path1,b=path2' -> {'a': 'path1', 'b': 'path2'}; a bare path is named after its file."""
    out = {}
    for item in filter(None, (v.strip() for v in value.split(","))):
        name, sep, path = item.partition("=")
        out[name if sep else Path(item).stem] = path if sep else item
    return out


# ----------------------------------------------------------------------------------------------- the app

def create_app(config: AppConfig | None = None) -> Flask:
    """Build the demo app; loads everything once (a few seconds; indexes must already be extracted)."""
    config = config or AppConfig.from_env()
    engine = Engine.load(config.settings())
    app = Flask(__name__, template_folder=str(REPO_DIR / "templates"), static_folder=str(REPO_DIR / "static"))
    # bootstrap="cdn": this page loads Bootstrap from the CDN (the offline page passes its own setting here).
    install_guards(app, max_upload_bytes=config.max_upload_bytes, upload_max_age_s=config.upload_ttl_s, bootstrap="cdn")
    app.json.sort_keys = False  # keep results in rank order and fields in a readable order
    app.extensions["cir"] = engine
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.after_request(_count_errors)
    return app


def _engine() -> Engine:
    return current_app.extensions["cir"]


def _error(status: int, message: str, error: str) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message, "status": status}), status


def _api_error(e: ApiError):
    return _error(e.status, e.message, type(e).__name__)


def _http_error(e: HTTPException):
    status = e.code or 500
    if status == 413:
        limit = _engine().settings.max_upload_bytes
        message = f"the request is too large: the limit is {limit / MB:g} MB ({limit:,} bytes)"
    elif status == 404:
        message = f"no such page or API route: {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    else:
        message = e.description or e.name
    return _error(status, message, e.name)


def _internal_error(e: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal error; the server log has the details", "Internal Server Error")


def _count_errors(resp: Response) -> Response:
    if resp.status_code >= 400:
        _engine().metrics.error(resp.status_code)
    return resp


bp = Blueprint("cir", __name__)


def _image_json(ds: Dataset, name: str) -> dict:
    return {**ds.info(name), "url": url_for("cir.image", name=ds.name, image_id=name),
            "thumb": url_for("cir.thumb", name=ds.name, image_id=name)}


def _upload_json(uid: str) -> dict:
    return {"id": uid, "kind": "upload", "title": "Your upload", "attrs": {},
            "url": url_for("cir.upload_image", uid=uid), "thumb": url_for("cir.upload_thumb", uid=uid)}


def _params() -> dict[str, Any]:
    """Request parameters: the query string, then a JSON object body or form fields on top."""
    params: dict[str, Any] = request.args.to_dict()
    if request.method != "POST":
        return params
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        params.update(request.form.to_dict())
        return params
    data = request.get_data(cache=True)
    if data.strip():
        params.update(parse_json_object(data))
    return params


@bp.get("/")
def index():
    eng = _engine()
    return render_template("index.html", default_dataset=eng.default_dataset, attribution=ATTRIBUTION,
                           max_upload_mb=eng.settings.max_upload_bytes // MB, max_caption=MAX_CAPTION_CHARS)


@bp.get("/api/health")
def health():
    """Liveness (always 200 while the process serves) and readiness per dataset: "degraded" when an index
    backend cannot serve (e.g. its Milvus server is down), with the reason in `backends`."""
    eng = _engine()
    backends = eng.health()
    status = "ok" if all(b["ok"] for b in backends.values()) else "degraded"
    return jsonify({"status": status, "encoder": eng.encoder.name, "datasets": list(eng.datasets),
                    "backends": backends, "combiners": list(eng.combiners), "text_encoders": list(eng.text_sides),
                    "uptime_s": round(time.time() - eng.metrics.started, 1)})


@bp.get("/api/metrics")
def metrics():
    eng = _engine()
    cache = eng.text_cache
    return jsonify({**eng.metrics.snapshot(),
                    "text_cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses}})


@bp.get("/api/datasets")
def datasets():
    eng = _engine()
    s = eng.settings
    return jsonify({"default": eng.default_dataset, "datasets": [d.describe() for d in eng.datasets.values()],
                    "modes": eng.modes(), "models": eng.models(),
                    "limits": {"max_upload_bytes": s.max_upload_bytes, "max_image_pixels": s.max_image_pixels,
                               "max_caption_chars": MAX_CAPTION_CHARS, "default_k": s.default_k,
                               "max_k": s.max_k}})


@bp.get("/api/datasets/<name>")
def dataset(name: str):
    ds = _engine().dataset(name)
    vocab = {k: [{"value": v, "count": c} for v, c in vals] for k, vals in ds.vocabulary.items()}
    return jsonify({**ds.describe(), "vocabulary": vocab})


@bp.get("/api/datasets/<name>/images")
def images(name: str):
    ds = _engine().dataset(name)
    page = parse_int(request.args.get("page"), "page", 1, 10**9, 1)
    per_page = parse_int(request.args.get("per_page"), "per_page", 1, 100, 24)
    q = request.args.get("q", "")
    q = validate_text(q, "filter", MAX_FILTER_CHARS) if q.strip() else ""
    names, total = ds.browse(q, page, per_page)
    return jsonify({"dataset": ds.name, "q": q, "page": page, "per_page": per_page, "total": total,
                    "pages": max(1, -(-total // per_page)), "images": [_image_json(ds, n) for n in names]})


@bp.get("/api/datasets/<name>/random")
def random_images(name: str):
    ds = _engine().dataset(name)
    n = parse_int(request.args.get("n"), "n", 1, 100, 24)
    seed = request.args.get("seed")
    seed = parse_int(seed, "seed", 0, 2**31 - 1, 0) if seed not in (None, "") else None
    return jsonify({"dataset": ds.name, "images": [_image_json(ds, x) for x in ds.sample(n, seed)]})


@bp.route("/api/search", methods=["GET", "POST"])
def api_search():
    t0 = time.perf_counter()
    eng = _engine()
    req = eng.parse(_params())
    out = eng.run(req)
    ds = eng.dataset(req.dataset)
    results = [{"rank": i + 1, **_image_json(ds, n), "score": round(s, 4)} for i, (n, s) in enumerate(out["results"])]
    group = out.pop("group")
    out.update({
        "reference": (_upload_json(req.upload) if req.upload else
                      {**_image_json(ds, req.reference), "kind": "dataset"} if req.reference else None),
        "results": results, "ids": [r["id"] for r in results], "scores": [r["score"] for r in results],
        "urls": [r["url"] for r in results],
        "group": None if group is None else [{"rank": i + 1, **_image_json(ds, n), "score": round(s, 4)}
                                             for i, (n, s) in enumerate(group)],
    })
    out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    eng.metrics.query(req.mode, out["latency_ms"])
    return jsonify(out)


@bp.post("/api/upload")
def api_upload():
    eng = _engine()
    f = request.files.get("file") or request.files.get("image")
    if f is not None:
        data = f.read(eng.settings.max_upload_bytes + 1)
    elif request.mimetype == "multipart/form-data":
        raise BadInput("no file in the upload: send the image in a multipart field named 'file'")
    else:
        data = request.get_data()
    res = eng.uploads.add(data)
    eng.metrics.upload()
    return jsonify({**_upload_json(res.id), "width": res.width, "height": res.height, "format": res.format,
                    "encode_ms": round(res.encode_ms, 3)}), 201


_IMMUTABLE = 86400  # image files never change under an id: let browsers cache them for a day


@bp.get("/img/<name>/<path:image_id>")
def image(name: str, image_id: str):
    rec = _engine().dataset(name).record(image_id)
    if not rec.path.is_file():
        raise NotFound(f"the file of image {image_id!r} is missing on the server")
    return send_file(rec.path, max_age=_IMMUTABLE)


@bp.get("/thumb/<name>/<path:image_id>")
def thumb(name: str, image_id: str):
    eng = _engine()
    rec = eng.dataset(name).record(image_id)
    return _thumb_response(eng, ("d", name, image_id), rec.path)


@bp.get("/uploads/<uid>")
def upload_image(uid: str):
    return send_file(_engine().uploads.path(uid), mimetype="image/jpeg", max_age=_IMMUTABLE)


@bp.get("/uploads/<uid>/thumb")
def upload_thumb(uid: str):
    eng = _engine()
    return _thumb_response(eng, ("u", uid), eng.uploads.path(uid))


def _thumb_response(eng: Engine, key: tuple, path: Path) -> Response:
    try:
        data = eng.thumbnail(key, path)
    except FileNotFoundError:
        raise NotFound("the image file is missing on the server") from None
    except (OSError, ValueError, SyntaxError):
        raise NotFound("the image file on the server cannot be read") from None
    resp = Response(data, mimetype="image/jpeg")
    resp.cache_control.public = True
    resp.cache_control.max_age = _IMMUTABLE
    return resp


# ----------------------------------------------------------------------------------------------- command line

def ensure_catalog(config: AppConfig) -> None:
    """Extract the whole catalogue's features (features/catalog-all) unless they are up to date."""
    import data_utils
    import encoders
    from extract_features import ensure_index, index_name
    if config.encoder_obj is None:
        config.encoder_obj = encoders.load(config.encoder, config.device)
    root = data_utils.resolve_data_root("catalog", config.data_root)
    out = Path(config.features_root) / index_name("catalog", "all")
    log.info("checking the catalogue index %s (extracting it takes about two minutes the first time)", out)
    ensure_index(data_utils.catalog_images(root, "all"), config.encoder_obj, out,
                 info={"dataset": "catalog", "split": "all", "data_root": str(root)})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=5000, help="port to listen on")
    p.add_argument("--data-root", default=None,
                   help="dataset images root, overriding the one recorded when each index was extracted "
                        "(default: $CIR_DATA_ROOT, else the recorded root, else ../shared/data)")
    p.add_argument("--features", default=None, help="features root holding the index folders (default: features/)")
    p.add_argument("--datasets-file", default=None,
                   help="JSON list of datasets to serve ([{\"features\": DIR, \"name\": ..., \"data_root\": ...}]); "
                        "default: every index folder under the features root")
    p.add_argument("--default-dataset", default=None, help="dataset the page opens with (default: catalog-all)")
    p.add_argument("--encoder", default=None, help="encoder name: lite, hf:<id or dir>, openai:<model> (default lite)")
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda ... (default auto)")
    p.add_argument("--combiner", action="append", default=None, metavar="NAME=PATH",
                   help="a Combiner checkpoint to offer (repeatable); default: the shipped "
                        "weights/combiner.safetensors and weights/combiner-stage1.safetensors that exist")
    p.add_argument("--text-encoder", action="append", default=None, metavar="NAME=PATH",
                   help="a stage-1 text checkpoint to offer (repeatable); default: stage1 = "
                        "weights/lite-text.safetensors when it exists")
    p.add_argument("--upload-dir", default=None,
                   help="where uploads are stored (default: $XDG_CACHE_HOME/cir-demo/uploads, else "
                        "~/.cache/cir-demo/uploads)")
    p.add_argument("--upload-quota-mb", type=float, default=None,
                   help="total size of the stored uploads; the oldest are deleted beyond it (default 512)")
    p.add_argument("--upload-quota-count", type=int, default=None,
                   help="number of stored uploads; the oldest are deleted beyond it (default 1000)")
    p.add_argument("--upload-ttl", type=float, default=None, metavar="SECONDS",
                   help="uploads are deleted this long after they were stored (default 3600)")
    p.add_argument("--upload-decodes", type=int, default=None,
                   help="uploads decoded at once per process; more wait, then get 503 (default 2)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="upload size limit in MB (default 10)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest width x height an upload may have (decompression-bomb guard; default 25,000,000)")
    p.add_argument("-k", type=int, default=None, help="results per query by default (default 24)")
    p.add_argument("--text-cache", type=int, default=None, help="captions kept encoded in memory (default 4096)")
    p.add_argument("--query-threads", type=int, default=None,
                   help="torch threads while a query is encoded (default 1; 0: torch's own choice)")
    p.add_argument("--index-backend", default=None, metavar="SPEC",
                   help="how every dataset is ranked (index.py): exact (default; scan of the memory-mapped "
                        "features), faiss (HNSW or IVF-PQ by size, built and saved beside the features), "
                        "faiss:hnsw?efSearch=128, milvus (milvus-lite file beside the features, filled by "
                        "`index.py load`), milvus:http://host:19530 (a Milvus server)")
    p.add_argument("--no-extract", action="store_true",
                   help="do not extract the catalogue features first; serve whatever indexes exist")
    p.add_argument("--prepare-only", action="store_true",
                   help="extract the catalogue features if missing, then exit (run before gunicorn)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    cfg = AppConfig.from_env()
    for flag, name, conv in [("data_root", "data_root", str), ("features", "features_root", Path),
                             ("datasets_file", "datasets_file", Path), ("default_dataset", "default_dataset", str),
                             ("encoder", "encoder", str), ("device", "device", str),
                             ("upload_dir", "upload_dir", Path), ("max_pixels", "max_image_pixels", int),
                             ("k", "default_k", int), ("text_cache", "text_cache_size", int),
                             ("query_threads", "query_threads", int), ("index_backend", "index_backend", str),
                             ("upload_quota_mb", "upload_quota_mb", float),
                             ("upload_quota_count", "upload_quota_count", int),
                             ("upload_ttl", "upload_ttl_s", float), ("upload_decodes", "upload_decodes", int)]:
        if getattr(args, flag) is not None:
            setattr(cfg, name, conv(getattr(args, flag)))
    if args.max_upload_mb is not None:
        cfg.max_upload_bytes = int(args.max_upload_mb * MB)
    if args.combiner is not None:
        cfg.combiners = _name_paths(",".join(args.combiner))
    if args.text_encoder is not None:
        cfg.text_checkpoints = _name_paths(",".join(args.text_encoder))
    if not args.no_extract:
        ensure_catalog(cfg)
    if args.prepare_only:
        return 0
    app = create_app(cfg)
    log.info("serving on http://%s:%d/", args.host, args.port)
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False,
            request_handler=QuietRequestHandler)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
