"""The web demo's engine, without HTTP: loading models and datasets once, parsing and answering queries.

app.py turns requests into calls here and the results into JSON; everything in this module can be used and
tested without Flask. `Engine.load(settings)` loads the encoder, its text sides, the Combiner checkpoints and
every dataset's feature index once; a query then goes

    reference features (index row or stored upload) + caption  --model.compose-->  query vector
    query vector  --index.search-->  ranked ids

so the demo ranks with exactly the code evaluation uses. Every dataset is ranked by the index backend of
`Settings.index_backend` (exact, faiss, milvus: see index.py); one that cannot be reached (a Milvus server
that is down) leaves its dataset listed but degraded: `Engine.health()` says why and its searches answer 503.
Errors a user can cause are raised as `ApiError` subclasses (400 / 404 / 413) carrying a message meant for
that user.
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image, ImageOps

import encoders
import model
from index import BackendUnavailable, IndexLoadError, parse_backend, search
from preprocess import to_rgb
from service.caching import LRU, Metrics, TimedTexts
from service.datasets import (
    DATASET_NAME,
    Dataset,
    discover_datasets,
    load_dataset,
    rank_group,
    read_datasets_file,
    stale_encoder_fields,
    tags_caption,
)
from service.errors import BadInput, NotFound, ServiceUnavailable
from service.inputs import choice, optional_name, parse_int, validate_text
from service.uploads import UploadLimits, UploadStore

log = logging.getLogger("engine")

# Search modes of the API -> fusion method of model.compose. Tags become a text query.
MODES: dict[str, str] = {"composed": "combiner", "sum": "sum", "image": "image", "text": "text", "tags": "text"}
MODE_LABELS = {"composed": "Composed (Combiner)", "sum": "Composed (sum baseline)", "image": "Image → image",
               "text": "Text → image", "tags": "Tags → image"}
NEEDS_REFERENCE = {"composed", "sum", "image"}
NEEDS_CAPTION = {"composed", "sum", "text"}


@dataclass
class Settings:
    """What Engine.load needs (app.AppConfig fills it from flags and environment variables)."""

    features_root: Path
    upload_dir: Path
    encoder: str = "lite"
    device: str = "auto"
    data_root: str | None = None
    datasets_file: Path | None = None
    default_dataset: str | None = None
    combiners: Mapping[str, str] | None = None
    text_checkpoints: Mapping[str, str] | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000   # see app.AppConfig for the reasons of these upload limits
    upload_quota_mb: float = 512
    upload_quota_count: int = 1000
    upload_ttl_s: float = 3600
    upload_decodes: int = 2
    default_k: int = 24
    max_k: int = 200
    text_cache_size: int = 4096
    upload_cache_size: int = 256
    thumb_cache_size: int = 2048
    thumb_size: int = 256
    query_threads: int | None = 1
    encoder_obj: Any = None
    warm_up: bool = True
    index_backend: str = "exact"    # index.py backend spec for every dataset: exact, faiss[...], milvus[:URI]


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


class Engine:
    """Everything the demo loaded at start-up, plus its caches, metrics and the lock around the models."""

    def __init__(self, settings: Settings, encoder, text_sides: dict[str, Any],
                 combiners: dict[str, tuple[Any, str]], datasets: dict[str, Dataset], default_dataset: str):
        self.settings = settings
        self.encoder = encoder
        self.text_sides = text_sides            # name -> encoder sharing the image side (base, stage1, ...)
        self.combiners = combiners              # name -> (Combiner, name of the text side it was trained with)
        self.datasets = datasets
        self.default_dataset = default_dataset
        # Tokenizers and ONNX sessions are not all safe to call from several threads at once, and two cores
        # gain nothing from overlapping model calls: one query encodes at a time.
        self.model_lock = threading.Lock()
        self.text_cache = LRU(settings.text_cache_size)
        self.thumbs = LRU(settings.thumb_cache_size)
        self.metrics = Metrics()
        self.uploads = UploadStore(settings.upload_dir, encoder, UploadLimits.of(settings), settings.upload_cache_size,
                                   self.model_calls)

    @contextlib.contextmanager
    def model_calls(self):
        """Hold the model lock and run torch with `query_threads` intra-op threads meanwhile.

        A query encodes one sentence or one image: more threads add only synchronisation, and on a small,
        busy CPU the waiting dominates (measured on 2 shared cores: MiniLM on one caption 12 ms with one
        thread, 500 ms with two). The previous setting is restored afterwards.
        """
        with self.model_lock, self.query_threads():
            yield

    @contextlib.contextmanager
    def query_threads(self):
        """Run torch with `query_threads` intra-op threads meanwhile (the search too, not only the models).

        Under load, a server's parallelism comes from its workers: a multi-threaded matrix product in one
        worker leaves OpenMP threads spinning on the cores the other workers need (measured with gunicorn,
        2 workers, 16 clients: 66 queries/s with the search at 2 threads, 185 with 1).
        """
        n = self.settings.query_threads
        old = torch.get_num_threads()
        if n and n != old:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if n and n != old:
                torch.set_num_threads(old)

    # -- start-up

    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        t0 = time.perf_counter()
        encoder = settings.encoder_obj or encoders.load(settings.encoder, settings.device)
        text_sides: dict[str, Any] = {"base": encoder}
        wanted_text = settings.text_checkpoints
        if wanted_text is None:  # default: the shipped stage-1 text encoder, when it has been trained
            stage1 = Path(encoders.resolve_text("stage1"))
            wanted_text = {"stage1": str(stage1)} if stage1.exists() else {}
        for name, path in wanted_text.items():
            try:
                text_sides[name] = encoder.with_text(encoders.resolve_text(path))
            except (FileNotFoundError, ValueError, NotImplementedError) as e:
                log.warning("text encoder %s unavailable: %s", name, e)

        parse_backend(settings.index_backend)   # a bad spec is the operator's error: fail now, not per dataset
        combiners = _load_combiners(settings, encoder, text_sides)
        specs = (read_datasets_file(settings.datasets_file, settings.features_root) if settings.datasets_file
                 else discover_datasets(settings.features_root))
        datasets: dict[str, Dataset] = {}
        for spec in specs:
            if not DATASET_NAME.match(spec.name):
                log.warning("skipping dataset %r: names are letters, digits, '.', '_' and '-'", spec.name)
                continue
            enc = spec.manifest.get("encoder")
            if enc not in (None, encoder.name) or spec.manifest.get("dim") not in (None, encoder.dim):
                log.info("skipping %s: extracted with encoder %s, the demo runs %s", spec.name, enc, encoder.name)
                continue
            stale = stale_encoder_fields(spec.manifest, encoder)
            if stale:
                log.warning("skipping %s: extracted with other %s weights or settings (%s); extract it again",
                            spec.name, encoder.name, ", ".join(stale))
                continue
            try:
                ds = load_dataset(spec, settings.data_root, settings.index_backend)
                if ds.index.raw_error:  # composed and sum queries would be mis-scaled: refuse, never guess
                    raise IndexLoadError(ds.index.raw_error)
                datasets[spec.name] = ds
            except (IndexLoadError, FileNotFoundError, ValueError) as e:
                log.warning("skipping dataset %s: %s", spec.name, e)
        if not datasets:
            where = settings.datasets_file or settings.features_root
            raise FileNotFoundError(
                f"no feature index for encoder {encoder.name!r} found in {where}; run `python3 app.py` (it "
                "extracts the catalogue first) or extract_features.py --dataset ... --out FEATURES")
        default = settings.default_dataset if settings.default_dataset in datasets else next(
            (n for n in ("catalog-all", *sorted(datasets)) if n in datasets and datasets[n].spec.dataset == "catalog"),
            next(iter(datasets)))
        if settings.default_dataset and settings.default_dataset not in datasets:
            log.warning("default dataset %r not found; using %s", settings.default_dataset, default)
        engine = cls(settings, encoder, text_sides, combiners, datasets, default)
        if settings.warm_up:
            engine.warm_up()
        log.info("demo ready in %.1f s: %d dataset(s) (%s), combiners: %s, text encoders: %s",
                 time.perf_counter() - t0, len(datasets), ", ".join(datasets), ", ".join(combiners) or "none",
                 ", ".join(text_sides))
        return engine

    def warm_up(self) -> None:
        """First calls are slow (lazy allocations, page faults on the mapped features): pay them at start-up.

        No float32 copy of an index is made: search() scans the memory-mapped float16 file.
        """
        with self.model_calls():
            for side in self.text_sides.values():
                q = side.encode_texts(["warm up"])
        for ds in self.datasets.values():
            with contextlib.suppress(BackendUnavailable):   # reported by health(); searches answer 503
                search(q, ds.index, 1)

    def health(self) -> dict[str, dict]:
        """Per dataset: its index backend and whether it can serve (a Milvus server may be down)."""
        return {name: ds.index.backend.health() for name, ds in self.datasets.items()}

    # -- what the page needs to know

    def models(self) -> dict:
        return {"combiners": [{"name": n, "text_encoder": t} for n, (_, t) in self.combiners.items()],
                "default_combiner": next(iter(self.combiners), None),
                "text_encoders": list(self.text_sides), "composed_available": bool(self.combiners),
                "encoder": self.encoder.name}

    def modes(self) -> list[dict]:
        return [{"name": m, "label": MODE_LABELS[m], "available": m != "composed" or bool(self.combiners),
                 "needs_reference": m in NEEDS_REFERENCE, "needs_caption": m in NEEDS_CAPTION} for m in MODES]

    def dataset(self, name: Any) -> Dataset:
        if not isinstance(name, str) or name not in self.datasets:
            raise NotFound(f"unknown dataset {str(name)[:80]!r}; available: {', '.join(self.datasets)}")
        return self.datasets[name]

    # -- queries

    def parse(self, params: Mapping[str, Any]) -> SearchRequest:
        """A search request from JSON or query-string parameters; BadInput / NotFound say what is wrong."""
        mode = choice(params.get("mode"), "mode", MODES, "composed" if self.combiners else "sum")
        ds = self.dataset(optional_name(params.get("dataset"), "dataset") or self.default_dataset)
        req = SearchRequest(mode=mode, dataset=ds.name,
                            k=parse_int(params.get("k"), "k", 1, self.settings.max_k, self.settings.default_k))
        ref, upload = optional_name(params.get("reference"), "reference"), optional_name(params.get("upload"), "upload")
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
        return req

    def run(self, req: SearchRequest) -> dict:
        """Answer a parsed request: ranked results, the CIRR group row, timings (ms)."""
        t0 = time.perf_counter()
        ds = self.dataset(req.dataset)
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
        if method == "combiner" and req.text_encoder and req.text_encoder != paired:
            warning = (f"combiner {comb_name} was trained with the {paired} text encoder; "
                       f"results with {req.text_encoder} may be worse")
        texts = TimedTexts(self.text_sides[text_name or "base"], self.text_cache, text_name or "base")
        t1 = time.perf_counter()
        with self.model_calls():
            t_locked = time.perf_counter()
            query = model.compose(texts, ref_feats, [req.caption] if req.caption else None, method, combiner)
        t2 = time.perf_counter()
        try:
            with self.query_threads():
                scores, ids = search(query, ds.index, req.k, exclude=exclude)
                group = rank_group(query, ds, req.reference) if req.reference and ds.groups else None
        except BackendUnavailable as e:
            raise ServiceUnavailable(f"dataset {ds.name!r} cannot be searched right now: {e}") from None
        t3 = time.perf_counter()
        total = (t3 - t0) * 1000
        return {
            "mode": req.mode, "dataset": ds.name, "caption": req.caption if req.mode != "tags" else None,
            "query_text": req.caption if req.mode in ("text", "tags", "composed", "sum") else None,
            "tags": req.tags or None,
            "model": {"combiner": comb_name, "text_encoder": text_name},
            "results": [(ds.index.names[j], float(s)) for s, j in zip(scores[0].tolist(), ids[0].tolist())],
            "group": group,
            "timings": {"encode_text_ms": round(texts.ms, 3), "text_cached": texts.cached if text_name else None,
                        "fuse_ms": round(max(0.0, (t2 - t_locked) * 1000 - texts.ms), 3),
                        "wait_ms": round((t_locked - t1) * 1000, 3),
                        "search_ms": round((t3 - t2) * 1000, 3), "total_ms": round(total, 3)},
            "warning": warning,
        }

    # -- images

    def thumbnail(self, key: tuple, path: Path) -> bytes:
        """A JPEG at most thumb_size on its long side (small files are sent as they are), cached."""
        data = self.thumbs.get(key)
        if data is not None:
            return data
        size = self.settings.thumb_size
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            if im.format == "JPEG" and max(im.size) <= size:
                data = raw  # catalogue photos are 224 px JPEGs already
            else:
                im = to_rgb(ImageOps.exif_transpose(im))
                im.thumbnail((size, size), Image.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
                data = buf.getvalue()
        self.thumbs.put(key, data)
        return data


def _load_combiners(settings: Settings, encoder, text_sides: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The Combiner checkpoints that exist, each paired with the text side it was trained with."""
    wanted = settings.combiners
    if wanted is None:  # default: the shipped checkpoints that have been trained
        wanted = {n: str(p) for n, p in model.SHIPPED_COMBINERS.items() if Path(p).exists()}
    out: dict[str, tuple[Any, str]] = {}
    for name, path in wanted.items():
        try:
            _, comb = model.load_method(str(path))
        except (FileNotFoundError, ValueError, OSError, RuntimeError) as e:
            log.warning("combiner %s unavailable: %s", name, e)
            continue
        if comb.cfg.feature_dim != encoder.dim or comb.cfg.encoder not in ("", encoder.name):
            log.warning("combiner %s was trained on %s features (dim %d), not %s (dim %d): skipped", name,
                        comb.cfg.encoder or "unknown", comb.cfg.feature_dim, encoder.name, encoder.dim)
            continue
        side = _text_side_for(comb.cfg.text_encoder, encoder, text_sides, encoders.resolve_text)
        if side is None:
            log.warning("combiner %s needs text encoder %s, which is not available: skipped", name,
                        comb.cfg.text_encoder)
            continue
        out[name] = (comb.eval(), side)
    return out


def _text_side_for(spec: str, encoder, text_sides: dict[str, Any], resolve: Callable[[str], str]) -> str | None:
    """Name of the loaded text side a Combiner was trained with, loading it if needed."""
    if not spec or spec == "base":
        return "base"
    path = resolve(spec)
    for name, side in text_sides.items():
        if getattr(side, "text_checkpoint", "base") not in ("base",) and \
                Path(side.text_checkpoint).resolve() == Path(path).resolve():
            return name
    if not Path(path).exists():
        return None
    name = "stage1" if Path(path).resolve() == Path(resolve("stage1")).resolve() else Path(path).stem
    try:
        text_sides[name] = encoder.with_text(path)
    except (FileNotFoundError, ValueError, NotImplementedError) as e:
        log.warning("text encoder %s unavailable: %s", path, e)
        return None
    return name
