"""The page's assets and policy through Flask's test client: Bootstrap served from the pinned package (the
default) or linked from the CDN, the Content-Security-Policy header, and a page with no inline code.

tests/web/test_browser.py checks the same in a real browser; these run without one.
"""
from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

import pytest

from cir.cli.serve import main
from cir.serving.settings import Settings
from cir.web import assets
from cir.web.app import create_app
from cir.web.assets import BOOTSTRAP_VERSION, CDN_CSS, CDN_CSS_SRI, CSS_FILE, bootstrap_dir, content_security_policy

CSS_URL = "/vendor/bootstrap/css/bootstrap.min.css"


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    return create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads"), warm_up=False))


class _Inline(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' refuses: inline scripts, <style>, style= and on* attributes."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self.links: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and not a.get("src"):
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {k}=" for k in a if k == "style" or k.startswith("on")]
        if tag == "link" and a.get("rel") == "stylesheet":
            self.links.append(a)


def _parse(html: str) -> _Inline:
    p = _Inline()
    p.feed(html)
    return p


def test_page_serves_bootstrap_from_the_package(app):
    client = app.test_client()
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["Content-Security-Policy"] == content_security_policy("local")
    page = _parse(resp.get_data(as_text=True))
    assert page.found == []
    assert [link["href"] for link in page.links] == [CSS_URL, "/static/app.css"]
    assert "integrity" not in page.links[0]
    css = client.get(CSS_URL)
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert css.get_data()[:80].decode().startswith('@charset "UTF-8";/*!\n * Bootstrap  v5.3.8 ')
    # JSON answers carry the policy too (harmless, and an error page can never run inline code)
    assert client.get("/api/health").headers["Content-Security-Policy"].startswith("default-src 'self'")


@pytest.mark.parametrize("path", ["/vendor/bootstrap/%2e%2e/%2e%2e/__init__.py", "/vendor/bootstrap/..%2f__init__.py",
                                  "/vendor/bootstrap/css/nope.css", "/vendor/bootstrap/"])
def test_vendor_route_serves_only_bootstrap_files(app, path):
    resp = app.test_client().get(path)
    assert resp.status_code == 404
    assert b"flask" not in resp.get_data().lower()


def test_cdn_integrity_matches_the_packaged_file():
    """The CDN link's SRI hash is that of the packaged file: both modes serve the same bytes (5.3.8)."""
    data = (bootstrap_dir() / CSS_FILE).read_bytes()
    assert "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode() == CDN_CSS_SRI
    assert f"Bootstrap  v{BOOTSTRAP_VERSION} ".encode() in data[:100]
    assert f"bootstrap@{BOOTSTRAP_VERSION}/" in CDN_CSS


def test_page_with_bootstrap_from_the_cdn(demo_world, tmp_path):
    app = create_app(Settings(**demo_world, upload_dir=tmp_path, bootstrap="cdn", warm_up=False))
    resp = app.test_client().get("/")
    page = _parse(resp.get_data(as_text=True))
    assert page.found == []
    assert page.links[0] == {"rel": "stylesheet", "href": CDN_CSS, "integrity": CDN_CSS_SRI,
                             "crossorigin": "anonymous"}
    csp = resp.headers["Content-Security-Policy"]
    assert csp == content_security_policy("cdn")
    assert "style-src 'self' https://cdn.jsdelivr.net;" in csp and "script-src 'self';" in csp


def test_csp_strings():
    local = content_security_policy("local")
    assert local == ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                     "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                     "form-action 'self'")
    assert "unsafe" not in content_security_policy("cdn")


def test_bootstrap_setting(monkeypatch):
    assert Settings().bootstrap == "local"
    assert Settings.from_env({"CIR_BOOTSTRAP": "cdn"}).bootstrap == "cdn"
    with pytest.raises(ValueError, match=r"\$CIR_BOOTSTRAP='CDN '.*local, cdn"):
        Settings.from_env({"CIR_BOOTSTRAP": "CDN "})
    with pytest.raises(SystemExit) as e:
        main(["--bootstrap", "nowhere", "--no-extract"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="bootstrap must be one of"):
        create_app(Settings(bootstrap="inline"))


def test_missing_package_is_a_clear_start_up_error(monkeypatch):
    monkeypatch.setattr(assets, "BOOTSTRAP_PACKAGE", "no_such_bootstrap_package")
    with pytest.raises(FileNotFoundError, match=r"pip install bootstrap-flask==2\.6\.0.*--bootstrap cdn"):
        create_app(Settings())  # fails before loading anything
