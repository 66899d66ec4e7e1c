"""Shared pytest fixtures.

Real images and checkpoints live OUTSIDE the repository, in the read-only folder
``../shared`` next to the repo root (override with the env var ``TINYMVIT_SHARED``).
Tests that need them skip with a clear reason when the folder is absent, except on
CI (``CI=true``), where a missing folder is a failure, not a silent skip.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _missing(what):
    message = f"{what} not found: real images/checkpoints unavailable"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true, so this is an error: provide ../shared or set "
                    f"TINYMVIT_SHARED)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir():
    """Path of the read-only data folder (``$TINYMVIT_SHARED`` or ``<repo>/../shared``)."""
    env = os.environ.get("TINYMVIT_SHARED")
    path = Path(env) if env else (REPO_ROOT / ".." / "shared")
    if not path.is_dir():
        _missing("../shared" if not env else f"TINYMVIT_SHARED={env}")
    return path.resolve()


@pytest.fixture(scope="session")
def shared_images(shared_dir):
    """Sorted list of the real test images in ``shared/images`` (segmentation masks excluded)."""
    folder = shared_dir / "images"
    images = sorted(p for p in folder.glob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith("_mask.bmp"))
    if not images:
        _missing(f"images in {folder}")
    return images


@pytest.fixture(scope="session")
def shared_checkpoint(shared_dir):
    """``shared_checkpoint(name)`` -> Path of ``shared/checkpoints/<name>`` (skips if absent)."""
    def get(name):
        path = shared_dir / "checkpoints" / name
        if not path.exists():
            _missing(f"checkpoint {path}")
        return path
    return get
