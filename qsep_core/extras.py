"""Optional dependencies: imported only where used, with an error that names the pip extra to install.

The extras (``pyproject.toml``; ``./install.sh`` installs all of them):

* ``evaluation``: museval + musdb (MUSDB18 evaluation; they also need the ``ffmpeg`` program);
* ``plots``: matplotlib (``qsep detect --plot``, benchmark figures);
* ``hdf5``: h5py (PANNs-style HDF5 packs for SED training and mining);
* ``demo``: gradio (``qsep demo``, the local web page);
* ``onnx``: onnx + onnxruntime + onnxscript (``qsep export --onnx`` and running the exported file).
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra name -> the modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "evaluation": ("museval", "musdb"),
    "plots": ("matplotlib",),
    "hdf5": ("h5py",),
    "demo": ("gradio",),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or say which extra to install.

    Args:
        module: the module to import (e.g. ``"h5py"``, ``"matplotlib.pyplot"``).
        extra: the key of :data:`EXTRAS` whose packages provide it.
        purpose: what needs it, for the message (e.g. ``"reading HDF5 packs"``).

    Raises:
        MissingExtraError: the module (or a package it needs) is not installed.
        KeyError: ``extra`` is not one of :data:`EXTRAS` (a programming error).
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"{purpose} needs {exc.name or module}, which is not installed: install qsep with the "
            f"'{extra}' extra, e.g. `pip install -e '.[{extra}]'` in the checkout (./install.sh installs every extra)"
        ) from exc
