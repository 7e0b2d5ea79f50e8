"""`python3 -m cir.index check|build|load`: the index command line (cir/cli/index.py)."""
from cir.cli.index import cli

raise SystemExit(cli())
