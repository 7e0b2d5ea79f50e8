"""The index's error hierarchy: what a server or a command line turns into one clear message.

IndexLoadError is a ValueError, so utils.run_cli reports it as a user error (exit code 2) without a traceback.
"""
from __future__ import annotations


class IndexLoadError(ValueError):
    """A feature folder (or a backend's copy of it) that is missing, incomplete, corrupt or inconsistent."""


class StaleIndexError(IndexLoadError):
    """A backend's index was built from other features than the folder holds now."""


class BackendUnavailable(IndexLoadError, ConnectionError):
    """A backend that cannot be reached (a Milvus server that is down); searching it fails until it is back."""
