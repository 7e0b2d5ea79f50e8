"""The demo page end to end in a real browser: Playwright driving Debian's chromium, headless.

Flow: open the home page, filter and shuffle the references, pick one, type a caption, see results, click
results and see the trail grow, switch to image->image, go back along the trail, upload an image and search
from it. Playwright cannot download its own browser here: `apt-get install chromium` provides one (CI does).

The search view's screenshot goes to docs/search.png when UPDATE_SCREENSHOT=1, else to a temporary folder
(so a test run never changes the repository). Bootstrap comes from a CDN the test machine may not reach: the
test serves a local copy (.cache/bootstrap/bootstrap.min.css, or $CIR_BOOTSTRAP_CSS) when there is one, and
otherwise blocks the request at once and runs on the page's own CSS.
"""
from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import pytest

pytest.importorskip("playwright")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from app import AppConfig, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = Path(os.environ.get("CIR_BOOTSTRAP_CSS", REPO / ".cache" / "bootstrap" / "bootstrap.min.css"))


@pytest.fixture(scope="module")
def server(demo_world, tmp_path_factory):
    from werkzeug.serving import make_server
    app = create_app(AppConfig(**demo_world, upload_dir=tmp_path_factory.mktemp("browser-uploads")))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.port}", app
    srv.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        # reduced motion: Bootstrap then skips its colour transitions, so screenshots never catch one midway
        context = browser.new_context(viewport={"width": 1280, "height": 800}, reduced_motion="reduce")

        def cdn(route):
            if BOOTSTRAP.is_file():
                route.fulfill(path=str(BOOTSTRAP), content_type="text/css",
                              headers={"Access-Control-Allow-Origin": "*"})
            else:
                route.abort()
        context.route(re.compile(r"https://cdn\.jsdelivr\.net/.*"), cdn)
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.js_errors = errors
        yield page
        browser.close()


def _ids(page, grid: str) -> list[str]:
    return page.locator(f"{grid} .thumb-card").evaluate_all("els => els.map(e => e.dataset.id)")


def test_search_flow_in_a_browser(server, page, catalog_root, tmp_path):
    base, app = server
    page.goto(base + "/")
    cards = page.locator("#ref-grid .thumb-card")
    expect(cards).to_have_count(24)
    expect(page.locator("#footer")).to_contain_text("Fashion Product Images")
    expect(page.locator("#page-info")).to_have_text("page 1 of 3")
    page.click("#next-page")
    expect(page.locator("#page-info")).to_have_text("page 2 of 3")
    page.fill("#filter", "watches")
    expect(page.locator("#grid-info")).to_contain_text("matching “watches”")
    assert 0 < cards.count() < 24
    page.click("#random-btn")
    expect(page.locator("#grid-info")).to_contain_text("random")
    expect(cards).to_have_count(24)

    # pick a reference, type a caption, see results
    ref = cards.nth(3).get_attribute("data-id")
    cards.nth(3).click()
    expect(page.locator("#search-view")).to_be_visible()
    expect(page.locator("#home-view")).to_be_hidden()
    expect(page.locator("#ref-note")).to_contain_text(ref)
    page.fill("#caption", "is red with longer sleeves")
    page.click("#search-btn")
    results = page.locator("#results .thumb-card")
    expect(results).to_have_count(24)
    expect(page.locator("#results")).to_have_attribute("data-mode", "composed")
    expect(page.locator("#latency")).to_contain_text(" ms")
    assert ref not in _ids(page, "#results")

    # click results: each becomes the next reference, the trail grows
    trail = page.locator("#trail .trail-item")
    expect(trail).to_have_count(0)
    first = results.nth(0).get_attribute("data-id")
    results.nth(0).click()
    expect(trail).to_have_count(1)
    expect(page.locator("#results")).to_have_attribute("data-reference", first)
    second = results.nth(1).get_attribute("data-id")
    results.nth(1).click()
    expect(trail).to_have_count(2)
    expect(page.locator("#results")).to_have_attribute("data-reference", second)
    expect(trail.nth(0)).to_contain_text("is red with longer sleeves")

    # switch to image -> image
    page.click("label[for=mode-image]")
    expect(page.locator("#results")).to_have_attribute("data-mode", "image")
    expect(results).to_have_count(24)
    assert second not in _ids(page, "#results")
    page.mouse.move(0, 0)  # no hover highlight in the picture
    shot = page.screenshot(full_page=False)
    _save_screenshot(shot, tmp_path)

    # back navigation along the trail
    page.click("#back-btn")
    expect(trail).to_have_count(1)
    expect(page.locator("#results")).to_have_attribute("data-reference", first)
    trail.nth(0).locator("a").click()
    expect(trail).to_have_count(0)
    expect(page.locator("#results")).to_have_attribute("data-reference", ref)
    expect(page.locator("#results")).to_have_attribute("data-mode", "composed")

    # upload an image and search from it
    page.click("#home-link")
    expect(page.locator("#home-view")).to_be_visible()
    photo = (catalog_root / "images" / f"{ref}.jpg").read_bytes()
    page.set_input_files("#upload-input", files=[{"name": "my photo.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    expect(page.locator("#search-view")).to_be_visible()
    expect(page.locator("#ref-title")).to_have_text("Your upload")
    expect(page.locator("#results")).to_have_attribute("data-reference", re.compile(r"^[0-9a-f]{32}$"))
    expect(results).to_have_count(24)
    page.click("label[for=mode-image]")
    expect(page.locator("#results")).to_have_attribute("data-mode", "image")
    expect(results.nth(0)).to_have_attribute("data-id", ref)  # the uploaded copy finds its original first

    # a phone-sized screen still shows the results grid and the caption box
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#caption")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    assert page.js_errors == []
    m = app.extensions["cir"].metrics.snapshot()
    assert m["queries"] >= 7 and m["uploads"] == 1


def _save_screenshot(png: bytes, tmp_path: Path) -> None:
    """docs/search.png (quantised to stay small) when UPDATE_SCREENSHOT=1, else a temporary file."""
    if os.environ.get("UPDATE_SCREENSHOT") != "1":
        (tmp_path / "search.png").write_bytes(png)
        return
    from PIL import Image
    out = REPO / "docs" / "search.png"
    out.parent.mkdir(exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                        dither=Image.Dither.NONE).save(out, optimize=True)


def test_cirr_group_row_in_a_browser(server, page):
    """On a CIRR dataset the reference's img_set members are ranked in a row of their own."""
    base, app = server
    page.goto(base + "/")
    page.select_option("#dataset-select", "cirr-val")
    cards = page.locator("#ref-grid .thumb-card")
    expect(cards).to_have_count(12)
    ref = cards.nth(0).get_attribute("data-id")
    cards.nth(0).click()
    page.fill("#caption", "show three bottles of soft drink")
    page.click("#search-btn")
    expect(page.locator("#group-section")).to_be_visible()
    expect(page.locator("#group-grid .thumb-card")).to_have_count(5)  # six members, the reference left out
    expect(page.locator("#results .thumb-card")).to_have_count(11)
    group = set(app.extensions["cir"].datasets["cirr-val"].groups[ref]) - {ref}
    assert set(_ids(page, "#group-grid")) == group
    assert page.js_errors == []


def test_text_and_tags_modes_in_a_browser(server, page):
    """Without a reference: a text query, then attribute chips that become a text query."""
    base, _ = server
    page.goto(base + "/")
    expect(page.locator("#ref-grid .thumb-card")).to_have_count(24)
    page.click("#text-only-btn")
    expect(page.locator("#search-view")).to_be_visible()
    expect(page.locator("#ref-card")).to_be_hidden()
    page.fill("#caption", "black formal shoes for men")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-mode", "text")
    expect(page.locator("#results .thumb-card")).to_have_count(24)
    page.click("label[for=mode-tags]")
    chip = page.locator("#tags-box button[data-key=gender]").first
    value = chip.get_attribute("data-value")
    chip.click()
    expect(page.locator("#results")).to_have_attribute("data-mode", "tags")
    expect(page.locator("#latency")).to_contain_text(f"item for {value.lower()}")
    expect(page.locator("#tags-box button.btn-primary")).to_have_count(1)  # the chosen chip is highlighted
    # a result becomes the reference of a composed query: the trail remembers the tags step
    page.locator("#results .thumb-card").first.click()
    expect(page.locator("#trail .trail-item")).to_have_count(1)
    expect(page.locator("#ref-card")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Type how the wanted item differs")
    page.fill("#caption", "in white")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-mode", "composed")
    assert page.js_errors == []


# A men's navy blue check shirt of the test split, as a new user would try it.
SHOPPER_REFERENCE = "12329"


@pytest.fixture(scope="module")
def shopper_server(tmp_path_factory, catalog_root, lite_encoder):
    """The demo as shipped (default composed mode, shipped Combiners) over the 993 test-split images."""
    from werkzeug.serving import make_server

    import data_utils
    from extract_features import ensure_index
    features = tmp_path_factory.mktemp("shopper") / "features"
    records = data_utils.catalog_images(catalog_root, "test")
    ensure_index(records, lite_encoder, features / "catalog-test",
                 info={"dataset": "catalog", "split": "test", "data_root": str(catalog_root)})
    app = create_app(AppConfig(features_root=features, encoder_obj=lite_encoder, default_dataset="catalog-test",
                               upload_dir=tmp_path_factory.mktemp("shopper-uploads"), data_root=None))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.port}", {r.name: r.attrs for r in records}
    srv.shutdown()
    thread.join(5)


@pytest.mark.parametrize("caption, right", [
    ("make it for women", lambda a: a["gender"] in ("Women", "Girls") and a["subCategory"] in ("Topwear", "Dress")),
    ("shoes to match", lambda a: a["masterCategory"] == "Footwear" and a["gender"] in ("Men", "Unisex")),
])
def test_shopper_edits_in_a_browser(shopper_server, page, caption, right):
    """The edits new users type first: another gender, a matching item (no colour word)."""
    base, attrs = shopper_server
    page.goto(base + "/")
    page.fill("#filter", SHOPPER_REFERENCE)
    card = page.locator(f"#ref-grid .thumb-card[data-id='{SHOPPER_REFERENCE}']")
    expect(card).to_have_count(1)
    card.click()
    page.fill("#caption", caption)
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-mode", "composed")  # the default mode
    expect(page.locator("#results .thumb-card")).to_have_count(24)
    top = _ids(page, "#results")[:10]
    good = [n for n in top if right(attrs[n])]
    assert len(good) >= 7, (caption, [(n, attrs[n]["gender"], attrs[n]["articleType"], attrs[n]["baseColour"])
                                      for n in top])
    assert page.js_errors == []
