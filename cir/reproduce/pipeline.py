"""A paper's whole pipeline as steps over the training and evaluation library: features, stage 1, stage 2,
evaluation on val, and for CIRR the test1 submission files. Every step records what it was run with in
<run>/steps.json; a step whose record and outputs are there is skipped, so the command is re-run until done
(an interrupted training resumes from its own per-epoch state, an interrupted extraction from its shards)."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from cir import encoders
from cir.data import cirr_file, list_images, load_triplets, resolve_data_root
from cir.evaluation.runs import EvalConfig, evaluate
from cir.evaluation.submission import check_submission, submission_paths
from cir.extraction import IndexStore, open_dataset_index
from cir.index.files import MANIFEST_FILE
from cir.reproduce.table import format_table
from cir.training.config import DTYPES, PRESETS, CombinerStageConfig, ComposedConfig, TextStageConfig, record
from cir.training.data import load_train_data
from cir.training.stages import train_combiner, train_text
from cir.utils import content_key, write_json

log = logging.getLogger("reproduce")
DATASETS = ("fashioniq", "cirr")
QUICK_BATCH = 32    # --quick: triplets per batch, so a small layout still makes several steps per epoch


@dataclass(frozen=True)
class ReproduceConfig:
    """One `python3 -m cir.reproduce` run; each field is the flag of the same name (--help says more)."""

    dataset: str                        # fashioniq | cirr, in its real layout under data_root
    data_root: str | None = None        # dataset folder (None: $CIR_DATA_ROOT or ../shared/data)
    encoder: str = "openai:RN50x4"      # the papers' CLIP
    out: str | None = None              # run folder (None: runs/<dataset>-<preset>-<encoder>)
    features: str | None = None         # features root (None: <out>/features)
    categories: tuple[str, ...] | None = None   # FashionIQ categories (None: every one found)
    preset: str = "clip4cir"            # training presets (cir.training.config.PRESETS)
    epochs_scale: float = 1.0           # each stage's preset epochs times this (at least 1)
    quick: bool = False                 # smoke run: 1 epoch per stage, batch QUICK_BATCH
    skip_stage1: bool = False           # stage 2 on the base text side (no fine-tuning)
    batch_size: int | None = None       # images per batch when extracting (None: the preset's --clip-bs)
    workers: int | None = None          # decoding workers (None: min(4, cores))
    transform: str | None = None        # preprocessing (None: the preset's, else the encoder's own)
    target_ratio: float | None = None   # targetpad's ratio (None: the preset's, else 1.25)
    dtype: str = "float16"              # features and checkpoints
    device: str = "auto"                # auto (CUDA when present), cpu, cuda
    seed: int = 0                       # training seed
    restart: bool = False               # run every step again, training from its first epoch

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if not self.epochs_scale > 0:
            raise ValueError(f"--epochs-scale must be above 0, not {self.epochs_scale}")
        if self.categories is not None and self.dataset != "fashioniq":
            raise ValueError("--categories only applies to fashioniq")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")

    @property
    def run_dir(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.encoder.rstrip("/").split("/")[-1].split(":")[-1])
        return Path(self.out) if self.out else Path("runs") / f"{self.dataset}-{self.preset}-{slug}"

    @property
    def features_root(self) -> Path:
        return Path(self.features) if self.features else self.run_dir / "features"

    def preprocessing(self) -> tuple[str | None, float | None, int]:
        """(transform, target ratio, extraction batch): the flags', else the preset's. Both stages and the
        evaluation use these, so every step reads the same feature folders (a folder is keyed by them)."""
        preset = PRESETS[self.preset]["combiner"]
        ratio = self.target_ratio if self.target_ratio is not None else preset.get("target_ratio")
        return self.transform or preset.get("transform"), ratio, self.batch_size or preset.get("batch_size", 64)

    def store(self) -> IndexStore:
        return IndexStore(self.features_root, self.preprocessing()[2], self.workers, self.dtype)


def stage_options(cfg: ReproduceConfig, cmd: str) -> dict:
    """What a stage takes from the run besides its preset: data, encoder, folders, preprocessing, and the
    epochs scaled (or --quick's)."""
    transform, ratio, batch_size = cfg.preprocessing()
    opts = dict(dataset=cfg.dataset, data_root=cfg.data_root, categories=cfg.categories, encoder=cfg.encoder,
                features=str(cfg.features_root), cache_dir=str(cfg.run_dir / "cache"), preset=cfg.preset,
                batch_size=batch_size, workers=cfg.workers, transform=transform, target_ratio=ratio,
                dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)
    preset = PRESETS[cfg.preset][cmd]
    if cfg.quick:
        opts.update(epochs=1, batch=min(QUICK_BATCH, preset["batch"]))
    elif cfg.epochs_scale != 1:
        opts["epochs"] = max(1, round(preset["epochs"] * cfg.epochs_scale))
    return opts


def text_config(cfg: ReproduceConfig) -> TextStageConfig:
    """Stage 1, as `train.py text --preset PRESET` (its side too: both for clip4cir, as the authors' --encoder
    both)."""
    return TextStageConfig(**stage_options(cfg, "text"), out=str(cfg.run_dir / "stage1" / "text.safetensors"))


def combiner_config(cfg: ReproduceConfig, text_encoder: str) -> CombinerStageConfig:
    """Stage 2, as `train.py combiner --preset PRESET --text-encoder TEXT`."""
    return CombinerStageConfig(**stage_options(cfg, "combiner"), text_encoder=text_encoder,
                               out=str(cfg.run_dir / "stage2" / "combiner.safetensors"))


def eval_config(cfg: ReproduceConfig, combiner: str, split: str, **kw) -> EvalConfig:
    """`evaluate.py --task composed` on `split` with the Combiner, preprocessed and with empty captions as the
    preset trains (clip4cir: as the original's validate.py, empty captions encoded)."""
    transform, ratio, _ = cfg.preprocessing()
    empty = PRESETS[cfg.preset]["combiner"].get("empty_captions", "image")
    return EvalConfig(task="composed", dataset=cfg.dataset, split=split, data_root=cfg.data_root,
                      categories=cfg.categories, combiner=combiner, encoder=cfg.encoder, device=cfg.device,
                      store=cfg.store(), transform=transform, target_ratio=ratio, empty_captions=empty, **kw)


class Steps:
    """<run>/steps.json: each step's key (what it runs with, and its inputs' keys), outputs and summary. A
    finished step with the same key whose outputs exist is skipped; a step started with another key (an
    interrupted run, then other settings or a new stage 1) starts over instead of resuming."""

    def __init__(self, path: Path, restart: bool):
        self.path, self.restart = path, restart
        self.done = {} if restart or not path.is_file() else json.loads(path.read_text())
        self.status: dict[str, str] = {}

    def run(self, name: str, key: str, outputs: Sequence[Path], fn: Callable[[bool], dict]) -> dict:
        """`fn(restart)`'s summary, or the recorded one when the step is up to date."""
        entry = self.done.get(name) or {}
        if entry.get("key") == key and "result" in entry and all(Path(p).exists() for p in outputs):
            log.info("%s: up to date, skipped (%s)", name, ", ".join(map(str, outputs)))
            self.status[name] = "up to date"
            return entry["result"]
        restart = self.restart or entry.get("key", key) != key
        self._record(name, {"key": key, "started": True})
        result = fn(restart)
        self._record(name, {"key": key, "outputs": [str(p) for p in outputs], "result": result})
        self.status[name] = "ran"
        return result

    def _record(self, name: str, entry: dict) -> None:
        self.done[name] = entry
        write_json(self.path, self.done)


def has_test1(cfg: ReproduceConfig) -> bool:
    """Whether the CIRR folder has test1 (its annotations and image list)."""
    root = resolve_data_root("cirr", cfg.data_root)
    return cirr_file(root, "captions", "test1").is_file() and cirr_file(root, "splits", "test1").is_file()


def extract_features(cfg: ReproduceConfig, stage: ComposedConfig) -> dict[str, int]:
    """Step 1: the feature folders both stages and the evaluation read (train, val, CIRR test1), each
    extracted when missing or stale and loaded otherwise; returns every folder's row count."""
    transform, ratio, _ = cfg.preprocessing()
    encoder = encoders.load(cfg.encoder, cfg.device, preprocess=transform, target_ratio=ratio)
    # the stage's own data loading opens (extracting where needed) exactly the folders it will read
    load_train_data(encoder, stage.with_preset(encoder.dim))
    if cfg.dataset == "cirr" and has_test1(cfg):
        open_dataset_index(encoder, "cirr", "test1", cfg.store(), cfg.data_root)
    counts = {}
    for manifest in sorted(cfg.features_root.glob(f"*/{MANIFEST_FILE}")):
        counts[manifest.parent.name] = json.loads(manifest.read_text()).get("count")
    return counts


def history_file(checkpoint: str) -> Path:
    """The .train.json a training run writes beside its checkpoint."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".train.json")


def train_step(steps: Steps, name: str, stage: ComposedConfig, upstream: str) -> tuple[dict, str]:
    """Run one training stage unless it is up to date; returns its summary and key."""
    key = content_key(name, record(stage), upstream)
    train = train_text if isinstance(stage, TextStageConfig) else train_combiner
    result = steps.run(name, key, [Path(stage.out), history_file(stage.out)],
                       lambda restart: train(replace(stage, restart=restart)))
    return result, key


def evaluate_step(steps: Steps, name: str, ecfg: EvalConfig, upstream: str, outputs: Sequence[Path],
                  check: Callable[[], dict] | None = None) -> dict:
    """Run evaluate.py's composed task unless it is up to date; returns its metrics line (and `check`'s)."""
    def run(restart: bool) -> dict:   # evaluation keeps no state to resume: restart changes nothing
        metrics = evaluate(ecfg)[ecfg.combiner][0]
        return {**metrics, **(check() if check else {})}
    return steps.run(name, content_key(name, asdict(ecfg), upstream), outputs, run)


def submission_step(cfg: ReproduceConfig, steps: Steps, combiner: str, upstream: str) -> dict | None:
    """CIRR: test1's submission files, checked as the server reads them; None (with a warning) without test1."""
    if not has_test1(cfg):
        log.warning("no CIRR test1 annotations under %s: no submission files",
                    resolve_data_root("cirr", cfg.data_root))
        return None
    path = cfg.run_dir / "submission" / "test1.json"
    ecfg = eval_config(cfg, combiner, "test1", submission=str(path))

    def check() -> dict:
        root = resolve_data_root("cirr", cfg.data_root)
        names = {r.name for r in list_images("cirr", root, "test1")}
        recall, _ = check_submission(path, load_triplets("cirr", root, "test1"), names)
        return {"files": [str(p) for p in submission_paths(path)], "pairs": len(recall) - 2}
    result = evaluate_step(steps, "submission", ecfg, upstream, submission_paths(path), check)
    return {"files": result["files"], "pairs": result["pairs"]}


def run_name(cfg: ReproduceConfig) -> str:
    """How the table names this run."""
    trained = "Combiner on the base text side" if cfg.skip_stage1 else "stage 1 + Combiner"
    scale = ", --quick" if cfg.quick else (f", epochs x{cfg.epochs_scale:g}" if cfg.epochs_scale != 1 else "")
    return f"this run: {cfg.encoder}, --preset {cfg.preset}{scale}: {trained}"


def reproduce(cfg: ReproduceConfig) -> dict:
    """Every step in order, each skipped when up to date: features, stage 1 (unless skip_stage1), stage 2,
    val metrics, CIRR's test1 submission. Returns the results (also <run>/results.json; the table beside the
    papers' in <run>/results.md)."""
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    steps = Steps(run / "steps.json", cfg.restart)
    stage1 = None if cfg.skip_stage1 else text_config(cfg)
    total = 3 + int(stage1 is not None) + int(cfg.dataset == "cirr")
    n = iter(range(1, total + 1))
    log.info("[%d/%d] features under %s", next(n), total, cfg.features_root)
    counts = extract_features(cfg, stage1 or combiner_config(cfg, "base"))
    summaries, key, text_side = {}, "base", "base"
    if stage1 is not None:
        log.info("[%d/%d] stage 1: train.py text --preset %s -> %s", next(n), total, cfg.preset, stage1.out)
        summaries["stage1"], key = train_step(steps, "stage1", stage1, key)
        text_side = stage1.out
    stage2 = combiner_config(cfg, text_side)
    log.info("[%d/%d] stage 2: train.py combiner --preset %s -> %s", next(n), total, cfg.preset, stage2.out)
    summaries["stage2"], key = train_step(steps, "stage2", stage2, key)
    log.info("[%d/%d] evaluation: %s val", next(n), total, cfg.dataset)
    rankings = run / "eval" / "val-rankings.json"
    metrics = evaluate_step(steps, "evaluate", eval_config(cfg, stage2.out, "val", save_rankings=str(rankings)),
                            key, [rankings])
    submission = None
    if cfg.dataset == "cirr":
        log.info("[%d/%d] CIRR test1 submission files", next(n), total)
        submission = submission_step(cfg, steps, stage2.out, key)
    results = {"dataset": cfg.dataset, "encoder": cfg.encoder, "preset": cfg.preset, "run": str(run),
               "name": run_name(cfg), "split": "val", "metrics": metrics, "features": counts,
               "checkpoints": {"stage1": stage1.out if stage1 else None, "stage2": stage2.out},
               "training": summaries, "submission": submission, "steps": steps.status}
    write_json(run / "results.json", results)
    (run / "results.md").write_text(format_table(cfg.dataset, results["name"], metrics) + "\n")
    return results
