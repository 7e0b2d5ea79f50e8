"""Server side of the shopper's session (issue 22): whole-word reference filter, readable titles of a folder
of photos, identical pictures marked in results, a favicon, and credits of the loaded datasets only."""
from __future__ import annotations

import pytest

from cir.serving.settings import Settings
from cir.web.app import create_app


@pytest.fixture(scope="module")
def client(demo_world, tmp_path_factory):
    app = create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads"), warm_up=False))
    return app.test_client()


@pytest.fixture(scope="module")
def photos(photo_folder_features, lite_encoder, tmp_path_factory):
    features, names = photo_folder_features
    app = create_app(Settings(features_root=features, encoder_obj=lite_encoder, default_dataset="folder-photos",
                              upload_dir=tmp_path_factory.mktemp("uploads"), warm_up=False, data_root=None))
    return app.test_client(), names


def _browse(client, q: str) -> list[dict]:
    return client.get("/api/datasets/catalog-test/images", query_string={"q": q, "per_page": 100}).get_json()["images"]


def test_filter_matches_whole_words(client):
    """"men shirt" finds men's shirts, never women's: "men" is inside "women", not one of its words."""
    men = _browse(client, "men shirt")
    assert men, "the demo catalogue has men's shirts"
    assert all(im["attrs"]["gender"] != "Women" for im in men), [im["title"] for im in men]
    assert any(im["attrs"]["gender"] == "Women" for im in _browse(client, "women shirt"))
    # a word's beginning still finds it while typing ("shir" -> shirts), and ids are words too
    assert {im["id"] for im in _browse(client, "shir")} >= {im["id"] for im in men}
    first = men[0]["id"]
    assert [im["id"] for im in _browse(client, first)] == [first]


def test_folder_titles_footer_and_no_tags(photos):
    client, names = photos
    images = client.get("/api/datasets/folder-photos/images").get_json()["images"]
    titles = {im["id"]: im["title"] for im in images}
    assert titles["IMG_2041.jpg"] == "IMG_2041" and titles["beach day.jpg"] == "beach day"
    uuids = [n for n in names if n.count("-") == 4]
    assert all(titles[n].startswith("Photo ") for n in uuids), titles
    info = client.get("/api/datasets").get_json()["datasets"][0]
    assert info["has_tags"] is False
    html = client.get("/").get_data(as_text=True)
    assert "Fashion Product Images" not in html and "CIRR" not in html and "FashionIQ" not in html


def test_identical_pictures_are_marked(photos):
    """The same pixels under two names: the lower result says which higher one it duplicates."""
    client, names = photos
    twins = [n for n in names if n.count("-") == 4]
    out = client.post("/api/search", json={"mode": "image", "dataset": "folder-photos", "reference": "IMG_2041.jpg",
                                           "k": 3}).get_json()
    ids = [r["id"] for r in out["results"]]
    assert set(twins) <= set(ids)
    first, second = sorted(twins, key=ids.index)
    by_id = {r["id"]: r for r in out["results"]}
    assert by_id[second]["duplicate_of"] == first
    assert "duplicate_of" not in by_id[first] and "duplicate_of" not in by_id["beach day.jpg"]


def test_favicon_and_credits(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/x-icon" and icon.data[:4] == b"\0\0\1\0"
    html = client.get("/").get_data(as_text=True)
    assert "Fashion Product Images" in html and "CIRR annotations" in html and "FashionIQ" not in html
