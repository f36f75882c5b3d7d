"""Optional dependencies: a missing one is an ImportError that names the pip extra to install."""
from __future__ import annotations

import sys

import pytest

from qsep_core.extras import EXTRAS, MissingExtraError, require


def test_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now fails as if it were not installed
    with pytest.raises(MissingExtraError, match=r"reading HDF5 packs needs h5py.*'hdf5' extra.*\.\[hdf5\]"):
        require("h5py", "hdf5", "reading HDF5 packs")
    assert issubclass(MissingExtraError, ImportError)
    with pytest.raises(KeyError, match="unknown extra"):
        require("os", "nope", "x")
    assert require("os", "plots", "x").__name__ == "os"


def test_features_raise_it(monkeypatch, tmp_path):
    from sed.data import HDF5PackDataset

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingExtraError, match="hdf5"):
        HDF5PackDataset(tmp_path / "a.h5", None, 8000, 800)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from sed.detect import Detection, plot_detection

    with pytest.raises(MissingExtraError, match="plots"):
        plot_detection(Detection(str(tmp_path / "x.wav"), 1.0, [], {}, None, None), tmp_path / "p.png")


def test_every_extra_is_declared_in_pyproject():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = declared["project"]["optional-dependencies"]
    for name, modules in EXTRAS.items():
        assert name in extras, name
        assert all(any(m.split(".")[0] in dep for dep in extras[name]) for m in modules), (name, extras[name])
