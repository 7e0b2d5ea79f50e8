"""The FashionIQ code path on real images: a lite Combiner trained on a FashionIQ layout of the catalogue
against the sum baseline there (the quality margin the test suite used to assert; tests/training now checks
only that the path runs and that evaluation equals validation).

    python3 benchmarks/bench_layouts.py                  # shirts, 400 triplets per kind, 6 epochs

The catalogue's triplets of one FashionIQ category are written into a FashionIQ layout in a temporary folder
(catalog.layouts: train from train, val from val, never test; images symlinked); the lite Combiner is trained
on its train split (train.py combiner: the batch loss, the default on FashionIQ), then the captions typed
alone as text, sum and the Combiner are evaluated on val by evaluate.py's FashionIQ protocol. Prints one JSON
line and a markdown table row.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cir.catalog.layouts import write_fashioniq  # noqa: E402
from cir.data import resolve_data_root  # noqa: E402
from cir.evaluation.runs import EvalConfig, evaluate  # noqa: E402
from cir.extraction import IndexStore  # noqa: E402
from cir.training.config import CombinerStageConfig  # noqa: E402
from cir.training.stages import train_combiner  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench_layouts")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--category", default="shirt", help="FashionIQ category written from the catalogue")
    p.add_argument("--per-kind", type=int, default=400, help="catalogue triplets of each kind in the layout")
    p.add_argument("--epochs", type=int, default=6, help="Combiner training epochs")
    p.add_argument("--data-root", default=None, help="the catalogue folder (default: the shared data folder)")
    args = p.parse_args()
    setup_logging()
    catalog = resolve_data_root("catalog", args.data_root)
    with tempfile.TemporaryDirectory(prefix="bench-layouts-") as tmp:
        root, features = Path(tmp) / "fiq", Path(tmp) / "features"
        write_fashioniq(catalog, root, categories=[args.category], per_kind=args.per_kind)
        t0 = time.time()
        summary = train_combiner(CombinerStageConfig(
            dataset="fashioniq", data_root=str(root), categories=(args.category,), features=str(features),
            cache_dir=str(Path(tmp) / "cache"), epochs=args.epochs, out=str(Path(tmp) / "c.safetensors"),
            workers=0, device="cpu"))
        train_s = time.time() - t0
        ev = EvalConfig(task="composed", dataset="fashioniq", data_root=str(root), split="val",
                        store=IndexStore(features, workers=0), device="cpu")
        texts = evaluate(replace(ev, combiner="text"))["text"][0]
        sums = evaluate(replace(ev, combiner="sum"))["sum"][0]
        comb = evaluate(replace(ev, combiner=summary["saved"]))[summary["saved"]][0]
    out = {"category": args.category, "per_kind": args.per_kind, "epochs": args.epochs, "queries": sums["queries"],
           "text": {k: texts[k] for k in ("average_R@10", "average_R@50", "average")},
           "sum": {k: sums[k] for k in ("average_R@10", "average_R@50", "average")},
           "combiner": {k: comb[k] for k in ("average_R@10", "average_R@50", "average")},
           "train_seconds": round(train_s, 1)}
    print(json.dumps(out))
    print(f"| {args.category}, {args.per_kind}/kind, {sums['queries']} val queries | "
          f"{texts['average_R@10']} / {texts['average_R@50']} | "
          f"{sums['average_R@10']} / {sums['average_R@50']} | {comb['average_R@10']} / {comb['average_R@50']} | "
          f"{out['combiner']['average'] - out['sum']['average']:+.2f} | "
          f"{out['combiner']['average'] - out['text']['average']:+.2f} | {train_s:.0f} s |")


if __name__ == "__main__":
    main()
