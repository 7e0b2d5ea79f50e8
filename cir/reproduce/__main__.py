"""`python3 -m cir.reproduce fashioniq|cirr ...`: a paper's whole pipeline (cir/cli/reproduce.py)."""
from cir.cli.reproduce import cli

raise SystemExit(cli())
