"""Small shared helpers: device choice, atomic file writes, logging set-up, hashing (cir.utils)."""
from cir.utils import *  # noqa: F403 (this module is cir.utils under its design-card name)
from cir.utils import __all__  # noqa: F401
