"""Small shared helpers: device choice, atomic file writes, logging set-up, hashing (cir.utils), and where the
checkout's files are (cir.paths: REPO_DIR, WEIGHTS_DIR, which this module exported before the move)."""
from cir.paths import REPO_DIR, WEIGHTS_DIR  # noqa: F401
from cir.utils import *  # noqa: F403 (this module is cir.utils under its design-card name)
from cir.utils import __all__ as _utils_all

__all__ = [*_utils_all, "REPO_DIR", "WEIGHTS_DIR"]
