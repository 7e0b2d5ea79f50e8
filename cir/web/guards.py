"""The HTTP guards of the demo app, installed by one call: `install_guards(app, ...)`.

    body caps          every request body is capped small (64 KB); only the upload route takes the upload
                       limit. A body without Content-Length (chunked) is cut off at the cap: 413, never a
                       hang or a 500. A Content-Length over the cap is refused before the view runs.
    safe JSON          parse_json_object(): UTF-8 only, an object at the top, at most MAX_JSON_DEPTH levels
                       (checked by one linear scan, too_deep), no NaN / Infinity, no numbers of more than
                       MAX_NUMBER_DIGITS digits; each a 400 that names the cause. Answers are written with
                       allow_nan=False (StrictJSONProvider): a NaN never reaches a client as invalid JSON.
    unreadable bodies  a body the server cannot read (a malformed chunk size, too many trailer lines, a client
                       gone mid-body) is a 400 on every route (GuardedInput), never a 500.
    security headers   nosniff, no referrer, the page's Content-Security-Policy (web.assets decides it:
                       plus the CDN origin when Bootstrap comes from the CDN), no framing, Cache-Control: private
                       for user uploads (they are a user's photos, not public content).
    no version banner  QuietRequestHandler: the development server says "cir-demo", not its version, and
                       drops a connection idle for DEV_IO_TIMEOUT_S. (gunicorn's own banner and timeouts
                       are set in gunicorn.conf.py.)
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Iterator

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler

from cir.serving.errors import BadInput

MB = 1024 * 1024
MAX_BODY_BYTES = 64 * 1024   # a search is a few hundred bytes: 64 KB leaves room for any form, not for abuse
MULTIPART_SLACK = 64 * 1024  # multipart framing around an uploaded file: its request may exceed the file this much
MAX_JSON_DEPTH = 20          # a search body is 2 levels deep (an object of tags)
MAX_NUMBER_DIGITS = 32       # k and seeds are small; a 4,000-digit integer is only work for the server
DEV_IO_TIMEOUT_S = 15        # the development server's per-read/write socket timeout (gunicorn's I/O timeout)
# The depth scan's tokens: a run of brackets, or a whole string (to its end quote, else to the end of the text,
# a lone trailing backslash included: every string matches, so no match is ever retried inside one).
_JSON_TOKENS = re.compile(r'[\[\]{}]+|"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)


class Guards:
    """The limits and headers one app was installed with (app.extensions["cir_guards"])."""

    def __init__(self, max_upload_bytes: int, upload_max_age_s: int, csp: str, max_body_bytes: int,
                 upload_routes: Iterable[str], private_prefix: str):
        self.max_upload_bytes, self.max_body_bytes = max_upload_bytes, max_body_bytes
        self.upload_routes = frozenset(upload_routes)
        self.upload_max_age_s, self.private_prefix = int(upload_max_age_s), private_prefix
        self.headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                        "Content-Security-Policy": csp,
                        "X-Frame-Options": "DENY"}  # frame-ancestors, for browsers that predate it

    def body_limit(self, path: str) -> int:
        """Largest request body on `path`, in bytes."""
        return self.max_upload_bytes + MULTIPART_SLACK if path in self.upload_routes else self.max_body_bytes

    def cap_body(self) -> None:
        """before_request: this route's cap, enforced by werkzeug on every read (chunked bodies too)."""
        limit = self.body_limit(request.path)
        if request.path not in self.upload_routes:
            request.max_form_memory_size = limit
        if request.content_length is not None:
            request.max_content_length = limit
            if request.content_length > limit:
                raise RequestEntityTooLarge()  # refused before any view reads it
        elif request.environ.get("wsgi.input_terminated"):
            # A chunked body: werkzeug stops reading at the cap *silently* (the view would see a truncated
            # body), so read it here, up to one byte past the cap, and refuse it when that byte exists.
            # Views then read the cached bytes (forms included).
            request.max_content_length = limit + 1
            if len(request.get_data(cache=True)) > limit:
                raise RequestEntityTooLarge()

    def too_large(self, e: RequestEntityTooLarge) -> tuple[Response, int]:
        if request.path in self.upload_routes:
            limit = self.max_upload_bytes
            message = f"the upload is too large: the limit is {limit / MB:g} MB ({limit:,} bytes)"
        else:
            limit = self.max_body_bytes
            message = (f"the request body is too large: the limit is {limit / 1024:g} KB ({limit:,} bytes) "
                       "except for uploads")
        return jsonify({"error": e.name, "message": message, "status": 413}), 413

    def add_headers(self, resp: Response) -> Response:
        """after_request: the security headers on every response; uploads cached privately only."""
        resp.headers.update(self.headers)
        if request.path.startswith(self.private_prefix):
            resp.cache_control.public = False
            resp.cache_control.private = True
            resp.cache_control.max_age = self.upload_max_age_s
            resp.headers.pop("Expires", None)  # max-age rules; an Expires a day ahead would only confuse
        return resp


class UnreadableBody(BadRequest):
    """The request body could not be read off the connection: the client's framing, never a server error."""


class GuardedInput:
    """wsgi.input whose read errors become UnreadableBody (400).

    The server's own stream raises what it likes on malformed framing: gunicorn's InvalidChunkSize,
    ChunkMissingTerminator or LimitRequestHeaders (20,000 trailer lines) are plain Exceptions, which escaped
    every view as a 500 (werkzeug turns only OSError and ValueError into ClientDisconnected). HTTP errors
    raised while reading (413 at the cap) pass unchanged.
    """

    def __init__(self, stream: Any):
        self._stream = stream

    def _guarded(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 -- whatever the server raises, the body is unreadable
            raise UnreadableBody(f"the request body could not be read ({type(e).__name__}): it is malformed "
                                 "(e.g. a bad chunk size) or the client stopped sending it") from None

    def read(self, *args: Any) -> bytes:
        return self._guarded(self._stream.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._guarded(self._stream.readline, *args)

    def readlines(self, *args: Any) -> list[bytes]:
        return self._guarded(self._stream.readlines, *args)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    @classmethod
    def middleware(cls, wsgi_app: Callable) -> Callable:
        """`wsgi_app` reading its body through GuardedInput."""
        def guarded_app(environ: dict, start_response: Callable) -> Any:
            if "wsgi.input" in environ:
                environ["wsgi.input"] = cls(environ["wsgi.input"])
            return wsgi_app(environ, start_response)
        return guarded_app


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with allow_nan=False: a NaN or an infinity in an answer is an error on the server, never
    `NaN` sent as if it were JSON (a damaged model once served "scores": [NaN, NaN, NaN])."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def install_guards(app: Flask, *, max_upload_bytes: int, upload_max_age_s: float, csp: str,
                   max_body_bytes: int = MAX_BODY_BYTES, upload_routes: Iterable[str] = ("/api/upload",),
                   private_prefix: str = "/uploads/") -> Guards:
    """Install the body caps, the 413 answer, the guarded body reads, strict JSON answers and the security
    headers on `app`.

    upload_max_age_s: how long browsers may keep an upload (its time-to-live); csp: the page's
    Content-Security-Policy (web.assets.content_security_policy).
    """
    guards = Guards(max_upload_bytes, int(upload_max_age_s), csp, max_body_bytes, upload_routes,
                    private_prefix)
    # The largest cap is the app's default (for a body read outside a request hook); cap_body lowers it.
    app.config["MAX_CONTENT_LENGTH"] = max(max_upload_bytes + MULTIPART_SLACK, max_body_bytes)
    app.wsgi_app = GuardedInput.middleware(app.wsgi_app)  # type: ignore[method-assign]
    app.json = StrictJSONProvider(app)
    app.before_request(guards.cap_body)
    app.register_error_handler(RequestEntityTooLarge, guards.too_large)
    app.after_request(guards.add_headers)
    app.extensions["cir_guards"] = guards
    return guards


# ----------------------------------------------------------------------------------------------- JSON

def _reject_constant(name: str) -> Any:
    raise BadInput(f"the request body contains {name}, which is not JSON; send numbers only")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise BadInput(f"a number in the request body has {len(text.lstrip('-')):,} digits; "
                       f"at most {MAX_NUMBER_DIGITS} are allowed")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if len(text) > 2 * MAX_NUMBER_DIGITS or not math.isfinite(value):
        raise BadInput(f"a number in the request body is out of range ({text[:40]})")
    return value


def too_deep(text: str, limit: int) -> bool:
    """Whether JSON `text` nests arrays and objects more than `limit` levels deep, in one linear pass.

    Strings are single tokens (brackets inside them do not count, an escaped quote does not end them), read by
    the regex engine in one match each: a string that never ends runs to the end of the text, so the scan never
    restarts inside it. (The regex this replaces did restart, at every escaped quote: 21 brackets
    and an unterminated string of 32,000 escaped quotes held a worker for 11.5 s in issue 20's run;
    benchmarks/bench_guards.py times both.)
    """
    if text.count("[") + text.count("{") <= limit:  # the common case: no scan needed
        return False
    depth = 0
    for token in _JSON_TOKENS.findall(text):   # at most 64 KB of text: the list is small
        if token[0] == '"':
            continue
        for ch in token:   # a run of brackets
            if ch in "[{":
                depth += 1
                if depth > limit:
                    return True
            else:
                depth -= 1
    return False


_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
          type(None): "null"}


def parse_json_object(data: bytes) -> dict[str, Any]:
    """The JSON object of a request body; BadInput naming what is wrong with it otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"the request body is not valid UTF-8 (byte {e.start}); send JSON as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark, which some clients write: harmless
    if too_deep(text, MAX_JSON_DEPTH):
        raise BadInput(f"the request body is nested too deeply: at most {MAX_JSON_DEPTH} levels are allowed")
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise BadInput(f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:  # cannot happen after too_deep; kept so that it never becomes a 500
        raise BadInput("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadInput(f"the request body must be a JSON object, not {_KINDS.get(type(body), 'that')}")
    return body


class QuietRequestHandler(WSGIRequestHandler):
    """The development server's request handler: no version banner (Server: cir-demo), and a socket timeout,
    so that a client that stops sending (half a header, `Expect: 100-continue` and no body, a Content-Length
    longer than its body) is dropped after DEV_IO_TIMEOUT_S instead of holding its thread for ever. Still one
    thread per connection: the development server is for one user on localhost (gunicorn.conf.py serves the
    rest)."""

    timeout = DEV_IO_TIMEOUT_S   # socketserver.StreamRequestHandler sets it on every connection

    def version_string(self) -> str:
        return "cir-demo"
