"""The web demo: `python3 app.py` (extracts the catalogue once if needed, then serves on port 5000), or in
production `python3 app.py --prepare-only && gunicorn -c gunicorn.conf.py 'app:create_app()'`.

`create_app(settings)` is cir.web.app's (the Flask app over cir.serving.Engine); the command is cir/cli/serve.py
(`python3 app.py --help` lists every flag and its CIR_* variable).
"""
from cir.cli.serve import cli, main
from cir.serving.settings import Settings
from cir.web.app import create_app

__all__ = ["Settings", "cli", "create_app", "main"]

if __name__ == "__main__":
    raise SystemExit(cli())
