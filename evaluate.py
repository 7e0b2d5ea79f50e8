"""Retrieval metrics as the papers report them: `python3 evaluate.py --task text2image|image2image|composed`.

The command is cir/cli/evaluate.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.evaluate import cli

if __name__ == "__main__":
    raise SystemExit(cli())
