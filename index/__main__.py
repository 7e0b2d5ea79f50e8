"""`python3 -m index check|build|load`: the index command line (index/cli.py)."""
from utils import run_cli

from .cli import main

raise SystemExit(run_cli(main))
