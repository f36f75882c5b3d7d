"""Shared pytest fixtures and settings for qsep's tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _deterministic():
    """Every test starts from the same torch RNG state (test files that train set one thread themselves)."""
    torch.manual_seed(0)
    yield


def official_fixture_dir() -> Path:
    """Folder of the official-compat fixtures (``$QSEP_OFFICIAL_FIXTURES`` or ``../shared/reference/official_compat``)."""
    return Path(os.environ.get("QSEP_OFFICIAL_FIXTURES", REPO.parent / "shared" / "reference" / "official_compat"))
