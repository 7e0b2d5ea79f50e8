"""The demo page's third-party assets (Bootstrap 5) and the Content-Security-Policy the page runs under.

Bootstrap's files come from a pinned Python package, Bootstrap-Flask (its `static/bootstrap5/` folder holds
the Bootstrap 5.3.8 dist files), and this app serves them under /vendor/bootstrap/: the page is styled with
no network at all. That is the default, bootstrap="local". bootstrap="cdn" links the same file from jsDelivr
with Subresource Integrity instead (the package is then not needed).

Only Bootstrap's CSS is linked: the page uses no Bootstrap JavaScript component (static/app.js does the
rest), so the CDN origin is needed in style-src only. The page has no inline <script>/<style>, no on*
attributes and no style="" attributes, which is what lets the policy below leave out 'unsafe-inline'.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, abort, send_from_directory, url_for

from cir.serving.settings import BOOTSTRAP_MODES

BOOTSTRAP_PACKAGE = "flask_bootstrap"      # import name of Bootstrap-Flask (requirements.txt pins it)
BOOTSTRAP_VERSION = "5.3.8"                # the version that package ships; the CDN link uses the same
CDN_ORIGIN = "https://cdn.jsdelivr.net"
CDN_CSS = f"{CDN_ORIGIN}/npm/bootstrap@{BOOTSTRAP_VERSION}/dist/css/bootstrap.min.css"
# sha384 of bootstrap.min.css 5.3.8: the CDN file and the packaged one are byte-identical (a test checks)
CDN_CSS_SRI = "sha384-sRIl4kxILFvY47J16cr9ZwB07vP4J8+LH7qKQnuqkuIAvNWLzeN8tE5YBujZqJLB"
CSS_FILE = "css/bootstrap.min.css"         # relative to the package's bootstrap5 folder
_MAX_AGE = 86400                           # the files change only with the pinned package version

# The policy the page needs (issue 12's hardening policy). img-src needs data: because Bootstrap's CSS draws
# the form-select arrow as an inline SVG; blob: is part of that policy, unused by the page today.
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src {style}; script-src {script}; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def check_mode(mode: str) -> str:
    """The bootstrap setting, validated: "local" (served from the package) or "cdn" (Settings validates it
    too; this guards the helpers below when they are called directly)."""
    if mode not in BOOTSTRAP_MODES:
        raise ValueError(f"bootstrap must be one of {', '.join(BOOTSTRAP_MODES)}, not {mode!r}")
    return mode


def bootstrap_dir() -> Path:
    """The installed package's bootstrap5 folder; a clear error when the package is missing.

    The package is located, not imported: importing it pulls in WTForms, which the demo has no use for.
    """
    spec = importlib.util.find_spec(BOOTSTRAP_PACKAGE)
    folder = Path(spec.origin).parent / "static" / "bootstrap5" if spec and spec.origin else None
    if folder is None or not (folder / CSS_FILE).is_file():
        raise FileNotFoundError("Bootstrap's files are missing: install them with `python3 -m pip install "
                                "bootstrap-flask==2.6.0` (requirements.txt), or serve the page with "
                                "--bootstrap cdn (CIR_BOOTSTRAP=cdn)")
    return folder


def stylesheet(mode: str) -> dict[str, str]:
    """Attributes of the page's Bootstrap <link rel=stylesheet> (href, and integrity for the CDN); called
    while rendering the page (url_for needs the request)."""
    if check_mode(mode) == "cdn":
        return {"href": CDN_CSS, "integrity": CDN_CSS_SRI, "crossorigin": "anonymous"}
    return {"href": url_for("vendor.bootstrap_file", filename=CSS_FILE)}


def content_security_policy(mode: str) -> str:
    """The Content-Security-Policy header value that fits the page for this bootstrap setting."""
    style = "'self'" + (f" {CDN_ORIGIN}" if check_mode(mode) == "cdn" else "")
    return _CSP.format(style=style, script="'self'")


bp = Blueprint("vendor", __name__)


@bp.get("/vendor/bootstrap/<path:filename>")
def bootstrap_file(filename: str):
    """Bootstrap's dist files from the package (send_from_directory refuses paths outside the folder)."""
    try:
        folder = bootstrap_dir()
    except FileNotFoundError:
        abort(404)
    return send_from_directory(folder, filename, max_age=_MAX_AGE)
