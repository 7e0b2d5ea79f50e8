"""One-shot feature extraction: `python3 extract_features.py --dataset catalog --split test --out features`.

The command is cir/cli/extract.py (`--help` lists every flag); the API it re-exports is cir.extraction's:
extract_index (encode a dataset's images into a feature folder), ensure_index (load it, extracting first when
missing or stale), index_name and plan_indexes (which folders a command asks for).
"""
from cir.cli.extract import cli, main
from cir.extraction import ensure_index, extract_index, index_name, plan_indexes

__all__ = ["cli", "ensure_index", "extract_index", "index_name", "main", "plan_indexes"]

if __name__ == "__main__":
    raise SystemExit(cli())
