"""Fixtures of the browser tests of the shopper's session (test_browser_session.py): a Flask app served on a
free local port, Debian's chromium, and pages that record every problem (as test_browser.py's do)."""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest

from cir.data import catalog_images, folder_images
from cir.extraction import ensure_index

LOCAL = re.compile(r"^http://127\.0\.0\.1:\d+/")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def serve_app():
    """serve_app(app) -> base URL: the app on a free local port in a thread, stopped at the session's end."""
    from werkzeug.serving import make_server
    servers = []

    def serve(app) -> str:
        srv = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        servers.append((srv, thread))
        return f"http://127.0.0.1:{srv.port}"
    yield serve
    for srv, thread in servers:
        srv.shutdown()
        thread.join(5)


@pytest.fixture(scope="module")
def chromium():
    """Headless chromium through Playwright; the module is skipped without either."""
    pytest.importorskip("playwright")
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def new_page(browser, allow=None, viewport=None):
    """A page that records every problem in page.problems: console errors (CSP violations are reported
    there), uncaught exceptions, failed requests, HTTP errors, and requests to any origin but the local
    server, which are blocked (offline). `allow(route)` may answer a blocked request instead. page.responses
    maps each URL to its (status, content type)."""
    # reduced motion: Bootstrap then skips its colour transitions, so screenshots never catch one midway
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    responses: dict[str, tuple[int, str]] = {}

    def route(r):
        if LOCAL.match(r.request.url):
            r.continue_()
        elif allow is not None and allow(r):
            pass
        else:
            problems.append(f"request to another origin: {r.request.url}")
            r.abort()
    context.route("**/*", route)
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    # ERR_ABORTED: the page itself dropped the request (a grid replaced while its thumbnails load)
    page.on("requestfailed", lambda r: None if r.failure == "net::ERR_ABORTED" else
            problems.append(f"failed: {r.url} {r.failure}"))

    def response(r):
        responses[r.url] = (r.status, r.headers.get("content-type", ""))
        if r.status >= 400:
            problems.append(f"HTTP {r.status}: {r.url}")
    page.on("response", response)
    page.problems, page.responses = problems, responses
    return page


@pytest.fixture(scope="session")
def make_page():
    """new_page, for test modules (a conftest is not imported by name)."""
    return new_page


@pytest.fixture()
def open_page(chromium):
    """open_page(viewport=...) -> a fresh page of new_page, closed after the test."""
    pages = []

    def new(viewport=None):
        pages.append(new_page(chromium, viewport=viewport))
        return pages[-1]
    yield new
    for page in pages:
        page.context.close()


@pytest.fixture(scope="session")
def photo_folder_features(tmp_path_factory, catalog_root, lite_encoder):
    """A folder of one's own photos, extracted: four catalogue pictures under camera and UUID file names, one
    of them stored twice (the same pixels under two names). Returns (features root, {file name: catalogue id})."""
    base = tmp_path_factory.mktemp("photos")
    photos = base / "my photos"
    photos.mkdir()
    cat = catalog_images(catalog_root, "test")[:3]
    names = {"IMG_2041.jpg": cat[0].name, "5f0c8a52-3d7e-4a8e-9a8e-2b7c1d9e4f10.jpg": cat[1].name,
             "0b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e.jpg": cat[1].name, "beach day.jpg": cat[2].name}
    for file, cid in names.items():
        shutil.copyfile(catalog_root / "images" / f"{cid}.jpg", photos / file)
    features = base / "features"
    ensure_index(folder_images(photos), lite_encoder, features / "folder-photos", workers=0,
                 info={"dataset": "folder", "split": None, "data_root": str(photos)})
    return features, names
