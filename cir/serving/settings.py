"""The demo's settings: ONE typed dataclass whose field metadata drives app.py's command-line flags and the
CIR_* environment variables that `create_app()` reads (how gunicorn starts it).

Adding an option is one declaration in `Settings`:

    max_k: int = option(200, "largest k a request may ask for", env="CIR_MAX_K", flag="--max-k", parse=integer,
                        metavar="N")

`Settings.from_env()` reads the variables that are set, `Settings.add_arguments(parser)` adds the flags (help
text, default and variable name shown) and `Settings.from_args(args, base)` applies the flags given on top of
`base` (the environment). A field without env/flag is set from Python only (tests, benchmarks).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cir.encoders import Encoder
from cir.paths import REPO_DIR
from cir.serving.uploads import default_upload_dir
from cir.utils import check_device

MB = 1024 * 1024
BOOTSTRAP_MODES = ("local", "cdn")   # where the page's Bootstrap comes from (cir.web.assets)


# ----------------------------------------------------------------------------------------------- parsers
# Each turns the text of an environment variable or a flag into the field's value (ValueError when it cannot).

def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    return Path(value).expanduser()


def integer(value: str) -> int:
    return int(value)


def number(value: str) -> float:
    """A finite number (seconds, MB ...)."""
    x = float(value)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return x


def megabytes(value: str) -> int:
    """'2.5' (MB) -> bytes."""
    return int(float(value) * MB)


def boolean(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser accepting exactly one of `choices`."""
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value
    return parse


def name_paths(value: str) -> dict[str, str]:
    """'a=path1,b=path2' -> {'a': 'path1', 'b': 'path2'}; a bare path is named after its file; '' -> {}."""
    out = {}
    for item in filter(None, (v.strip() for v in value.split(","))):
        name, sep, p = item.partition("=")
        out[name if sep else Path(item).stem] = p if sep else item
    return out


# ----------------------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Option:
    """How one Settings field is set from outside Python."""

    help: str                               # what it does (the --help line)
    env: str | None = None                  # environment variable, e.g. CIR_FEATURES
    flag: str | None = None                 # command-line flag of app.py, e.g. --features
    parse: Callable[[str], Any] = text      # the variable's / flag's text -> the field's value
    metavar: str | None = None              # placeholder in --help
    repeat: bool = False                    # the flag may be repeated; its values are joined with ","
    empty_is_value: bool = False            # an empty variable is parsed (e.g. "no combiners"), not ignored


def option(default: Any, help: str, *, factory: Callable[[], Any] | None = None, **how: Any) -> Any:
    """A Settings field with its default (or a `factory` computing it when Settings is made) and how flags
    and variables set it (see Option)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"option": Option(help, **how)})
    return field(default=default, metadata={"option": Option(help, **how)})


@dataclass
class Settings:
    """Everything the demo is started with. Paths may be relative to the working directory."""

    data_root: str | None = option(
        None, "dataset images root, overriding the one recorded when each index was extracted; unset: the "
        "recorded root, else ../shared/data", env="CIR_DATA_ROOT", flag="--data-root", metavar="DIR")
    features_root: Path = option(
        REPO_DIR / "features", "features root holding the index folders (features/<name>/manifest.json ...)",
        env="CIR_FEATURES", flag="--features", parse=path, metavar="DIR")
    encoder: str = option(
        "lite", "encoder name: lite, bof (image-only: image search), hf:<id or dir>, openai:<model> (the one the "
        "indexes were extracted with)",
        env="CIR_ENCODER", flag="--encoder")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1 ...", env="CIR_DEVICE",
                         flag="--device", parse=check_device)
    datasets_file: Path | None = option(
        None, "JSON list of datasets to serve ([{\"features\": DIR, \"name\": ..., \"data_root\": ...}]); default: "
        "every index folder under the features root", env="CIR_DATASETS_FILE", flag="--datasets-file",
        parse=path, metavar="FILE")
    default_dataset: str | None = option(
        "catalog-all", "dataset the page opens with (falls back to another catalogue)",
        env="CIR_DEFAULT_DATASET", flag="--default-dataset", metavar="NAME")
    combiners: Mapping[str, str] | None = option(
        None, "Combiner checkpoints to offer, NAME=PATH (repeatable; the variable: name=path,name=path, empty for "
        "none); default: the shipped weights/combiner.safetensors and weights/combiner-stage1.safetensors that "
        "exist", env="CIR_COMBINERS", flag="--combiner", parse=name_paths, metavar="NAME=PATH", repeat=True,
        empty_is_value=True)
    text_checkpoints: Mapping[str, str] | None = option(
        None, "stage-1 text checkpoints to offer, NAME=PATH (repeatable, as --combiner); default: stage1 = "
        "weights/lite-text.safetensors when it exists", env="CIR_TEXT_ENCODERS", flag="--text-encoder",
        parse=name_paths, metavar="NAME=PATH", repeat=True, empty_is_value=True)
    stage1: str | None = option(
        None, "a stage-1 checkpoint the served encoder runs, its text side and its image side when it has one "
        "(train.py text --side both|image): the indexes must be extracted with it (app.py extracts the catalogue "
        "again); unset: the encoder's own", env="CIR_STAGE1", flag="--stage1", metavar="PATH")
    upload_dir: Path = option(
        None, "where uploads are stored (re-encoded JPEG + features .npy), outside the source tree: "
        "$XDG_CACHE_HOME/cir-demo/uploads, else ~/.cache/cir-demo/uploads", factory=default_upload_dir,
        env="CIR_UPLOAD_DIR", flag="--upload-dir", parse=path, metavar="DIR")
    max_upload_bytes: int = option(10 * MB, "upload size limit in MB; larger uploads get 413",
                                   env="CIR_MAX_UPLOAD_MB", flag="--max-upload-mb", parse=megabytes, metavar="MB")
    max_image_pixels: int = option(
        25_000_000, "largest width x height an upload may have; larger gets 413. Every phone's default photo "
        "fits (12 MP; 24.5 MP on recent iPhone Pros); 48-200 MP full-resolution shots must be scaled down",
        env="CIR_MAX_PIXELS", flag="--max-pixels", parse=integer, metavar="N")
    upload_quota_bytes: int = option(
        512 * MB, "all stored uploads together, in MB; the oldest are deleted beyond it",
        env="CIR_UPLOAD_QUOTA_MB", flag="--upload-quota-mb", parse=megabytes, metavar="MB")
    upload_quota_count: int = option(1000, "stored uploads at most; the oldest are deleted beyond it",
                                     env="CIR_UPLOAD_QUOTA_COUNT", flag="--upload-quota-count", parse=integer,
                                     metavar="N")
    upload_ttl_s: float = option(3600.0, "an upload is deleted this many seconds after it was stored",
                                 env="CIR_UPLOAD_TTL_S", flag="--upload-ttl", parse=number, metavar="SECONDS")
    upload_decodes: int = option(2, "uploads decoded at once per worker; more wait 2 s, then get 503",
                                 env="CIR_UPLOAD_DECODES", flag="--upload-decodes", parse=integer, metavar="N")
    default_k: int = option(24, "results per query when the request does not say", env="CIR_DEFAULT_K",
                            flag="-k", parse=integer, metavar="N")
    max_k: int = option(200, "largest k a request may ask for", env="CIR_MAX_K", flag="--max-k", parse=integer,
                        metavar="N")
    text_cache_size: int = option(4096, "captions kept encoded in memory (an LRU per text encoder)",
                                  env="CIR_TEXT_CACHE", flag="--text-cache", parse=integer, metavar="N")
    upload_cache_size: int = option(256, "upload features kept in memory (they are on disk too)")
    thumb_size: int = option(256, "long side of thumbnails, px")
    thumb_cache_size: int = option(2048, "thumbnail JPEGs kept in memory")
    query_threads: int | None = option(
        1, "torch threads of each server process, set once at start-up (0: torch's own choice); one per "
        "worker, see serving.engine.set_worker_threads", env="CIR_QUERY_THREADS", flag="--query-threads",
        parse=integer, metavar="N")
    index_backend: str = option(
        "exact", "how every dataset is ranked (index/): exact (scan of the float16 features), faiss "
        "(HNSW or IVF-PQ by size, built and saved beside the features), faiss:hnsw?efSearch=128, milvus "
        "(milvus-lite file beside the features, filled by `python3 -m cir.index load`), milvus:http://host:19530",
        env="CIR_INDEX_BACKEND", flag="--index-backend", metavar="SPEC")
    metadata: bool = option(
        True, "composed, sum and text searches also read the caption's words against the dataset's own product "
        "names and attributes (the metadata path: boosts, and penalties for negated words) unless a request says "
        "metadata: false; datasets without metadata are unaffected", env="CIR_METADATA", flag="--metadata",
        parse=boolean)
    explain_concurrency: int = option(
        1, "explanations computed at once per worker, each on a low-priority thread of its own so that searches "
        "keep the CPU; the next waits 2 s, then gets 503", env="CIR_EXPLAIN_CONCURRENCY",
        flag="--explain-concurrency", parse=integer, metavar="N")
    explain_cache_bytes: int = option(
        32 * MB, "rendered explanations kept in memory per worker, in MB (a catalogue overlay is ~30 KB, a "
        "1,024-px one up to ~2 MB); 0: none", env="CIR_EXPLAIN_CACHE_MB", flag="--explain-cache-mb",
        parse=megabytes, metavar="MB")
    features_in_memory_bytes: int = option(
        256 * MB, "feature files up to this size are read into each worker's memory instead of memory-mapped, "
        "in MB: a file truncated or replaced under the server cannot crash it then (a mapped one can: SIGBUS); "
        "the catalogue's is about 5 MB; 0: always map", env="CIR_FEATURES_IN_MEMORY_MB",
        flag="--features-in-memory-mb", parse=megabytes, metavar="MB")
    warm_up: bool = option(True, "run one query per text encoder and dataset at start-up", env="CIR_WARM_UP",
                           flag="--warm-up", parse=boolean)
    bootstrap: str = option(
        "local", "where the page's Bootstrap CSS comes from: local (served from the pinned Bootstrap-Flask "
        "package, no network needed) or cdn (jsDelivr, with integrity)", env="CIR_BOOTSTRAP", flag="--bootstrap",
        parse=one_of(*BOOTSTRAP_MODES), metavar="{local,cdn}")
    encoder_obj: Encoder | None = option(None, "an already-loaded encoder to use (CLI, tests, benchmarks)")

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, not {getattr(self, name)!r}" for name, ok, rule in (
            ("max_upload_bytes", self.max_upload_bytes > 0, "positive"),
            ("max_image_pixels", self.max_image_pixels > 0, "positive"),
            ("upload_quota_bytes", self.upload_quota_bytes > 0, "positive"),
            ("upload_quota_count", self.upload_quota_count > 0, "positive"),
            ("upload_ttl_s", self.upload_ttl_s > 0, "positive"),
            ("upload_decodes", self.upload_decodes > 0, "positive"),
            ("max_k", self.max_k >= 1, "at least 1"),
            ("default_k", 1 <= self.default_k <= self.max_k, f"between 1 and max_k ({self.max_k})"),
            ("query_threads", self.query_threads is None or self.query_threads >= 0, "0 or more"),
            ("thumb_size", self.thumb_size > 0, "positive"),
            ("features_in_memory_bytes", self.features_in_memory_bytes >= 0, "0 or more"),
            ("explain_concurrency", self.explain_concurrency > 0, "positive"),
            ("explain_cache_bytes", self.explain_cache_bytes >= 0, "0 or more"),
            ("bootstrap", self.bootstrap in BOOTSTRAP_MODES, f"one of {', '.join(BOOTSTRAP_MODES)}"),
        ) if not ok]
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    # -- environment variables and flags, both from the field declarations

    @classmethod
    def options(cls) -> list[tuple[str, Option]]:
        """(field name, Option) of every field, in declaration order."""
        return [(f.name, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, overridden by the CIR_* variables that are set (an empty one counts as unset unless the
        option says otherwise), then by `overrides`. A bad value is a ValueError naming the variable."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for name, opt in cls.options():
            value = env.get(opt.env) if opt.env else None
            if value is None or (value == "" and not opt.empty_is_value):
                continue
            try:
                kw[name] = opt.parse(value)
            except ValueError as e:
                raise ValueError(f"${opt.env}={value!r}: {e}") from None
        return cls(**{**kw, **overrides})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """One flag per option that has one; unset flags stay None, so from_args knows what was given."""
        for name, opt in cls.options():
            if not opt.flag:
                continue
            help_text = opt.help + cls._default_note(name, opt)
            if opt.parse is boolean:
                parser.add_argument(opt.flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                    help=help_text)
            elif opt.repeat:
                parser.add_argument(opt.flag, dest=name, default=None, action="append", metavar=opt.metavar,
                                    help=help_text)
            else:
                parser.add_argument(opt.flag, dest=name, default=None, type=_argparse_type(opt.parse),
                                    metavar=opt.metavar, help=help_text)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: "Settings | None" = None) -> "Settings":
        """`base` (default: from_env()) with the flags that were given on top."""
        base = base if base is not None else cls.from_env()
        given: dict[str, Any] = {}
        for name, opt in cls.options():
            value = getattr(args, name, None) if opt.flag else None
            if value is not None:
                given[name] = opt.parse(",".join(value)) if opt.repeat else value
        return dataclasses.replace(base, **given)

    @classmethod
    def _default_note(cls, name: str, opt: Option) -> str:
        """' (default: X; $CIR_Y)' after a flag's help."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        notes = ([] if default is None else [f"default: {_shown(default, opt)}"]) + ([f"${opt.env}"] if opt.env else [])
        return f" ({'; '.join(notes)})" if notes else ""


def _shown(default: Any, opt: Option) -> str:
    """A default as a user would type it: paths relative to the repository, bytes in MB."""
    if isinstance(default, Path):
        try:
            return str(default.relative_to(REPO_DIR)) + "/"
        except ValueError:
            return str(default)
    if opt.parse is megabytes:
        return f"{default / MB:g}"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:,}" if isinstance(default, int) else str(default)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` for argparse: its ValueError becomes argparse's 'argument --x: invalid value' message."""
    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: {e}") from None
    return convert
