"""Fixtures of the evaluation tests."""
from __future__ import annotations

import pytest

from .musdb_tree import tiny_musdb_tree


@pytest.fixture(scope="session")
def tiny_musdb(tmp_path_factory):
    """A tiny MUSDB18-HQ tree: ``(root, {test track name: {stem: (time, channels) array}})``."""
    return tiny_musdb_tree(tmp_path_factory.mktemp("musdb"))
