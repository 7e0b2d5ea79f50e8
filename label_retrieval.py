"""Kmeans-IR's two-stage retrieval by label, on any encoder's features: `python3 label_retrieval.py`.

The command is cir/cli/label_retrieval.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.label_retrieval import cli

if __name__ == "__main__":
    raise SystemExit(cli())
