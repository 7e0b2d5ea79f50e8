"""The errors a user of the demo can cause: each carries its HTTP status and a message meant for that user.

The engine layers (datasets, uploads, engine) raise them; app.py turns them into JSON answers.
"""
from __future__ import annotations


class ApiError(Exception):
    """An error the user caused; `status` is the HTTP status, the message says what to change."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class TooLarge(ApiError):
    status = 413


class ServiceUnavailable(ApiError):
    """The dataset's index backend cannot be reached (e.g. its Milvus server is down)."""

    status = 503
