"""`plots.py HISTORY.train.json`: a training history's curve redrawn (cir.evaluation.plots draws every plot)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from cir.evaluation.plots import draw_training, training_plot_data, training_png
from cir.utils import run_cli, setup_logging

log = logging.getLogger("plots")


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the training curve of existing .train.json histories (train.py draws new ones itself)."""
    p = argparse.ArgumentParser(description="Draw the training curve of a train.py history (.train.json).")
    p.add_argument("history", nargs="+", help="a .train.json file written by train.py")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help="where the PNG goes (one history only; default: beside it, <name>.train.png)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.out is not None and len(args.history) > 1:
        raise ValueError("--out names one PNG: give one history with it")
    for path in args.history:
        try:
            report = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a train.py history (not JSON: {e})") from e
        if not isinstance(report, dict) or not report.get("history"):
            raise ValueError(f"{path}: not a train.py history (no 'history' rows)")
        series = training_plot_data(report["history"])
        best = (report.get("best") or {}).get("epoch")
        out = draw_training(series, args.out or training_png(path), f"{Path(path).name}", best)
        log.info("wrote %s", out)
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
