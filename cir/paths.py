"""Where the checkout's own files are: the shipped weights, the page's templates and static files, and the
default data folder beside the checkout (../shared/data). No third-party imports: every layer may use it."""
from __future__ import annotations

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]      # the checkout (an editable install points here)
WEIGHTS_DIR = REPO_DIR / "weights"                  # shipped checkpoints: lite heads, Combiners, bof
DEFAULT_DATA_ROOT = REPO_DIR.parent / "shared" / "data"   # used when neither --data-root nor $CIR_DATA_ROOT is given
