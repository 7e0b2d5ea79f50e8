"""Why an image matches a query (Grad-CAM): `python3 explain.py --image PATH --text ... --out heat.png`.

The command is cir/cli/explain.py (`--help` lists every flag); the library it calls lives in cir/.
"""
from cir.cli.explain import cli

if __name__ == "__main__":
    raise SystemExit(cli())
