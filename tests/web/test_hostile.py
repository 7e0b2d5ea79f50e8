"""The demo app under hostile input, through Flask's test client (and, where the server itself matters, the
development server on a local port): wrong types, odd JSON, oversized and chunked bodies, broken images,
a full disk, busy decoders, and the security headers on every response; from issue 20, raw uploads sent as a
form, MPO photos, ids with a newline and stalled requests on the development server. Each case is a reproduced
attack: none may answer 500. (The JSON depth scan and unreadable bodies: test_guards.py.)"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import socket
import threading
from dataclasses import replace

import pytest
from PIL import Image
from werkzeug.serving import make_server

from cir.serving import uploads as uploads_module
from cir.serving.settings import Settings
from cir.web.app import create_app
from cir.web.assets import CDN_ORIGIN, content_security_policy
from cir.web.guards import DEV_IO_TIMEOUT_S, MAX_BODY_BYTES, QuietRequestHandler, install_guards

TTL_S = 1800


@pytest.fixture(scope="module")
def app(demo_world, tmp_path_factory):
    return create_app(Settings(**demo_world, upload_dir=tmp_path_factory.mktemp("uploads"), upload_ttl_s=TTL_S,
                                warm_up=False))


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def ref(app) -> str:
    return app.extensions["cir"].datasets["catalog-test"].index.names[0]


def _search(client, **body):
    return client.post("/api/search", json={"dataset": "catalog-test", **body})


def _raw(client, data: bytes | str, **kw):
    return client.post("/api/search", data=data, content_type="application/json", **kw)


def _bad(r, status: int, words: str) -> None:
    d = r.get_json()
    assert r.status_code == status and d["status"] == status and words in d["message"], (r.status_code, d)


def _png(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- strict types

WRONG_TYPES = [["composed"], {"name": "composed"}, False, True, 0, 1.5]


@pytest.mark.parametrize("field", ["mode", "combiner", "text_encoder", "dataset", "reference", "upload"])
@pytest.mark.parametrize("value", WRONG_TYPES, ids=lambda v: type(v).__name__ + repr(v)[:6])
def test_a_name_of_the_wrong_type_is_400(client, ref, field, value):
    body = {"mode": "composed", "reference": ref, "caption": "is blue", field: value}
    shown = {list: "an array", dict: "an object"}.get(type(value)) or json.dumps(value)  # as the client wrote it
    _bad(_search(client, **body), 400, f"{field.replace('_', ' ')} must be a string, not {shown}")


def test_missing_or_null_means_the_default(client, ref):
    for body in ({"reference": ref, "caption": "is blue"}, {"mode": None, "reference": ref, "caption": "is blue",
                                                             "combiner": None, "text_encoder": None}):
        r = _search(client, **body)
        assert r.status_code == 200 and r.get_json()["mode"] == "composed", r.get_json()
    _bad(_search(client, mode=False, reference=ref, caption="is blue"), 400, "mode must be a string, not false")


@pytest.mark.parametrize("caption,words", [
    ("\u200b\u200c\u200d", "empty"), ("\ufeff \u2060", "empty"), ("\u3164\u2800", "empty"),
    ("red\u2028shirt", "control character (U+2028)"), ("red\u2029shirt", "control character (U+2029)"),
    ("red \u202eshirt", "bidirectional control character (U+202E)"),
    ("red \u2066shirt\u2069", "bidirectional control character (U+2066)"),
    ("red\u0085shirt", "control character (U+0085)"),
])
def test_invisible_and_control_captions(client, caption, words):
    _bad(_search(client, mode="text", caption=caption), 400, words)


def test_legitimate_unicode_captions_pass(client):
    for caption in ("\u200bis red\u200b", "a 👩\u200d🔬 print", "رنگ\u200cآبی", "en rouge, s'il vous plaît"):
        r = _search(client, mode="text", caption=caption)
        assert r.status_code == 200, (caption, r.get_json())
    assert _search(client, mode="text", caption="\u200bis red\u200b").get_json()["caption"] == "is red"


def test_nested_and_numeric_oddities_in_fields(client, ref):
    deep: object = "Men"
    for _ in range(15):
        deep = {"gender": deep}
    _bad(_search(client, mode="tags", tags=deep), 400, "unknown gender tag")
    _bad(_search(client, mode="text", caption="red", k=1e300), 400, "between 1 and 200, not 1000000")
    _bad(_search(client, mode="text", caption="red", k=[5]), 400, "k must be an integer between 1 and 200, not an arr")


# ----------------------------------------------------------------------------------------------- odd JSON

@pytest.mark.parametrize("body,words", [
    ("[" * 1000 + "]" * 1000, "nested too deeply"),
    ('{"mode": "text", "caption": "red", "tags": ' + "[" * 1000 + "]" * 1000 + "}", "nested too deeply"),
    ('{"a": "' + "[" * 1000 + '"}', None),                      # brackets inside a string are not nesting
    ('["mode", "text"]', "must be a JSON object, not an array"),
    ('"text"', "must be a JSON object, not a string"),
    ("42", "must be a JSON object, not a number"),
    ("null", "must be a JSON object, not null"),
    ("true", "must be a JSON object, not true or false"),
    ('{"mode": "text", "caption": "red", "k": NaN}', "NaN, which is not JSON"),
    ('{"mode": "text", "caption": "red", "k": Infinity}', "Infinity, which is not JSON"),
    ('{"mode": "text", "caption": "red", "k": -Infinity}', "-Infinity, which is not JSON"),
    ('{"mode": "text", "caption": "red", "k": 1e999}', "out of range"),
    ('{"mode": "text", "caption": "red", "k": ' + "9" * 5000 + "}", "5,000 digits"),
    ('{"mode": "text", "caption": "red", "k": 10', "not valid JSON"),
])
def test_odd_json_bodies(client, body, words):
    r = _raw(client, body)
    if words is None:  # valid JSON: the search itself answers (here: the caption is missing)
        _bad(r, 400, "mode")
    else:
        _bad(r, 400, words)


def test_invalid_utf8_and_a_byte_order_mark(client):
    _bad(_raw(client, b'{"mode": "text", "caption": "red \xff\xfe"}'), 400, "not valid UTF-8")
    _bad(_raw(client, '{"mode": "text", "caption": "red"}'.encode("utf-16")), 400, "not valid UTF-8")
    r = _raw(client, b'\xef\xbb\xbf{"mode": "text", "caption": "red", "dataset": "catalog-test"}')
    assert r.status_code == 200, r.get_json()


# ----------------------------------------------------------------------------------------------- body caps

def test_non_upload_bodies_are_capped_small(client):
    pad = "x" * MAX_BODY_BYTES
    _bad(_search(client, mode="text", caption="red", pad=pad), 413, "64 KB")
    _bad(client.post("/api/search", data={"mode": "text", "caption": "red", "pad": pad}), 413, "64 KB")
    _bad(client.get("/api/health", data=pad + "x", content_type="text/plain"), 413, "64 KB")  # any route
    assert _search(client, mode="text", caption="red", pad="x" * 1000).status_code == 200
    # An upload may be larger than 64 KB (up to its own limit).
    big = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(big, "PNG")
    assert len(big.getvalue()) > MAX_BODY_BYTES
    r = client.post("/api/upload", data={"file": (io.BytesIO(big.getvalue()), "a.png")})
    assert r.status_code == 201, r.get_json()


def test_a_chunked_body_over_the_cap_is_413(client):
    """No Content-Length: werkzeug cuts the stream off at the cap (the server says it terminates the input)."""
    env = {"wsgi.input_terminated": True}
    body = b'{"mode": "text", "caption": "red", "pad": "' + b"x" * (2 * MAX_BODY_BYTES) + b'"}'
    r = client.post("/api/search", input_stream=io.BytesIO(body), content_type="application/json",
                    headers={"Transfer-Encoding": "chunked"}, environ_overrides=env)
    _bad(r, 413, "64 KB")
    upload = b"\xff\xd8\xff" + b"0" * (11 * 2**20)
    r = client.post("/api/upload", input_stream=io.BytesIO(upload), content_type="application/octet-stream",
                    headers={"Transfer-Encoding": "chunked"}, environ_overrides=env)
    _bad(r, 413, "10 MB")


@pytest.fixture(scope="module")
def server(app):
    """The app behind the development server on a free local port (as `python3 app.py` serves it)."""
    srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_port
    srv.shutdown()
    thread.join(10)


def _http(port: int, head: bytes, body_chunks=()) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent: that is the point
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while part := s.recv(65536):
                data += part
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break  # the whole answer (the development server then drains the rest of the request)
        return data


def test_a_real_chunked_request_gets_413_and_the_server_goes_on(server):
    head = (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    answer = _http(server, head, [b'{"mode": "text", "caption": "red", "pad": "'] + [b"x" * 8192] * 40)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"64 KB" in answer
    ok = _http(server, b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


def test_no_server_version_banner(server):
    answer = _http(server, b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert "server: cir-demo" in head and "werkzeug" not in head and "python" not in head


# ----------------------------------------------------------------------------------------------- uploads

def test_a_png_header_without_image_data_is_400(client):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")
    assert len(png) == 45
    r = client.post("/api/upload", data={"file": (io.BytesIO(png), "x.png")})
    _bad(r, 400, "corrupt or truncated")


def test_above_the_pixel_limit_is_413(client):
    bomb = io.BytesIO()
    Image.new("1", (6000, 5000)).save(bomb, "PNG")  # 30 MP in a few kB, over the 25 MP default
    r = client.post("/api/upload", data={"file": (io.BytesIO(bomb.getvalue()), "x.png")})
    _bad(r, 413, "the limit is 25,000,000")


def test_a_full_disk_answers_507(app, client, monkeypatch):
    folder = app.extensions["cir"].uploads.folder
    before = sorted(os.listdir(folder))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(uploads_module, "atomic_write", full)
    r = client.post("/api/upload", data={"file": (io.BytesIO(_png()), "x.png")})
    _bad(r, 507, "no room for uploads")
    assert r.get_json()["error"] == "InsufficientStorage" and sorted(os.listdir(folder)) == before


def test_busy_decoders_answer_503(app, client):
    store = app.extensions["cir"].uploads
    limits = store.limits
    store.limits = replace(limits, decode_wait_s=0.05)
    held = [store._decodes.acquire(timeout=1) for _ in range(limits.decodes)]
    try:
        r = client.post("/api/upload", data={"file": (io.BytesIO(_png()), "x.png")})
        _bad(r, 503, "busy decoding")
        assert r.headers["Retry-After"] == "5"  # a client may try again soon
    finally:
        for _ in held:
            store._decodes.release()
        store.limits = limits
    assert client.post("/api/upload", data={"file": (io.BytesIO(_png()), "x.png")}).status_code == 201


# ----------------------------------------------------------------------------------------------- headers

PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def test_security_headers_on_every_response(client, ref):
    up = client.post("/api/upload", data={"file": (io.BytesIO(_png()), "x.png")}).get_json()
    responses = {path: client.get(path) for path in (
        "/", "/api/health", "/api/datasets", "/static/app.js", f"/img/catalog-test/{ref}",
        f"/thumb/catalog-test/{ref}", up["url"], up["thumb"], "/api/nothing", "/uploads/" + "0" * 32)}
    responses["POST /api/search (400)"] = _raw(client, "[]")
    responses["POST /api/search (413)"] = _raw(client, "x" * (MAX_BODY_BYTES + 1))
    # The policy fits the page: the CDN origin is allowed exactly when the page loads Bootstrap from it.
    csp = content_security_policy("cdn" if CDN_ORIGIN.encode() in responses["/"].data else "local")
    for what, r in responses.items():
        assert r.headers["X-Content-Type-Options"] == "nosniff", what
        assert r.headers["Referrer-Policy"] == "no-referrer", what
        assert r.headers["Content-Security-Policy"] == csp, what
        assert r.headers["X-Frame-Options"] == "DENY", what
    for path in (up["url"], up["thumb"]):  # a user's photo: the browser may keep it, no shared cache may
        r = responses[path]
        assert r.status_code == 200
        assert r.cache_control.private and not r.cache_control.public and r.cache_control.max_age == TTL_S, path
        assert "Expires" not in r.headers
    r = responses[f"/img/catalog-test/{ref}"]
    assert r.cache_control.public and r.cache_control.max_age == 86400  # catalogue images stay cacheable


def test_the_cdn_origin_joins_styles_only():
    csp = dict(part.strip().split(" ", 1) for part in content_security_policy("cdn").split(";"))
    # only Bootstrap's CSS comes from the CDN: no script origin is added
    assert csp["style-src"] == f"'self' {CDN_ORIGIN}" and csp["script-src"] == "'self'"
    assert all(CDN_ORIGIN not in v for k, v in csp.items() if k != "style-src")
    assert content_security_policy("local") == PAGE_CSP


def test_install_guards_on_a_bare_app():
    from flask import Flask

    bare = Flask("bare")
    bare.post("/echo")(lambda: {"n": len(__import__("flask").request.get_data())})
    install_guards(bare, max_upload_bytes=2**20, upload_max_age_s=60, csp=content_security_policy("cdn"),
                   max_body_bytes=100)
    c = bare.test_client()
    assert c.post("/echo", data=b"x" * 100).get_json() == {"n": 100}
    r = c.post("/echo", data=b"x" * 101)
    assert r.status_code == 413 and json.loads(r.data)["status"] == 413
    assert CDN_ORIGIN in r.headers["Content-Security-Policy"]


# ----------------------------------------------------------------------------------------------- issue 20, item 8

def _jpeg(size=(640, 480), colour=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def test_a_raw_upload_sent_as_a_form_is_the_image(client):
    """`curl --data-binary @photo.jpg` says application/x-www-form-urlencoded: the body is still the image."""
    r = client.post("/api/upload", data=_jpeg(), content_type="application/x-www-form-urlencoded")
    assert r.status_code == 201 and r.get_json()["format"] == "JPEG", r.get_json()
    r = client.post("/api/upload", data=_jpeg(), content_type="image/jpeg")
    assert r.status_code == 201, r.get_json()
    _bad(client.post("/api/upload", data=b"", content_type="application/x-www-form-urlencoded"), 400, "empty")


def test_a_two_frame_mpo_is_its_first_frame(client):
    """What many phones write: a JPEG followed by a second frame (depth, multi-shot)."""
    buf = io.BytesIO()
    first, second = Image.new("RGB", (2000, 1500), (220, 20, 20)), Image.new("RGB", (2000, 1500), (20, 20, 220))
    first.save(buf, "MPO", save_all=True, append_images=[second])
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.format == "MPO" and im.n_frames == 2
    r = client.post("/api/upload", data={"file": (io.BytesIO(buf.getvalue()), "phone.jpg")})
    up = r.get_json()
    assert r.status_code == 201 and up["format"] == "MPO" and max(up["width"], up["height"]) == 1024, up
    with Image.open(io.BytesIO(client.get(up["url"]).data)) as stored:
        red, _, blue = stored.convert("RGB").getpixel((10, 10))
    assert red > 200 and blue < 40   # the first frame's red, not the second's blue


@pytest.mark.parametrize("bad_id", ["10000\n", "a\nb", "x\r\ny", "nul\x00"])
def test_ids_with_a_control_character_are_400_everywhere(client, bad_id):
    words = "contains a control character"
    _bad(_search(client, mode="image", reference=bad_id), 400, words)
    _bad(_search(client, mode="text", caption="red", target=bad_id), 400, words)
    quoted = bad_id.replace("\n", "%0A").replace("\r", "%0D").replace("\x00", "%00")
    for route in ("img", "thumb"):
        _bad(client.get(f"/{route}/catalog-test/{quoted}"), 400, words)
    _bad(client.get(f"/api/datasets/catalog-test/captions?reference={quoted}"), 400, words)


def test_the_development_server_drops_a_stalled_request(app, monkeypatch):
    """Half a header, or a body promised and never sent: the development server gives up after its I/O timeout
    (1 s here; a 400 for the body) instead of holding a thread for ever."""
    assert QuietRequestHandler.timeout == DEV_IO_TIMEOUT_S and 0 < DEV_IO_TIMEOUT_S <= 60   # it has one
    monkeypatch.setattr(QuietRequestHandler, "timeout", 1)
    srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.server_port), timeout=30) as s:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: loc")
            assert s.recv(1024) == b""   # closed by the server, long before this socket's own 30 s
        for head in (b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",       # a body promised, never sent
                     b"Content-Length: 2\r\nContent-Length: 100\r\n\r\n{}"):        # two lengths, the longer one
            with socket.create_connection(("127.0.0.1", srv.server_port), timeout=30) as s:
                s.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head)
                answer = b""
                while part := s.recv(65536):
                    answer += part
            assert b"HTTP/1.1 400" in answer, answer[:300]
    finally:
        srv.shutdown()
        thread.join(10)
