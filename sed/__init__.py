"""qsep's sound event detection package: HTS-AT, its official checkpoint importers, training and mining.

Load a detector from a qsep model folder::

    import sed
    model = sed.load_detector()  # the shipped model's detector; or a folder, or a name from `qsep models`
    out = model(wave)            # wave: (batch, samples) float32 at model.cfg.sample_rate
    out["clipwise"], out["framewise"], out["latent"], out["logits"], out["frame_times"]

Nothing heavy is imported until used.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sed.htsat import HTSAT

__all__ = ["load_detector", "DETECTOR_COMPONENTS", "COMPONENT_BUILDERS", "HTSAT", "HTSATConfig", "htsat_config"]

#: model-file component kinds this package builds (kind -> "module:callable", see :mod:`qsep_core.checkpoint`)
COMPONENT_BUILDERS: dict[str, str] = {"htsat": "sed.htsat:build_from_config"}

_LAZY = {"HTSAT": "sed.htsat", "HTSATConfig": "sed.config", "htsat_config": "sed.config"}


def __getattr__(name: str):
    """Lazy exports: ``sed.HTSAT``, ``sed.HTSATConfig``, ``sed.htsat_config`` import their module on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sed' has no attribute {name!r}")

#: component names searched for a detector, in order
DETECTOR_COMPONENTS = ("detector", "audio_encoder")


def load_detector(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> "HTSAT":
    """The HTS-AT detector of a qsep model, in eval mode on ``device``.

    ``path`` is resolved like every model argument (:func:`qsep_core.hub.resolve_model`): a folder, a name
    that ``qsep models`` lists, or None for the shipped default model.

    Uses the component ``"detector"``, or ``"audio_encoder"`` (the query encoder of a separator
    model folder) when there is no detector. ``model.class_names`` is set from the folder's
    metadata (``None`` when unknown: outputs are then named by class index).

    Raises:
        qsep_core.checkpoint.CheckpointError: the folder is missing, malformed, or has no HTS-AT component.
    """
    from qsep_core.checkpoint import CheckpointError, ModelFolder
    from qsep_core.hub import resolve_model

    path = resolve_model(path)
    folder = ModelFolder(path, builders=COMPONENT_BUILDERS)
    name = next((n for n in DETECTOR_COMPONENTS if folder.has(n)), None)
    if name is None:
        raise CheckpointError(
            f"{path} has no detector: expected a component named one of {list(DETECTOR_COMPONENTS)}, "
            f"found {sorted(folder.components)}"
        )
    if folder.kind(name) != "htsat":
        raise CheckpointError(f"{path}: component {name!r} is of kind {folder.kind(name)!r}, not an HTS-AT ('htsat')")
    model = folder.build(name, device)
    names = folder.metadata.get("class_names")
    if names is not None and len(names) != model.cfg.num_classes:
        raise CheckpointError(
            f"{path}: metadata lists {len(names)} class names but the model has {model.cfg.num_classes} classes"
        )
    model.class_names = list(names) if names is not None else None
    return model
