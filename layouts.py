"""The catalogue's triplets written into FashionIQ and CIRR layouts: `python3 layouts.py fashioniq|cirr --out DIR`.

The command is cir/cli/layouts.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.layouts import cli

if __name__ == "__main__":
    raise SystemExit(cli())
