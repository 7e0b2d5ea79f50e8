"""The classical bof encoder's fitting: `python3 bof.py fit` (vocabulary + PCA on the catalogue's train split).

The command is cir/cli/bof.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.bof import cli

if __name__ == "__main__":
    raise SystemExit(cli())
