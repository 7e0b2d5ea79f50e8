"""Training commands: `python3 train.py align|text|combiner` (the lite heads, stage 1, stage 2).

The command is cir/cli/train.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.train import cli

if __name__ == "__main__":
    raise SystemExit(cli())
