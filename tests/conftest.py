"""Shared fixtures: where the shared data lives, and one real lite encoder per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CATALOG = SHARED / "fashion-catalog"


@pytest.fixture(scope="session")
def catalog_root() -> Path:
    if not (CATALOG / "styles.csv").exists():
        pytest.skip(f"the catalogue is not at {CATALOG}")
    return CATALOG


@pytest.fixture(scope="session")
def lite_encoder():
    import encoders
    return encoders.load("lite", "cpu")
