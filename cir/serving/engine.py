"""The web demo's engine, without HTTP: loading models and datasets once, parsing and answering queries.

app.py turns requests into calls here and the results into JSON; everything in this module can be used and
tested without Flask. `Engine.load(settings)` loads the encoder, its text sides, the Combiner checkpoints and
every dataset's feature index once; a query then goes

    reference features (index row or stored upload) + caption  --combiner.compose-->  query vector
    query vector  --index.search-->  ranked ids

so the demo ranks with exactly the code evaluation uses. Every dataset is ranked by the index backend of
`Settings.index_backend` (exact, faiss, milvus: see cir.index); one that cannot be reached (a Milvus server
that is down) leaves its dataset listed but degraded: `Engine.health()` says why and its searches answer 503.
A dataset that was found but cannot be loaded (corrupt features, unreadable manifest, missing images) is kept
in `Engine.damaged` and reported as degraded too. `Engine.run` answers a `SearchResult` (dataclasses), which
app.py serialises. Torch's thread count is set once per process (set_worker_threads), never per request.
Errors a user can cause are raised as `ApiError` subclasses (400 / 404 / 413) carrying a message meant for
that user.

A request with `metadata` also takes the metadata path (cir.index.metadata): the caption's words that the
dataset's own product names and attributes hold boost the results having them, negated ones penalise them,
inside index.search; the result says which words were understood (`SearchResult.understood`). A request's
`history` and `filters` (cir.serving.session) go through cir.index.session and index.search's `filters`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
import torch

from cir import encoders
from cir.combiner import SHIPPED_COMBINERS, Combiner, check_compatible, compose, load_method
from cir.encoders import Encoder, TextSide
from cir.encoders.texts import CachedTexts
from cir.images import image_header, open_image
from cir.index import BackendUnavailable, parse_backend, search
from cir.index.files import reextract_command
from cir.index.session import Turn, session_query
from cir.serving.caching import LRU, Metrics
from cir.serving.datasets import (
    DamagedDataset,
    Dataset,
    dataset_sources,
    load_all,
    rank_group,
    tags_caption,
)
from cir.serving.errors import BadInput, DamagedModel, NotFound, ServiceUnavailable
from cir.serving.explanations import Explanations, Rendered
from cir.serving.inputs import choice, optional_name, parse_bool, parse_int, valid_image_id, validate_text
from cir.serving.session import parse_filters, parse_history
from cir.serving.settings import Settings
from cir.serving.uploads import UploadLimits, UploadStore

log = logging.getLogger("engine")

# Search modes of the API -> fusion method of combiner.compose. Tags become a text query.
MODES: dict[str, str] = {"composed": "combiner", "sum": "sum", "image": "image", "text": "text", "tags": "text"}
MODE_LABELS = {"composed": "Composed (Combiner)", "sum": "Composed (sum baseline)", "image": "Image → image",
               "text": "Text → image", "tags": "Tags → image"}
NEEDS_REFERENCE = {"composed", "sum", "image"}
NEEDS_CAPTION = {"composed", "sum", "text"}
METADATA_MODES = NEEDS_CAPTION      # the modes whose typed caption the metadata path reads
RANK_BLOCK = 32768          # rows per float32 block when scoring every row for a target's rank (16 MB at d=128)


@dataclass
class SearchRequest:
    mode: str
    dataset: str
    reference: str | None = None
    upload: str | None = None
    caption: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    k: int = 24
    combiner: str | None = None
    text_encoder: str | None = None
    target: str | None = None       # an image whose rank the client wants (the annotated target of a caption)
    metadata: bool = False          # take the metadata path too (the caption's words in the dataset's metadata);
                                    # parse() fills in Settings.metadata when the request does not say
    history: list[Turn] = field(default_factory=list)   # earlier turns of the session (cir.index.session)
    filters: dict[str, tuple[str, ...]] | None = None     # facet filters {attribute: values} (cir.index.facets)


@dataclass
class Hit:
    """One ranked image of a dataset."""

    name: str
    score: float


@dataclass
class Timings:
    """Where a query's time went, in ms (`text_cached`: None when no caption was encoded)."""

    encode_text_ms: float
    text_cached: bool | None
    fuse_ms: float
    wait_ms: float              # waiting for the model lock (another request was encoding)
    search_ms: float
    total_ms: float


@dataclass
class ModelChoice:
    """The Combiner and the text side that answered (None where the mode used none)."""

    combiner: str | None
    text_encoder: str | None


@dataclass
class TargetRank:
    """Where the requested target ranks under the query, the reference excluded as in the results."""

    name: str
    rank: int                   # 1-based, in the whole dataset (its place in the results when shown)
    score: float
    shown: bool                 # among the returned results
    group_rank: int | None      # CIRR: its place in the group row; None without one or when not a member


@dataclass
class Understood:
    """What the metadata path read in the caption: words boosted and words avoided (negated)."""

    boost: list[str]
    avoid: list[str]
    available: bool             # whether the dataset has metadata to read (else nothing can be understood)


@dataclass
class SearchResult:
    """What Engine.run answers; app.py turns it into the /api/search JSON (adding URLs and the reference)."""

    mode: str
    dataset: str
    caption: str | None         # the caption as sent (None in tags mode, whose text is generated)
    query_text: str | None      # the text that was encoded (caption, or the tags' phrase)
    tags: dict[str, str] | None
    model: ModelChoice
    results: list[Hit]
    group: list[Hit] | None     # CIRR: the reference's img_set members ranked by the same query
    timings: Timings
    warning: str | None         # e.g. a Combiner used with another text side than it was trained with
    target: TargetRank | None = None    # the requested target's rank (SearchRequest.target), else None
    understood: Understood | None = None  # the metadata path's reading, when it was asked for and applies


class PairedCombiner(NamedTuple):
    combiner: Combiner
    text_encoder: str           # name (in Engine.text_sides) of the text side it was trained with


class _QueryInputs(NamedTuple):
    method: str                         # combiner.compose's fusion method
    ref_feats: torch.Tensor | None      # the reference's raw features (None without a reference)
    exclude: list[list[int]] | None     # index rows never returned (the reference itself)
    combiner: Combiner | None
    comb_name: str | None
    text_name: str | None               # the text side's name in Engine.text_sides (None: no text)
    warning: str | None


def set_worker_threads(n: int | None) -> None:
    """Run torch with `n` intra-op threads in this process from now on (0 / None: leave torch's choice).

    Called once per server process (Engine.load), never per request: torch's thread count is global to the
    process, so under the threaded dev server one request restoring "its" old value would undo another's
    setting in the middle of that one's search. One thread per worker because a query encodes one sentence or
    one image and scans one index: more threads add only synchronisation, and the server's parallelism comes
    from its workers. Measured on 2 shared cores: MiniLM on one caption 12 ms with one thread, 500 ms with two;
    gunicorn, 2 workers, 16 clients: 185 queries/s with one thread, 66 with two (idle OpenMP threads spin on
    the core the other worker needs).
    """
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


class Engine:
    """Everything the demo loaded at start-up, plus its caches, metrics and the lock around the models."""

    def __init__(self, settings: Settings, encoder: Encoder, text_sides: dict[str, Encoder],
                 combiners: dict[str, PairedCombiner], datasets: dict[str, Dataset], default_dataset: str,
                 damaged: Mapping[str, DamagedDataset] | None = None):
        self.settings = settings
        self.encoder = encoder
        self.text_sides = text_sides            # name -> encoder sharing the image side (base, stage1, ...)
        self.combiners = combiners              # name -> the Combiner and the text side it was trained with
        self.datasets = datasets
        self.default_dataset = default_dataset
        self.damaged = dict(damaged or {})      # name -> a dataset found but not loadable (health: degraded)
        # Tokenizers and ONNX sessions are not all safe to call from several threads at once, and two cores
        # gain nothing from overlapping model calls: one query encodes at a time.
        self.model_lock = threading.Lock()
        self.image_only = bool(getattr(encoder, "image_only", False))  # bof: no text side, image mode only
        self.text_cache = LRU(settings.text_cache_size)
        self.thumbs = LRU(settings.thumb_cache_size)
        self.metrics = Metrics()
        self.explanations = Explanations(encoder, self.model_calls, settings.explain_concurrency,
                                         settings.explain_cache_bytes, settings.max_image_pixels)
        self.uploads = UploadStore(settings.upload_dir, encoder, UploadLimits.of(settings),
                                   settings.upload_cache_size, self.model_calls)

    @contextlib.contextmanager
    def model_calls(self) -> Iterator[None]:
        """Hold the model lock meanwhile. Torch's thread count is not touched here: set_worker_threads set it
        once for the whole process."""
        with self.model_lock:
            yield

    # -- start-up

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Load the encoder, its text sides, the Combiners and every dataset once (a few seconds)."""
        t0 = time.perf_counter()
        encoder = settings.encoder_obj or encoders.load(settings.encoder, settings.device, text=settings.stage1)
        text_sides = _load_text_sides(settings, encoder)
        parse_backend(settings.index_backend)   # a bad spec is the operator's error: fail now, not per dataset
        combiners = _load_combiners(settings, encoder, text_sides)
        sources, damaged = dataset_sources(settings.features_root, settings.datasets_file)
        datasets, failed = load_all(sources, encoder, settings.data_root, settings.index_backend,
                                    settings.features_in_memory_bytes)
        damaged = {d.name: d for d in [*damaged, *failed]}
        if not datasets:
            raise _nothing_to_serve(settings, encoder, damaged)
        default = _default_dataset(settings.default_dataset, datasets)
        set_worker_threads(settings.query_threads)  # once per process: see set_worker_threads
        engine = cls(settings, encoder, text_sides, combiners, datasets, default, damaged)
        if settings.warm_up:
            engine.warm_up()
        log.info("demo ready in %.1f s: %d dataset(s) (%s), combiners: %s, text encoders: %s%s",
                 time.perf_counter() - t0, len(datasets), ", ".join(datasets), ", ".join(combiners) or "none",
                 ", ".join(text_sides), f"; DAMAGED: {', '.join(damaged)}" if damaged else "")
        return engine

    def warm_up(self) -> None:
        """First calls are slow (lazy allocations, page faults on the mapped features): pay them at start-up.

        No float32 copy of an index is made: search() scans the float16 features (read into memory up to
        Settings.features_in_memory_bytes, memory-mapped above).
        """
        q = torch.zeros(1, self.encoder.dim)  # an image-only encoder warms up the search alone
        with self.model_calls():
            for side in ([] if self.image_only else self.text_sides.values()):
                q = side.encode_texts(["warm up"])
        for ds in self.datasets.values():
            with contextlib.suppress(BackendUnavailable):   # reported by health(); searches answer 503
                search(q, ds.index, 1)

    def health(self) -> dict[str, dict]:
        """Per dataset: its index backend and whether it can serve (a Milvus server may be down)."""
        return {name: ds.index.backend.health() for name, ds in self.datasets.items()}

    def damaged_report(self) -> dict[str, dict]:
        """Per dataset that was found but could not be loaded: its folder and why (see DamagedDataset); and per
        served dataset whose files changed on disk since they were loaded (`"serving": true`: it answers from
        what was loaded and verified; restarting would load the folder as it is now)."""
        out = {name: d.describe() for name, d in self.damaged.items()}
        for name, ds in self.datasets.items():
            problem = ds.index.disk_problem()
            if problem:
                out[name] = {**DamagedDataset(name, ds.source.features, problem).describe(), "serving": True}
        return out

    def unverified_report(self) -> dict[str, dict]:
        """Per served dataset whose folder has no checksums (an older extraction): damaged or altered files
        cannot be detected in it, so health does not call it "ok"."""
        return {name: {"folder": str(ds.source.features),
                       "reason": "its manifest records no checksums (extracted by an older version): shuffled "
                                 "names or overwritten rows would go unnoticed; extract it again to have it "
                                 "verified: " + reextract_command(ds.source.features, ds.source.manifest)
                                 + " (or start python3 app.py with --reextract-unverified)"}
                for name, ds in self.datasets.items() if not ds.index.verified}

    # -- what the page needs to know

    def models(self) -> dict:
        return {"combiners": [{"name": n, "text_encoder": c.text_encoder} for n, c in self.combiners.items()],
                "default_combiner": next(iter(self.combiners), None),
                "text_encoders": list(self.text_sides), "composed_available": bool(self.combiners),
                "encoder": self.encoder.name, "image_only": self.image_only, "default_mode": self.default_mode}

    @property
    def default_mode(self) -> str:
        return "image" if self.image_only else "composed" if self.combiners else "sum"

    def modes(self) -> list[dict]:
        return [{"name": m, "label": MODE_LABELS[m],
                 "available": (m == "image") if self.image_only else (m != "composed" or bool(self.combiners)),
                 "needs_reference": m in NEEDS_REFERENCE, "needs_caption": m in NEEDS_CAPTION} for m in MODES]

    def dataset(self, name: Any) -> Dataset:
        if not isinstance(name, str) or name not in self.datasets:
            raise NotFound(f"unknown dataset {str(name)[:80]!r}; available: {', '.join(self.datasets)}")
        return self.datasets[name]

    # -- queries

    def parse(self, params: Mapping[str, Any]) -> SearchRequest:
        """A search request from JSON or query-string parameters; BadInput / NotFound say what is wrong."""
        mode = choice(params.get("mode"), "mode", MODES, self.default_mode)
        if self.image_only and mode != "image":
            raise BadInput(f"mode {mode!r} needs text, and the {self.encoder.name} encoder is image-only: use mode "
                           "'image' (search by a reference image or an upload), or serve with --encoder lite")
        ds = self.dataset(optional_name(params.get("dataset"), "dataset") or self.default_dataset)
        req = SearchRequest(mode=mode, dataset=ds.name,
                            k=parse_int(params.get("k"), "k", 1, self.settings.max_k, self.settings.default_k))
        ref = valid_image_id(params.get("reference"), "reference")
        upload = valid_image_id(params.get("upload"), "upload")
        if ref is not None and upload is not None:
            raise BadInput("give either a reference image or an upload id, not both")
        if mode in NEEDS_REFERENCE:
            if ref is None and upload is None:
                raise BadInput(f"mode {mode!r} needs a reference: a dataset image id or an upload id")
            if upload is not None:
                self.uploads.path(upload)
                req.upload = upload
            else:
                ds.row(ref)
                req.reference = ref
        if mode in NEEDS_CAPTION:
            req.caption = validate_text(params.get("caption"))
        if mode == "tags":
            req.tags = ds.check_tags(params.get("tags"))
            req.caption = tags_caption(req.tags)
        comb = choice(params.get("combiner"), "combiner", list(self.combiners))
        text = choice(params.get("text_encoder"), "text encoder", ["auto", *self.text_sides])
        if mode == "composed" and not self.combiners:
            raise BadInput("composed (Combiner) mode is unavailable: no Combiner checkpoint is loaded "
                           "(train one into weights/combiner.safetensors); use mode 'sum' meanwhile")
        req.combiner, req.text_encoder = comb, None if text == "auto" else text
        req.target = valid_image_id(params.get("target"), "target")
        if req.target is not None:
            ds.row(req.target)
        req.metadata = parse_bool(params.get("metadata"), "metadata", self.settings.metadata)
        req.history = parse_history(params.get("history"), ds, self.uploads)
        req.filters = parse_filters(params.get("filters"), ds)
        return req

    def run(self, req: SearchRequest) -> SearchResult:
        """Answer a parsed request: ranked results, the CIRR group row, timings (ms)."""
        t0 = time.perf_counter()
        ds = self.dataset(req.dataset)
        q = self._query_inputs(req, ds)
        method, ref_feats, exclude, combiner = q.method, q.ref_feats, q.exclude, q.combiner
        comb_name, text_name, warning = q.comb_name, q.text_name, q.warning
        texts = CachedTexts(self.text_sides[text_name or "base"], self.text_cache, text_name or "base")
        t1 = time.perf_counter()
        with self.model_calls():
            t_locked = time.perf_counter()
            query = compose(texts, ref_feats, [req.caption] if req.caption else None, method, combiner)
        t2 = time.perf_counter()
        _check_finite(query.reshape(-1).tolist(), f"the {req.mode} query", comb_name, text_name)
        terms = ds.metadata.terms(req.caption) if req.metadata and req.mode in METADATA_MODES else None
        # the session's turns (none: all unchanged) and the facet filters, decided in cir.index
        sq = session_query(query, ds.index.features, req.history, req.caption, exclude, ds.metadata, ds.facets, terms)
        query, exclude, terms = sq.query, sq.exclude, sq.terms
        keep = ds.facets.select(req.filters) if req.filters else None
        try:
            scores, ids = search(query, ds.index, req.k, exclude=exclude, boost=sq.boost, filters=keep)
            group = rank_group(query, ds, req.reference) if req.reference and ds.groups else None
            hits = [Hit(ds.index.names[j], float(v)) for v, j in zip(scores[0].tolist(), ids[0].tolist())]
            target = (_target_rank(query, ds, req.target, exclude, hits, group, sq.boost, keep)
                      if req.target else None)
        except BackendUnavailable as e:
            raise ServiceUnavailable(f"dataset {ds.name!r} cannot be searched right now: {e}") from None
        _check_finite([h.score for h in hits] + [s for _, s in group or ()] + ([target.score] if target else []),
                      f"dataset {ds.name!r}'s scores", comb_name, text_name)
        t3 = time.perf_counter()
        timings = Timings(encode_text_ms=round(texts.ms, 3), text_cached=texts.cached if text_name else None,
                          fuse_ms=round(max(0.0, (t2 - t_locked) * 1000 - texts.ms), 3),
                          wait_ms=round((t_locked - t1) * 1000, 3), search_ms=round((t3 - t2) * 1000, 3),
                          total_ms=round((t3 - t0) * 1000, 3))
        return SearchResult(
            mode=req.mode, dataset=ds.name, caption=req.caption if req.mode != "tags" else None,
            query_text=req.caption if req.mode in ("text", "tags", "composed", "sum") else None,
            tags=req.tags or None, model=ModelChoice(comb_name, text_name),
            results=hits, group=None if group is None else [Hit(n, v) for n, v in group], timings=timings,
            warning=warning, target=target,
            understood=None if terms is None else Understood(**terms.words, available=bool(ds.metadata)))

    def _query_inputs(self, req: SearchRequest, ds: Dataset) -> "_QueryInputs":
        """What combiner.compose needs for `req`: the reference's raw features, the fusion, its text side."""
        method = MODES[req.mode]
        ref_feats, exclude = None, None
        if req.mode in NEEDS_REFERENCE:
            if req.upload:
                ref_feats = self.uploads.features(req.upload)
            else:
                row = ds.row(req.reference)
                ref_feats = ds.index.raw([row])
                exclude = [[row]]  # never return the reference as its own result
        combiner, comb_name, paired = None, None, "base"
        if method == "combiner":
            comb_name = req.combiner or next(iter(self.combiners))
            combiner, paired = self.combiners[comb_name]
        text_name = (req.text_encoder or paired) if method != "image" else None
        warning = None
        if method == "combiner" and req.text_encoder and \
                self.text_sides[req.text_encoder].text_side != self.text_sides[paired].text_side:
            warning = (f"combiner {comb_name} was trained with the {paired} text encoder; "
                       f"results with {req.text_encoder} may be worse")
        return _QueryInputs(method, ref_feats, exclude, combiner, comb_name, text_name, warning)

    def explain(self, params: Mapping[str, Any], fmt: str = "png") -> Rendered:
        """Grad-CAM of the search's score for one result: the /api/search fields plus `result` (an image id
        of the dataset), rendered as `fmt` (png: the overlay; json: the raw map). See serving.explanations:
        bounded, off the model lock, cached."""
        req = self.parse(params)
        ds = self.dataset(req.dataset)
        result = valid_image_id(params.get("result"), "result")
        if result is None:
            raise BadInput("give `result`: the id of the result image to explain")
        rec = ds.record(result)
        q = self._query_inputs(req, ds)
        key = (ds.name, rec.name, req.mode, req.reference, req.upload, req.caption, q.comb_name, q.text_name)

        def query() -> torch.Tensor:
            texts = CachedTexts(self.text_sides[q.text_name or "base"], self.text_cache, q.text_name or "base")
            vector = compose(texts, q.ref_feats, [req.caption] if req.caption else None, q.method, q.combiner)
            _check_finite(vector.reshape(-1).tolist(), f"the {req.mode} query", q.comb_name, q.text_name)
            return vector

        def check(score: float) -> None:
            _check_finite([score], "the explained score", q.comb_name, q.text_name)

        return self.explanations.render(key, (rec.name, rec.path), query, fmt, check)

    # -- images

    def thumbnail(self, key: tuple, path: Path) -> bytes:
        """A JPEG at most thumb_size on its long side (small files are sent as they are), cached."""
        data = self.thumbs.get(key)
        if data is not None:
            return data
        size = self.settings.thumb_size
        fmt, dims = image_header(path)
        if fmt == "JPEG" and max(dims) <= size:   # catalogue photos are 224 px JPEGs already
            data = path.read_bytes()
        else:   # decoded at the size shown (JPEGs by libjpeg's scaling), and never more than max_image_pixels
            im = open_image(path, size, self.settings.max_image_pixels)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
            data = buf.getvalue()
        self.thumbs.put(key, data)
        return data


def _check_finite(values: list[float], what: str, combiner: str | None, text: str | None) -> None:
    """DamagedModel (500) when a value is NaN or infinite: a damaged model or index, named in the log."""
    if all(math.isfinite(v) for v in values):
        return
    log.error("%s holds NaN or infinite values (combiner %s, text encoder %s): a model or an index is damaged",
              what, combiner, text)
    raise DamagedModel(f"{what} came out as NaN or infinity: a model or an index on the server is damaged "
                       "(the server log names it); this request cannot be answered until it is repaired")


def _target_rank(query: torch.Tensor, ds: Dataset, target: str, exclude: list[list[int]] | None,
                 hits: list[Hit], group: list[tuple[str, float]] | None, terms: Any = None,
                 keep: Any = None) -> TargetRank:
    """The target's place: its position among the results when shown, else 1 + the rows (reference left
    out) scoring above it, counted in float32 over the whole index (ties count in its favour), with the
    metadata path's or the session's score changes (`terms`) when taken, among the rows a filter keeps."""
    group_rank = next((i + 1 for i, (n, _) in enumerate(group or ()) if n == target), None)
    shown = next((i for i, h in enumerate(hits) if h.name == target), None)
    if shown is not None:
        return TargetRank(target, shown + 1, hits[shown].score, True, group_rank)
    q = query.detach().float().reshape(-1)
    feats, row = ds.index.features, ds.index.id_of(target)
    # one pass, one way of computing every score: the target is compared with itself bit for bit
    scores = torch.cat([feats[lo:lo + RANK_BLOCK].float() @ q for lo in range(0, len(feats), RANK_BLOCK)])
    if terms:
        scores += torch.from_numpy(terms.adjust(np.arange(len(scores)))).float()
    score = float(scores[row])
    scores[[row, *(exclude or [[]])[0]]] = float("-inf")
    if keep is not None:
        scores[torch.from_numpy(~keep.mask)] = float("-inf")
    above = int((scores > score).sum())
    return TargetRank(target, above + 1, score, False, group_rank)


def _load_text_sides(settings: Settings, encoder: Encoder) -> dict[str, Encoder]:
    """The text sides to offer, by name: base, plus the stage-1 checkpoints of the settings that load."""
    text_sides: dict[str, Encoder] = {"base": encoder}
    if getattr(encoder, "image_only", False):  # bof: no text side to offer
        return text_sides
    wanted: Mapping[str, Any] | None = settings.text_checkpoints
    if wanted is None:  # default: the shipped stage-1 text encoder, when it has been trained
        stage1 = TextSide.of("stage1")
        wanted = {"stage1": stage1} if stage1.exists() else {}
    for name, wanted_side in wanted.items():
        try:
            text_sides[name] = _side_encoder(encoder, TextSide.of(wanted_side))
        except (OSError, ValueError, NotImplementedError) as e:   # missing, damaged (named), unsupported
            log.warning("text encoder %s unavailable: %s", name, e)
    return text_sides


def _side_encoder(encoder: Encoder, side: TextSide) -> Encoder:
    """`encoder` with the stage-1 side `side`, which must keep its image side: the indexes served were
    extracted with it (a checkpoint of `train.py text --side both|image` is served as the encoder instead)."""
    out = encoder.with_text(side)
    if getattr(out, "image_digest", None) != getattr(encoder, "image_digest", None):
        raise ValueError(f"{side.record} fine-tunes the image side too, and the indexes were extracted with the "
                         "served encoder's: it cannot be switched per query")
    return out


def _load_combiners(settings: Settings, encoder: Encoder, text_sides: dict[str, Encoder]) -> dict[str, PairedCombiner]:
    """The Combiner checkpoints that exist, each paired with the text side it was trained with."""
    wanted = settings.combiners
    if wanted is None:  # default: the shipped checkpoints that have been trained
        wanted = {n: str(p) for n, p in SHIPPED_COMBINERS.items() if Path(p).exists()}
    out: dict[str, PairedCombiner] = {}
    for name, path in wanted.items():
        try:
            _, comb = load_method(str(path))
        except (FileNotFoundError, ValueError, OSError, RuntimeError) as e:
            log.warning("combiner %s unavailable: %s", name, e)
            continue
        try:
            check_compatible(comb.cfg, encoder)
        except ValueError as e:
            log.warning("combiner %s skipped: %s", name, e)
            continue
        side = _paired_side(comb.cfg.text_side, encoder, text_sides)
        if side is None:
            log.warning("combiner %s needs text encoder %s, which is not available: skipped", name,
                        comb.cfg.text_encoder)
            continue
        out[name] = PairedCombiner(comb.eval(), side)
    return out


def _paired_side(want: TextSide, encoder: Encoder, text_sides: dict[str, Encoder]) -> str | None:
    """Name of the loaded text side that is `want`, loading it (named want.name) when none is."""
    for name, side in text_sides.items():
        if side.text_side == want:
            return name
    if not want.exists():
        return None
    name = want.name if want.name not in text_sides else want.record
    try:
        text_sides[name] = _side_encoder(encoder, want)
    except (OSError, ValueError, NotImplementedError) as e:
        log.warning("text encoder %s unavailable: %s", want.record, e)
        return None
    return name


def _nothing_to_serve(settings: Settings, encoder: Encoder, damaged: Mapping[str, DamagedDataset]) -> Exception:
    """The start-up error when no dataset loads: the damaged folders and why, else how to extract one."""
    where = settings.datasets_file or settings.features_root
    if damaged:
        lines = "".join(f"\n  {d.folder}: {d.reason}" for d in damaged.values())
        return ValueError(f"no dataset in {where} can be served: {len(damaged)} found but damaged (repair or "
                          f"extract them again, or move them away):{lines}")
    return FileNotFoundError(
        f"no feature index for encoder {encoder.name!r} found in {where}; run `python3 app.py` (it "
        "extracts the catalogue first) or extract_features.py --dataset ... --out FEATURES")


def _default_dataset(wanted: str | None, datasets: Mapping[str, Dataset]) -> str:
    """`wanted` if it was loaded, else catalog-all, another catalogue or the first dataset."""
    if wanted in datasets:
        return wanted
    default = next((n for n in ("catalog-all", *sorted(datasets)) if n in datasets
                    and datasets[n].source.dataset == "catalog"), next(iter(datasets)))
    if wanted:
        log.warning("default dataset %r not found; using %s", wanted, default)
    return default
