"""Command-line search over an extracted index: `python3 query.py "a red t-shirt"`, `--image PATH`, `--ref ID`.

The command is cir/cli/query.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.query import cli

if __name__ == "__main__":
    raise SystemExit(cli())
