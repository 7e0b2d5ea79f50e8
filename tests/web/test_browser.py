"""The demo page end to end in a real browser: Playwright driving Debian's chromium, headless.

Flow: open the home page, filter and shuffle the references, pick one, type a caption, see results, click
results and see the trail grow, switch to image->image, go back along the trail, upload an image and search
from it. Playwright cannot download its own browser here: `apt-get install chromium` provides one (CI does).

The page runs as shipped: Bootstrap's CSS from the app itself (cir.web.assets) under the app's
Content-Security-Policy, with every request to another origin blocked, so the tests prove the page is
styled offline. Any console error (a CSP violation included), failed request or HTTP error fails a test.

The README's screenshot (docs/search.png) is taken by test_screenshot_composed_search: with
UPDATE_SCREENSHOT=1 over the whole catalogue (features/catalog-all, as `python3 app.py --prepare-only`
extracts it), otherwise over the 993 test images into a temporary folder (a test run never changes the
repository).
"""
from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import pytest

from cir.data import catalog_images
from cir.extraction import ensure_index
from cir.web.assets import CDN_CSS, CSS_FILE, bootstrap_dir, content_security_policy

pytest.importorskip("playwright")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from cir.paths import REPO_DIR  # noqa: E402
from cir.serving.settings import Settings  # noqa: E402
from cir.web.app import create_app  # noqa: E402

pytestmark = pytest.mark.slow   # long end-to-end runs: deselect with -m 'not slow'

REPO = REPO_DIR
BOOTSTRAP_URL = "/vendor/bootstrap/css/bootstrap.min.css"
PRIMARY = "rgb(13, 110, 253)"  # Bootstrap 5's --bs-primary: .btn-primary's background, .btn-outline-primary's text


def _serve(app):
    """Serve a Flask app on a free local port in a thread; returns (base URL, stop function)."""
    from werkzeug.serving import make_server
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()

    def stop():
        srv.shutdown()
        thread.join(5)
    return f"http://127.0.0.1:{srv.port}", stop


@pytest.fixture(scope="module")
def server(demo_world, tmp_path_factory):
    app = create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("browser-uploads")))
    base, stop = _serve(app)
    yield base, app
    stop()


@pytest.fixture(scope="module")
def page(chromium, make_page):
    page = make_page(chromium)
    yield page
    page.context.close()


def _assert_styled(page, base: str) -> None:
    """Bootstrap's CSS came from the local server and applies: computed styles only Bootstrap gives."""
    assert page.responses[base + BOOTSTRAP_URL] == (200, "text/css; charset=utf-8")
    for asset in ("/static/app.css", "/static/app.js"):
        assert page.responses[base + asset][0] == 200, asset
    page.mouse.move(0, 0)  # no hover colours
    assert page.evaluate("getComputedStyle(document.body).fontFamily").startswith("system-ui")
    assert page.evaluate("getComputedStyle(document.querySelector('#text-only-btn')).color") == PRIMARY
    assert page.evaluate("getComputedStyle(document.querySelector('#search-btn')).backgroundColor") == PRIMARY
    assert page.evaluate("getComputedStyle(document.querySelector('nav.navbar')).display") == "flex"


def test_page_is_styled_offline_under_its_csp(server, page):
    """The page as shipped: local Bootstrap, the CSP header, no inline code, nothing from another origin."""
    base, _ = server
    resp = page.goto(base + "/")
    assert resp.headers["content-security-policy"] == content_security_policy("local")
    expect(page.locator("#ref-grid .thumb-card")).to_have_count(24)
    _assert_styled(page, base)
    assert page.problems == []
    # the policy is enforced, and a violation is caught: an inline style attribute is refused and reported
    page.evaluate("""document.body.insertAdjacentHTML('beforeend',
                     '<div id="csp-probe" style="color: rgb(255, 0, 0)">probe</div>')""")
    assert page.evaluate("getComputedStyle(document.querySelector('#csp-probe')).color") != "rgb(255, 0, 0)"
    page.wait_for_timeout(200)  # the console message is delivered asynchronously
    assert any("Content Security Policy" in p for p in page.problems), page.problems
    page.problems.clear()


def test_page_with_bootstrap_from_the_cdn(demo_world, tmp_path, chromium, make_page):
    """bootstrap=cdn: the CDN link with its integrity hash passes the cdn CSP (the CDN answered here by the
    packaged file, byte-identical to the CDN's)."""
    app = create_app(Settings(**demo_world, upload_dir=tmp_path / "uploads", bootstrap="cdn", warm_up=False))
    base, stop = _serve(app)
    css = bootstrap_dir() / CSS_FILE

    def cdn(route):
        if route.request.url != CDN_CSS:
            return False
        route.fulfill(path=str(css), content_type="text/css", headers={"Access-Control-Allow-Origin": "*"})
        return True
    page = make_page(chromium, allow=cdn)
    try:
        resp = page.goto(base + "/")
        assert "https://cdn.jsdelivr.net" in resp.headers["content-security-policy"]
        expect(page.locator("#ref-grid .thumb-card")).to_have_count(24)
        assert page.evaluate("getComputedStyle(document.querySelector('#search-btn')).backgroundColor") == PRIMARY
        assert base + BOOTSTRAP_URL not in page.responses
        assert page.problems == []
    finally:
        page.context.close()
        stop()


def _ids(page, grid: str) -> list[str]:
    return page.locator(f"{grid} .thumb-card").evaluate_all("els => els.map(e => e.dataset.id)")


def test_search_flow_in_a_browser(server, page, catalog_root):
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

    # click results: each becomes the next reference (the shopper types the next change), the trail grows
    trail = page.locator("#trail .trail-item")
    expect(trail).to_have_count(0)
    first = results.nth(0).get_attribute("data-id")
    results.nth(0).click()
    expect(trail).to_have_count(1)
    expect(page.locator("#caption")).to_have_value("")
    page.fill("#caption", "in blue")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-reference", first)
    second = results.nth(1).get_attribute("data-id")
    results.nth(1).click()
    expect(trail).to_have_count(2)
    page.fill("#caption", "in black")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-reference", second)
    expect(trail.nth(0)).to_contain_text("is red with longer sleeves")

    # switch to image -> image
    page.click("label[for=mode-image]")
    expect(page.locator("#results")).to_have_attribute("data-mode", "image")
    expect(results).to_have_count(24)
    assert second not in _ids(page, "#results")

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
    page.fill("#caption", "in blue")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-reference", re.compile(r"^[0-9a-f]{32}$"))
    expect(results).to_have_count(24)
    page.click("label[for=mode-image]")
    expect(page.locator("#results")).to_have_attribute("data-mode", "image")
    expect(results.nth(0)).to_have_attribute("data-id", ref)  # the uploaded copy finds its original first

    # a phone-sized screen still shows the results grid and the caption box
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#caption")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
    assert page.problems == []
    m = app.extensions["cir"].metrics.snapshot()
    assert m["queries"] >= 7 and m["uploads"] == 1


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
    assert page.problems == []


def _pick_annotated_caption(page, ds, ref: str):
    """Open the reference's search view, pick its first annotated caption; returns that annotation."""
    page.locator(f"#ref-grid .thumb-card[data-id='{ref}']").click()
    expect(page.locator("#caption-pick-box")).to_be_visible()
    annotations = ds.annotations.of(ref)
    expect(page.locator("#caption-pick option")).to_have_count(len(annotations) + 1)
    page.select_option("#caption-pick", "0")
    expect(page.locator("#caption")).to_have_value(annotations[0].caption)
    expect(page.locator("#target-note")).to_be_visible()
    return annotations[0]


def test_annotated_caption_marks_the_target(server, page):
    """Pick one of the reference's annotated captions: the search runs, the annotated target is marked where
    it is shown and its rank is said also when it is below the shown results; on CIRR, in the group row."""
    base, app = server
    eng = app.extensions["cir"]
    ds = eng.datasets["catalog-test"]
    page.goto(base + "/")
    expect(page.locator("#ref-grid .thumb-card")).to_have_count(24)
    ref = next(n for n in ds.index.names[:24] if ds.annotations.of(n))
    ann = _pick_annotated_caption(page, ds, ref)
    expect(page.locator("#results .thumb-card")).to_have_count(24)
    want = eng.run(eng.parse({"dataset": ds.name, "mode": "composed", "reference": ref, "caption": ann.caption,
                              "target": ann.target})).target
    expect(page.locator("#target-rank")).to_have_attribute("data-rank", str(want.rank))
    expect(page.locator("#target-note")).to_contain_text(ann.target)
    marked = page.locator("#results .thumb-card.target")
    if want.rank <= 24:
        expect(marked).to_have_attribute("data-id", ann.target)
        expect(marked.locator(".target-badge")).to_have_text("target")
    page.click("label[for=advanced-toggle]")   # the number of results is a research control
    page.select_option("#k-select", "12")   # fewer results: the rank is still said, shown or not
    expect(page.locator("#results .thumb-card")).to_have_count(12)
    expect(page.locator("#target-rank")).to_have_attribute("data-rank", str(want.rank))
    expect(marked).to_have_count(1 if want.rank <= 12 else 0)
    expect(page.locator("#target-note")).to_contain_text("below the shown results" if want.rank > 12 else "marked")
    page.click("label[for=advanced-toggle]")   # back to the shopper's page (the switch is remembered)
    # a typed caption is the user's own: no target any more
    page.fill("#caption", "in white")
    page.click("#search-btn")
    expect(page.locator("#target-note")).to_be_hidden()
    expect(marked).to_have_count(0)

    page.click("#home-link")
    page.select_option("#dataset-select", "cirr-val")
    cirr = eng.datasets["cirr-val"]
    expect(page.locator("#ref-grid .thumb-card")).to_have_count(12)
    ref = next(n for n in cirr.index.names if cirr.annotations.of(n))
    ann = _pick_annotated_caption(page, cirr, ref)
    expect(page.locator("#group-grid .thumb-card.target")).to_have_attribute("data-id", ann.target)
    expect(page.locator("#target-note")).to_contain_text("within the reference's group")
    assert page.problems == []


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
    expect(page.locator("#status")).to_contain_text("how the wanted item differs")
    page.fill("#caption", "in white")
    page.click("#search-btn")
    expect(page.locator("#results")).to_have_attribute("data-mode", "composed")
    assert page.problems == []


# A men's navy blue check shirt of the test split, as a new user would try it.
SHOPPER_REFERENCE = "12329"


def _catalog_server(tmp_path_factory, catalog_root, encoder, split: str, features: Path):
    """The demo as shipped (default composed mode, shipped Combiners) over one split of the catalogue."""
    records = catalog_images(catalog_root, split)
    ensure_index(records, encoder, features / f"catalog-{split}",
                 info={"dataset": "catalog", "split": split, "data_root": str(catalog_root)})
    app = create_app(Settings(features_root=features, encoder_obj=encoder, default_dataset=f"catalog-{split}",
                               upload_dir=tmp_path_factory.mktemp("shopper-uploads"), data_root=None))
    base, stop = _serve(app)
    return base, stop, {r.name: r.attrs for r in records}


@pytest.fixture(scope="module")
def shopper_server(tmp_path_factory, catalog_root, lite_encoder):
    """The demo as shipped over the 993 test-split images."""
    features = tmp_path_factory.mktemp("shopper") / "features"
    base, stop, attrs = _catalog_server(tmp_path_factory, catalog_root, lite_encoder, "test", features)
    yield base, attrs
    stop()


@pytest.mark.parametrize("caption, right", [
    ("make it for women", lambda a: a["gender"] in ("Women", "Girls") and a["subCategory"] in ("Topwear", "Dress")),
    ("shoes to match", lambda a: a["masterCategory"] == "Footwear" and a["gender"] in ("Men", "Unisex")),
])
def test_shopper_edits_in_a_browser(shopper_server, page, caption, right):
    """The edits new users type first: another gender, a matching item (no colour word)."""
    base, attrs = shopper_server
    page.goto(base + "/")
    page.fill("#filter", SHOPPER_REFERENCE)
    expect(page.locator("#grid-info")).to_contain_text(f"matching “{SHOPPER_REFERENCE}”")  # the filtered grid
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
    assert page.problems == []


# The README screenshot's query: a men's black casual shoe of the test split + "in red". On the whole
# catalogue the top 12 are 12 red casual shoes (11 men's, 1 unisex), checked against styles.csv.
SCREENSHOT_REFERENCE, SCREENSHOT_CAPTION = "10168", "in red"


@pytest.fixture(scope="module")
def screenshot_server(request, tmp_path_factory, catalog_root, lite_encoder):
    """UPDATE_SCREENSHOT=1: the demo as shipped over the whole catalogue, from the repository's features/
    (extracted here unless `python3 app.py --prepare-only` already did); otherwise the test-split server."""
    if os.environ.get("UPDATE_SCREENSHOT") != "1":
        yield request.getfixturevalue("shopper_server") + (False,)
        return
    base, stop, attrs = _catalog_server(tmp_path_factory, catalog_root, lite_encoder, "all", REPO / "features")
    yield base, attrs, True
    stop()


def test_screenshot_composed_search(screenshot_server, page, tmp_path):
    """The README's picture: composed mode (the default, shipped Combiner), a query whose results are right."""
    base, attrs, whole_catalogue = screenshot_server
    page.goto(base + "/")
    page.fill("#filter", SCREENSHOT_REFERENCE)
    expect(page.locator("#grid-info")).to_contain_text(f"matching “{SCREENSHOT_REFERENCE}”")  # the filtered grid
    page.locator(f"#ref-grid .thumb-card[data-id='{SCREENSHOT_REFERENCE}']").click()
    page.fill("#caption", SCREENSHOT_CAPTION)
    if not whole_catalogue:
        # The test split has 9 red shoes in all: the shop-words boost of "red" lifts red items of other types above
        # the other shoes there; the README's picture (the whole catalogue) keeps the default, the switch on.
        page.uncheck("#metadata-toggle")
    page.click("#search-btn")
    results = page.locator("#results")
    expect(results).to_have_attribute("data-mode", "composed")
    expect(results).to_have_attribute("data-reference", SCREENSHOT_REFERENCE)
    expect(page.locator("#results .thumb-card")).to_have_count(24)
    top = [attrs[n] for n in _ids(page, "#results")[:12]]
    red_shoes = sum(a["masterCategory"] == "Footwear" and a["baseColour"] == "Red" for a in top)
    assert all(a["masterCategory"] == "Footwear" for a in top)
    # the test split has only 9 red shoes and sandals in all; the whole catalogue has plenty
    assert red_shoes >= (11 if whole_catalogue else 2), [(a["articleType"], a["baseColour"]) for a in top]
    _assert_styled(page, base)
    # every thumbnail in view has loaded (they load lazily); _assert_styled moved the mouse off the page, so no
    # hover highlight is in the picture
    page.wait_for_function("""() => [...document.querySelectorAll('#search-view img')]
        .filter((i) => i.offsetParent !== null && i.getBoundingClientRect().top < innerHeight)
        .every((i) => i.complete && i.naturalWidth > 0)""", timeout=30_000)
    _save_screenshot(page.screenshot(full_page=False), tmp_path, whole_catalogue)
    assert page.problems == []


def _save_screenshot(png: bytes, tmp_path: Path, update: bool) -> None:
    """docs/search.png (quantised to stay small) when updating, else a temporary file."""
    if not update:
        (tmp_path / "search.png").write_bytes(png)
        return
    from PIL import Image
    out = REPO / "docs" / "search.png"
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                        dither=Image.Dither.NONE).save(out, optimize=True)
