"""How the composed path generalises to kinds of edits it was never taught: a leave-kinds-out protocol.

    python3 benchmarks/bench_generalisation.py --combiner-out .cache/generalisation
        # every family, 8 epochs, 800 triplets per kind; keeps the Combiners there, so a rerun only evaluates
    python3 benchmarks/bench_generalisation.py --epochs 1 --per-kind 200 --families colour gender   # smoke run

For each family of triplet kinds (cir.catalog.families: every kind teaching one change, pairs included), a
Combiner is trained as `train.py combiner` trains it (CombinerStageConfig's defaults, but for --epochs and
--per-kind) with the family's kinds left out of its train and val triplets (--exclude-kinds); one taught
Combiner is trained on every kind with the same budget. Each family is evaluated on the catalogue's test
triplets of its kinds (triplets.generate(test images, seed 0, 500 per kind); index = the 993 test images, as
bench_composed.py builds it), by `evaluate.py --task composed`'s protocol (protocols.composed_catalog), with:
image only, the caption alone as text, the whole wish typed as text (catalog.wishes: what a shopper without
the photo would type), sum, the taught Combiner and the held-out one. Prints attr@10 and R@10 per family as
markdown tables, with the held-out Combiner minus the better of sum and image only (what training on other
kinds added) and as a share of the typed wish; then attr@10 per kind; then one JSON line of every number.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from cir import encoders  # noqa: E402
from cir.catalog import triplets  # noqa: E402
from cir.catalog.families import FAMILIES, FAMILY_NAMES  # noqa: E402
from cir.catalog.wishes import wish_text  # noqa: E402
from cir.combiner import load_method  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.encoders.texts import CachedTexts  # noqa: E402
from cir.evaluation.protocols import composed_catalog  # noqa: E402
from cir.extraction.local import ensure_index, index_name  # noqa: E402
from cir.index import Metadata  # noqa: E402
from cir.paths import WEIGHTS_DIR  # noqa: E402
from cir.training.config import PRESETS, CombinerStageConfig, record  # noqa: E402
from cir.training.stages import train_combiner  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench_generalisation")
ROWS = ("image only", "caption as text", "wish typed as text", "sum", "Combiner taught", "Combiner held out")
META_ROWS = ("sum + metadata", "Combiner held out + metadata")   # --metadata: the metadata path, apart
# Config fields that do not change what a checkpoint learned: a reused one may differ in them.
NOT_COMPARED = {"out", "cache_dir", "device", "workers", "batch_size", "verbose", "restart"}


def parse_args() -> argparse.Namespace:
    d = CombinerStageConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES, metavar="FAMILY",
                   help="kind families to hold out, one Combiner each (default: all: " + ", ".join(FAMILY_NAMES)
                        + ")")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of every Combiner (train.py's: "
                   f"{PRESETS[d.preset]['combiner']['epochs']})")
    p.add_argument("--per-kind", type=int, default=800,
                   help=f"train triplets of each kind drawn per epoch (train.py's: {d.per_kind})")
    p.add_argument("--test-per-kind", type=int, default=500, help="evaluated triplets of each kind (seed 0)")
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="split evaluated on: test for the reported tables, val to choose a setting (--text-residual)")
    p.add_argument("--metadata", action="store_true",
                   help="also the metadata path (cir.index.metadata) on top of sum and the held-out Combiner, in a "
                        "table of its own")
    p.add_argument("--text-residual", type=float, default=None,
                   help="weight of the caption's own text score the Combiners train with (default: train.py's)")
    p.add_argument("--combiner-out", default=None,
                   help="folder keeping the Combiners (<family>.safetensors, taught.safetensors); one already there "
                        "trained with the same settings and budget is evaluated without retraining (default: a "
                        "temporary folder, removed at the end)")
    p.add_argument("--features", default=d.features, help="features root: the catalogue's train, val and test "
                   "indexes are read from (or extracted into) it")
    p.add_argument("--data-root", default=None, help="the catalogue folder (default: the shared data folder)")
    p.add_argument("--device", default=d.device, help="where the Combiners train: auto (CUDA when present), cpu, "
                   "cuda; evaluation runs on the CPU")
    return p.parse_args()


def stage_config(args: argparse.Namespace, out_dir: Path, name: str, exclude: tuple[str, ...]) -> CombinerStageConfig:
    """train.py combiner's defaults, with this benchmark's budget and paths and the kinds left out."""
    return CombinerStageConfig(epochs=args.epochs, per_kind=args.per_kind, exclude_kinds=exclude,
                               out=str(out_dir / f"{name}.safetensors"), text_residual=args.text_residual,
                               features=args.features, data_root=args.data_root, device=args.device)


def _comparable(args: dict) -> dict:
    """A recorded config's fields that decide what the Combiner learned, JSON-normalised (tuples as lists)."""
    return json.loads(json.dumps({k: v for k, v in args.items() if k not in NOT_COMPARED}))


def trained(cfg: CombinerStageConfig, feature_dim: int) -> Path:
    """cfg.out, trained unless a Combiner trained with the same settings (the budget included) is there."""
    out = Path(cfg.out)
    history = out.with_name(out.stem + ".train.json")
    if out.exists() and history.exists():
        recorded = json.loads(history.read_text()).get("args", {})
        if _comparable(recorded) == _comparable(record(cfg.with_preset(feature_dim))):
            log.info("reusing %s", out)
            return out
        log.info("%s was trained with other settings: training again", out)
    log.info("training %s (left out: %s)", out.name, ", ".join(cfg.exclude_kinds) or "nothing")
    return Path(train_combiner(cfg)["saved"])


def family_metrics(texts, index, records: list, trips: list, wishes: list[str], taught: Path,
                   held: Path, metadata: Metadata | None = None) -> dict[str, dict]:
    """composed_catalog's metrics of every row on one family's test triplets (and the metadata path's rows on
    top of sum and the held-out Combiner, when `metadata` is given)."""
    wished = [replace(t, caption=w) for t, w in zip(trips, wishes)]
    runs = {"image only": (trips, "image"), "caption as text": (trips, "text"), "wish typed as text": (wished, "text"),
            "sum": (trips, "sum"), "Combiner taught": (trips, str(taught)), "Combiner held out": (trips, str(held))}
    out = {}
    for label, (ts, spec) in runs.items():
        method, combiner = load_method(spec)
        out[label] = composed_catalog(texts, index, records, ts, method, combiner).metrics
    for label in META_ROWS if metadata else ():  # the metadata path on top, reported apart
        method, combiner = load_method(runs[label.removesuffix(" + metadata")][1])
        out[label] = composed_catalog(texts, index, records, trips, method, combiner, metadata).metrics
    return out


def metadata_table(results: dict[str, dict]) -> list[str]:
    """Markdown: attr@10 of the metadata path on top of sum and the held-out Combiner, per family."""
    lines = ["| family (attr@10) | sum | " + " | ".join(META_ROWS) + " | held out + metadata minus max(sum, image) "
             "| held out + metadata as % of text-typed |", "|---|---:|" + "---:|" * (len(META_ROWS) + 2)]
    for family, rows in results.items():
        v = {label: rows[label]["attr@10"] for label in ("sum", "image only", "wish typed as text", *META_ROWS)}
        held = v["Combiner held out + metadata"]
        share = f"{100 * held / v['wish typed as text']:.0f}%" if v["wish typed as text"] else "n/a"
        lines.append(f"| {family} | {v['sum']:.1f} | " + " | ".join(f"{v[r]:.1f}" for r in META_ROWS)
                     + f" | {held - max(v['sum'], v['image only']):+.1f} | {share} |")
    return lines


def family_table(results: dict[str, dict], metric: str) -> list[str]:
    """Markdown: `metric` of every row per family, held out minus max(sum, image), held out as % of the wish."""
    lines = [f"| family ({metric}) | queries | " + " | ".join(ROWS) + " | held-out minus max(sum, image) "
             "| held-out as % of text-typed |", "|---|---:|" + "---:|" * (len(ROWS) + 2)]
    for family, rows in results.items():
        v = {label: rows[label][metric] for label in ROWS}
        held, wish = v["Combiner held out"], v["wish typed as text"]
        gain = held - max(v["sum"], v["image only"])
        share = f"{100 * held / wish:.0f}%" if wish else "n/a"
        lines.append(f"| {family} | {rows['sum']['queries']} | " + " | ".join(f"{v[r]:.1f}" for r in ROWS)
                     + f" | {gain:+.1f} | {share} |")
    return lines


def kinds_table(results: dict[str, dict]) -> list[str]:
    """Markdown: attr@10 per kind of each family, the rows that differ by kind."""
    cols = ("wish typed as text", "sum", "Combiner taught", "Combiner held out")
    lines = ["| family | kind | queries | " + " | ".join(cols) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    for family, rows in results.items():
        for kind, m in rows["sum"]["kinds"].items():
            lines.append(f"| {family} | {kind} | {m['queries']} | "
                         + " | ".join(f"{rows[c]['kinds'][kind]['attr@10']:.1f}" for c in cols) + " |")
    return lines


def scratch(folder: str | None) -> contextlib.AbstractContextManager:
    """Where the Combiners go: --combiner-out (kept; never weights/), else a temporary folder."""
    if folder is None:
        return tempfile.TemporaryDirectory(prefix="bench-generalisation-")
    path = Path(folder).resolve()
    if path == WEIGHTS_DIR.resolve() or WEIGHTS_DIR.resolve() in path.parents:
        raise SystemExit(f"--combiner-out {folder}: the shipped weights/ folder is not a scratch folder")
    path.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(path))


def main() -> None:
    args = parse_args()
    setup_logging()
    root = resolve_data_root("catalog", args.data_root)
    records = catalog_images(root, args.split)
    d = CombinerStageConfig()
    encoder = encoders.load(d.encoder, "cpu", text=d.text_encoder)
    index = ensure_index(records, encoder, Path(args.features) / index_name("catalog", args.split),
                         info={"dataset": "catalog", "split": args.split, "data_root": str(root)})
    trips = triplets.generate(records, seed=0, per_kind=args.test_per_kind)
    attrs = {r.name: r.attrs for r in records}
    rng = random.Random(0)
    wishes = [wish_text(t, attrs[t.reference], rng) for t in trips]
    texts = CachedTexts(encoder)  # the captions and wishes of every row encoded once
    metadata = Metadata.from_records(records, index.names) if args.metadata else None
    results = {}
    with scratch(args.combiner_out) as folder:
        out_dir = Path(folder)
        taught = trained(stage_config(args, out_dir, "taught", ()), encoder.dim)
        for family in tqdm(args.families, desc="families"):
            held = trained(stage_config(args, out_dir, family, FAMILIES[family]), encoder.dim)
            rows = [i for i, t in enumerate(trips) if t.kind in FAMILIES[family]]
            results[family] = family_metrics(texts, index, records, [trips[i] for i in rows],
                                             [wishes[i] for i in rows], taught, held, metadata)
    print(f"\nLeave-kinds-out, {args.epochs} epochs x {args.per_kind} triplets per kind; {args.split} split, "
          f"{len(index)} images, {args.test_per_kind} triplets per kind at most\n")
    for metric in ("attr@10", "R@10"):
        print("\n".join(family_table(results, metric)) + "\n")
    if metadata:
        print(f"The metadata path on top (cir.index.metadata, weight {metadata.weight}, max_df {metadata.max_df}):\n")
        print("\n".join(metadata_table(results)) + "\n")
    print("\n".join(kinds_table(results)) + "\n")
    print(json.dumps({"epochs": args.epochs, "per_kind": args.per_kind, "families": {
        f: {"kinds": FAMILIES[f], **{label: {k: m[k] for k in ("queries", "R@10", "attr@10", "attr@10_ceiling")}
                                     for label, m in rows.items()}} for f, rows in results.items()}}))


if __name__ == "__main__":
    main()
