"""Fixtures for the SED tests: the official-compat fixture folder and its ``synth_state_dict`` module."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def official_fixture_dir() -> Path:
    """``$QSEP_OFFICIAL_FIXTURES`` or ``<repo>/../shared/reference/official_compat``."""
    return Path(os.environ.get("QSEP_OFFICIAL_FIXTURES", REPO.parent / "shared" / "reference" / "official_compat"))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The official-compat fixture folder; tests using it are skipped (with the reason) when it is absent."""
    d = official_fixture_dir()
    if not (d / "synth_state_dict.py").is_file():
        pytest.skip(f"official-compat fixtures not found in {d} (set QSEP_OFFICIAL_FIXTURES)")
    return d


@pytest.fixture(scope="session")
def synth(official_dir: Path) -> ModuleType:
    """The fixture folder's ``synth_state_dict`` module, imported from its file."""
    spec = importlib.util.spec_from_file_location("qsep_fixture_synth_state_dict", official_dir / "synth_state_dict.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod
