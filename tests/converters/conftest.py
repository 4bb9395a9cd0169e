"""Fixtures of the converter tests: tiny images and the real data folder beside the repo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

# <repo>/tests/converters/conftest.py -> <repo>/../shared/data
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """``make_image(path, width, height, mode="RGB")`` writes a flat image and returns its path."""

    def make(path: Path, width: int = 64, height: int = 48, mode: str = "RGB") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (width, height)).save(path)
        return path

    return make


@pytest.fixture
def shared_data() -> Path:
    """The real data folder, or a skip with the reason when it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA.resolve()} is absent (only beside the repo)")
    return SHARED_DATA.resolve()
