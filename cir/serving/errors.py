"""The errors a user of the demo can cause: each carries its HTTP status and a message meant for that user.

The engine layers (datasets, uploads, engine) raise them; app.py turns them into JSON answers.
"""
from __future__ import annotations


class ApiError(Exception):
    """An error the user caused; `status` is the HTTP status, the message says what to change."""

    status = 400
    retry_after_s: int | None = None   # Retry-After seconds, when the same request may succeed later (0: never)

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadInput(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class TooLarge(ApiError):
    status = 413


class ServiceUnavailable(ApiError):
    """The server cannot answer right now (an index backend is down, every image decoder is busy): retry."""

    status = 503
    retry_after_s = 5


class InsufficientStorage(ApiError):
    """The server's disk (or its quota) is full: nothing was stored, the user may retry later."""

    status = 507


class NotImplementedForModel(ApiError):
    """The loaded model cannot do this (e.g. explanations for an encoder without a Grad-CAM path)."""

    status = 501


class DamagedModel(ApiError):
    """The request was fine but a model or an index on the server computed NaN or infinity: a 500 that says so
    (retrying will not help), never `NaN` written into an answer."""

    status = 500
