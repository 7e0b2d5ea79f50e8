"""The web demo's HTTP layer: a Flask app over the JSON API in front of serving.Engine, plus its
one-page front end. `create_app(settings)` loads everything once and keeps it in `app.extensions["cir"]`
(an Engine); nothing lives at module level. The routes are listed in app.py's docstring (`python3 app.py
--help`)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from cir.images import ImageTooLarge
from cir.paths import REPO_DIR
from cir.serving.datasets import Dataset
from cir.serving.engine import Engine, Hit, SearchRequest, SearchResult
from cir.serving.errors import ApiError, BadInput, NotFound, TooLarge
from cir.serving.inputs import MAX_CAPTION_CHARS, MAX_FILTER_CHARS, parse_int, valid_image_id, validate_text
from cir.serving.settings import MB, Settings
from cir.web import assets
from cir.web.guards import install_guards, parse_json_object

log = logging.getLogger("app")


# Credits per kind of dataset; the footer names only those of the datasets this server loaded.
CREDITS = {"catalog": "Product photos: “Fashion Product Images (Small)” (Myntra catalogue), published for research "
                      "use.",
           "fashioniq": "FashionIQ annotations: CDLA licence.",
           "cirr": "CIRR annotations: MIT licence."}
DUPLICATE_COSINE = 0.999   # two results whose (unit) feature rows are this close show the same picture



def create_app(settings: Settings | None = None) -> Flask:
    """Build the demo app; loads everything once (a few seconds; indexes must already be extracted).

    Without `settings`, they come from the CIR_* environment variables (gunicorn: 'app:create_app()').
    """
    settings = settings if settings is not None else Settings.from_env()
    if settings.bootstrap == "local":
        assets.bootstrap_dir()  # fail at start-up, not on the first page view, when the package is missing
    engine = Engine.load(settings)
    app = Flask(__name__, template_folder=str(REPO_DIR / "templates"), static_folder=str(REPO_DIR / "static"))
    # body caps, safe JSON, security headers: the policy is the page's own (cir.web.assets)
    install_guards(app, max_upload_bytes=settings.max_upload_bytes, upload_max_age_s=settings.upload_ttl_s,
                   csp=assets.content_security_policy(settings.bootstrap))
    app.json.sort_keys = False  # keep results in rank order and fields in a readable order
    app.url_map.converters["anypath"] = AnyPathConverter   # before the blueprint's rules use it
    app.extensions["cir"] = engine
    app.register_blueprint(bp)
    app.register_blueprint(assets.bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.after_request(_count_errors)
    return app


def _engine() -> Engine:
    return current_app.extensions["cir"]


def _error(status: int, message: str, error: str) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message, "status": status}), status


def _api_error(e: ApiError) -> tuple[Response, int]:
    resp, status = _error(e.status, e.message, type(e).__name__)
    if e.retry_after_s:
        resp.headers["Retry-After"] = str(e.retry_after_s)
    return resp, status


def _http_error(e: HTTPException) -> tuple[Response, int]:
    status = e.code or 500
    if status == 404:
        message = f"no such page or API route: {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    else:
        message = e.description or e.name
    return _error(status, message, e.name)


def _internal_error(e: Exception) -> tuple[Response, int]:
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
def index() -> str:
    eng = _engine()
    return render_template("index.html", default_dataset=eng.default_dataset, attribution=attribution(eng),
                           max_upload_mb=eng.settings.max_upload_bytes // MB, max_caption=MAX_CAPTION_CHARS,
                           metadata=eng.settings.metadata,
                           bootstrap=assets.stylesheet(eng.settings.bootstrap))


def attribution(eng: Engine) -> str:
    """The credits of the datasets actually served (a folder of one's own photos needs none)."""
    kinds = {ds.source.dataset for ds in eng.datasets.values()}
    return " ".join(text for kind, text in CREDITS.items() if kind in kinds)


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for /favicon.ico whatever the page links; a 404 would be logged as a console error."""
    return send_file(REPO_DIR / "static" / "favicon.ico", mimetype="image/x-icon", max_age=_IMMUTABLE)


@bp.get("/api/health")
def health() -> Response:
    """Liveness (always 200 while the process serves) and readiness per dataset: "degraded" when an index
    backend cannot serve (e.g. its Milvus server is down), with the reason in `backends`, or when a dataset
    was found but could not be loaded or its files changed on disk since, with its folder and the reason in
    `damaged`; else "unverified" when a served folder has no checksums (listed in `unverified`); else "ok"."""
    eng = _engine()
    backends = eng.health()
    damaged, unverified = eng.damaged_report(), eng.unverified_report()
    status = ("degraded" if not all(b["ok"] for b in backends.values()) or damaged else
              "unverified" if unverified else "ok")
    return jsonify({"status": status, "encoder": eng.encoder.name, "datasets": list(eng.datasets),
                    "backends": backends, "damaged": damaged, "unverified": unverified,
                    "combiners": list(eng.combiners),
                    "text_encoders": list(eng.text_sides), "uptime_s": round(time.time() - eng.metrics.started, 1)})


@bp.get("/api/metrics")
def metrics() -> Response:
    eng = _engine()
    cache = eng.text_cache
    return jsonify({**eng.metrics.snapshot(),
                    "text_cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
                    "explanation_cache": eng.explanations.cache.stats()})


@bp.get("/api/datasets")
def datasets() -> Response:
    eng = _engine()
    s = eng.settings
    return jsonify({"default": eng.default_dataset, "datasets": [d.describe() for d in eng.datasets.values()],
                    "modes": eng.modes(), "models": eng.models(),
                    "limits": {"max_upload_bytes": s.max_upload_bytes, "max_image_pixels": s.max_image_pixels,
                               "max_caption_chars": MAX_CAPTION_CHARS, "default_k": s.default_k,
                               "max_k": s.max_k}})


@bp.get("/api/datasets/<name>")
def dataset(name: str) -> Response:
    ds = _engine().dataset(name)
    vocab = {k: [{"value": v, "count": c} for v, c in vals] for k, vals in ds.vocabulary.items()}
    return jsonify({**ds.describe(), "vocabulary": vocab})


@bp.post("/api/explain")
def api_explain() -> Response:
    """Grad-CAM of one result's score: the /api/search fields plus `result`; a PNG overlay, or ?format=json."""
    out = _engine().explain(_params(), "json" if request.args.get("format") == "json" else "png")
    return Response(out.body, mimetype=out.mimetype, headers={"X-Cache": "hit" if out.cached else "miss"})


@bp.get("/api/datasets/<name>/images")
def images(name: str) -> Response:
    ds = _engine().dataset(name)
    page = parse_int(request.args.get("page"), "page", 1, 10**9, 1)
    per_page = parse_int(request.args.get("per_page"), "per_page", 1, 100, 24)
    q = request.args.get("q", "")
    q = validate_text(q, "filter", MAX_FILTER_CHARS) if q.strip() else ""
    names, total = ds.browse(q, page, per_page)
    return jsonify({"dataset": ds.name, "q": q, "page": page, "per_page": per_page, "total": total,
                    "pages": max(1, -(-total // per_page)), "images": [_image_json(ds, n) for n in names]})


@bp.get("/api/datasets/<name>/random")
def random_images(name: str) -> Response:
    ds = _engine().dataset(name)
    n = parse_int(request.args.get("n"), "n", 1, 100, 24)
    seed = request.args.get("seed")
    seed = parse_int(seed, "seed", 0, 2**31 - 1, 0) if seed not in (None, "") else None
    return jsonify({"dataset": ds.name, "images": [_image_json(ds, x) for x in ds.sample(n, seed)]})


@bp.get("/api/datasets/<name>/captions")
def captions(name: str) -> Response:
    """The annotated relative captions of a reference (serving.annotations), each with its target."""
    ds = _engine().dataset(name)
    ref = valid_image_id(request.args.get("reference"), "reference")
    if ref is None:
        raise BadInput("give the reference image: /api/datasets/<name>/captions?reference=ID")
    ds.row(ref)
    found = ds.annotations.of(ref)
    return jsonify({"dataset": ds.name, "reference": ref, "available": ds.annotations.available,
                    "captions": [{**a.describe(), "target_image": _image_json(ds, a.target) if a.target else None}
                                 for a in found]})


@bp.route("/api/search", methods=["GET", "POST"])
def api_search() -> Response:
    t0 = time.perf_counter()
    eng = _engine()
    req = eng.parse(_params())
    out = _search_json(eng.dataset(req.dataset), req, eng.run(req))
    out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    eng.metrics.query(req.mode, out["latency_ms"])
    return jsonify(out)


def _hits_json(ds: Dataset, hits: list[Hit]) -> list[dict]:
    out = [{"rank": i + 1, **_image_json(ds, h.name), "score": round(h.score, 4)} for i, h in enumerate(hits)]
    for item, first in zip(out, _duplicates(ds, hits)):
        if first is not None:
            item["duplicate_of"] = out[first]["id"]
    return out


def _duplicates(ds: Dataset, hits: list[Hit]) -> list[int | None]:
    """Per hit, the place of a higher hit showing the same picture (a catalogue holding one photo under two
    ids), else None. The same pixels give the same feature row, so this compares the shown rows only (a k x k
    product of the stored float16 rows, microseconds) instead of hashing image files."""
    if len(hits) < 2:
        return [None] * len(hits)
    rows = ds.index.features[[ds.index.id_of(h.name) for h in hits]].float()
    same = (rows @ rows.T) >= DUPLICATE_COSINE
    return [next((j for j in range(i) if same[i, j]), None) for i in range(len(hits))]


def _search_json(ds: Dataset, req: SearchRequest, res: SearchResult) -> dict[str, Any]:
    """The /api/search answer (docs/api.md documents it): the result with URLs, plus flat ids/scores/urls."""
    results = _hits_json(ds, res.results)
    reference = (_upload_json(req.upload) if req.upload else
                 {**_image_json(ds, req.reference), "kind": "dataset"} if req.reference else None)
    return {"mode": res.mode, "dataset": res.dataset, "caption": res.caption, "query_text": res.query_text,
            "tags": res.tags, "model": asdict(res.model), "results": results, "timings": asdict(res.timings),
            "warning": res.warning, "reference": reference, "ids": [r["id"] for r in results],
            "scores": [r["score"] for r in results], "urls": [r["url"] for r in results],
            "group": None if res.group is None else _hits_json(ds, res.group),
            "target": None if res.target is None else {**asdict(res.target), **_image_json(ds, res.target.name),
                                                       "score": round(res.target.score, 4)},
            "understood": None if res.understood is None else asdict(res.understood),
            # only when sent: a single-turn, unfiltered search answers exactly as before
            **({"filters": {a: list(v) for a, v in req.filters.items()}} if req.filters else {}),
            **({"history": {"turns": len(req.history)}} if req.history else {})}


@bp.post("/api/upload")
def api_upload() -> tuple[Response, int]:
    eng = _engine()
    if request.mimetype == "multipart/form-data":
        f = request.files.get("file") or request.files.get("image")
        if f is None:
            raise BadInput("no file in the upload: send the image in a multipart field named 'file'")
        data = f.read(eng.settings.max_upload_bytes + 1)
    else:
        # The raw image is the body, whatever its Content-Type says: `curl --data-binary @photo.jpg` sends
        # application/x-www-form-urlencoded, and parsing it as a form (request.files) would consume it.
        data = request.get_data()
    res = eng.uploads.add(data)
    eng.metrics.upload()
    return jsonify({**_upload_json(res.id), "width": res.width, "height": res.height, "format": res.format,
                    "encode_ms": round(res.encode_ms, 3)}), 201


_IMMUTABLE = 86400  # image files never change under an id: let browsers cache them for a day


class AnyPathConverter(PathConverter):
    """<path:...> that also matches a newline (werkzeug's `.` does not), so that an id holding one reaches the
    view and gets the same 400 as in a search, instead of a 404 'no such route'."""

    regex = "[^/](?s:.)*?"


@bp.get("/img/<name>/<anypath:image_id>")
def image(name: str, image_id: str) -> Response:
    rec = _engine().dataset(name).record(valid_image_id(image_id, "image id") or "")
    if not rec.path.is_file():
        raise NotFound(f"the file of image {image_id!r} is missing on the server")
    return send_file(rec.path, max_age=_IMMUTABLE)


@bp.get("/thumb/<name>/<anypath:image_id>")
def thumb(name: str, image_id: str) -> Response:
    eng = _engine()
    rec = eng.dataset(name).record(valid_image_id(image_id, "image id") or "")
    return _thumb_response(eng, ("d", name, image_id), rec.path)


@bp.get("/uploads/<uid>")
def upload_image(uid: str) -> Response:
    return send_file(_engine().uploads.path(uid), mimetype="image/jpeg", max_age=_IMMUTABLE)


@bp.get("/uploads/<uid>/thumb")
def upload_thumb(uid: str) -> Response:
    eng = _engine()
    return _thumb_response(eng, ("u", uid), eng.uploads.path(uid))


def _thumb_response(eng: Engine, key: tuple, path: Path) -> Response:
    try:
        data = eng.thumbnail(key, path)
    except FileNotFoundError:
        raise NotFound("the image file is missing on the server") from None
    except ImageTooLarge as e:
        raise TooLarge(f"the image file on the server is too large to show: {e}") from None
    except (OSError, ValueError, SyntaxError):
        raise NotFound("the image file on the server cannot be read") from None
    resp = Response(data, mimetype="image/jpeg")
    resp.cache_control.public = True
    resp.cache_control.max_age = _IMMUTABLE
    return resp
