"""Model files with every component kind qsep builds: :mod:`qsep_core.checkpoint` bound to the full builder table.

:data:`BUILDERS` joins the separator's kinds (``query_unet``, ``text_projection``,
``label_bank``) and the detector's (``sed.COMPONENT_BUILDERS``: ``htsat``). :class:`ModelFolder`,
:func:`save_model` and :func:`build_component` here use it by default; the format itself and
the other names are those of :mod:`qsep_core.checkpoint`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

import sed
from qsep_core import checkpoint as _core
from qsep_core.checkpoint import (  # noqa: F401 - re-exported
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    Builder,
    CheckpointError,
    Component,
    SafetensorsReader,
    check_fit,
    file_sha256,
    load_strict,
    qsep_version,
)

__all__ = [
    "BUILDERS", "ModelFolder", "save_model", "build_component",
    "FORMAT", "FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "Builder", "CheckpointError", "Component",
    "SafetensorsReader", "check_fit", "file_sha256", "load_strict", "qsep_version",
]

#: component kind -> "module:callable" (imported when a component of that kind is built)
BUILDERS: dict[str, Builder] = {
    "query_unet": "separator.models:build_from_config",
    "text_projection": "separator.query.text:build_projection_from_config",
    "label_bank": "separator.query.labels:build_label_bank_from_config",
    **sed.COMPONENT_BUILDERS,
}


class ModelFolder(_core.ModelFolder):
    """:class:`qsep_core.checkpoint.ModelFolder` that builds every kind in :data:`BUILDERS` (unless given others).

    Raises:
        CheckpointError: as :class:`qsep_core.checkpoint.ModelFolder`.
    """

    def __init__(self, path: str | os.PathLike, builders: Mapping[str, Builder] | None = None):
        super().__init__(path, BUILDERS if builders is None else builders)


def save_model(path: str | os.PathLike, components: Mapping[str, Component], metadata: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """:func:`qsep_core.checkpoint.save_model`, refusing component kinds that :data:`BUILDERS` cannot build.

    Raises:
        CheckpointError: as :func:`qsep_core.checkpoint.save_model` (unknown kind, existing folder, ...).
    """
    return _core.save_model(path, components, metadata=metadata, overwrite=overwrite, kinds=BUILDERS)


def build_component(kind: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """The module of ``kind`` built from ``config`` with :data:`BUILDERS` (weights not loaded).

    Raises:
        CheckpointError: ``kind`` is not in :data:`BUILDERS`.
    """
    return _core.build_component(kind, config, BUILDERS)
