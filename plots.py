"""Training curves redrawn from a history: `python3 plots.py weights/combiner.train.json`.

The command is cir/cli/plots.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.plots import cli

if __name__ == "__main__":
    raise SystemExit(cli())
