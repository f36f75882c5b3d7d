"""Saved conditions: a query encoded once, reused without loading any encoder.

File format (``.safetensors``): one float32 tensor ``"condition"`` of shape
``(dim,)`` and, in the safetensors metadata, ``"format" = "qsep-condition"`` and
``"qsep_condition"`` = JSON of::

    {"format_version": 1, "dim": 768, "query": {...what was asked...},
     "model": {"path": ..., "name": ..., "config_sha256": ...} or null,
     "qsep_version": "0.1.0", ...any extra fields given to save_embedding}
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qsep_core.atomic import AtomicPath, write_error_message

from .errors import EmbeddingError

__all__ = [
    "CONDITION_FORMAT",
    "CONDITION_FORMAT_VERSION",
    "CONDITION_KEY",
    "save_embedding",
    "load_embedding",
    "check_embedding_dim",
]

CONDITION_FORMAT = "qsep-condition"
CONDITION_FORMAT_VERSION = 1
CONDITION_KEY = "condition"
_META_KEY = "qsep_condition"


def save_embedding(
    path: str | os.PathLike,
    vec: torch.Tensor,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a condition vector ``(dim,)`` with its metadata (atomically).

    Args:
        path: destination ``.safetensors`` file.
        vec: the condition, shape ``(dim,)`` (a ``(1, dim)`` tensor is accepted).
        meta: JSON-serialisable facts: ``query`` (what was asked), ``model`` (what it was made with), ...
        overwrite: replace an existing file.

    Raises:
        EmbeddingError: the vector is not 1-d, empty or not finite, the path is not ``.safetensors``,
            exists (without ``overwrite``), its folder is missing, or the metadata is not JSON-serialisable.
    """
    from qsep_core.checkpoint import qsep_version

    path = Path(path)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or vec.numel() == 0:
        raise EmbeddingError(f"a condition must be a 1-d vector, got shape {tuple(vec.shape)}")
    if not torch.isfinite(vec).all():
        raise EmbeddingError("the condition holds NaN or inf values; refusing to save it")
    if path.suffix != ".safetensors":
        raise EmbeddingError(f"condition files are .safetensors; got {path.name!r}")
    if path.exists() and not overwrite:
        raise EmbeddingError(f"{path} exists; refusing to overwrite it (pass --overwrite / overwrite=True)")
    if not path.parent.is_dir():
        raise EmbeddingError(f"cannot write {path}: folder {path.parent} does not exist")
    info: dict[str, Any] = {"query": None, "model": None}
    info.update(dict(meta or {}))
    info.update({"format_version": CONDITION_FORMAT_VERSION, "dim": int(vec.numel()), "qsep_version": qsep_version()})
    try:
        meta_json = json.dumps(info)
    except TypeError as exc:
        raise EmbeddingError(f"condition metadata is not JSON-serialisable: {exc}") from exc
    try:
        with AtomicPath(path, overwrite=overwrite) as tmp:
            save_file(
                {CONDITION_KEY: vec.detach().float().cpu().contiguous()},
                str(tmp),
                metadata={"format": CONDITION_FORMAT, _META_KEY: meta_json},
            )
    except Exception as exc:  # noqa: BLE001 - OSError or safetensors' own error: a full disk, permissions...
        raise EmbeddingError(write_error_message(path, exc)) from None
    return path


def load_embedding(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a condition file -> ``(vec (dim,), meta)``; anything malformed is an :class:`EmbeddingError`."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"condition file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            file_meta = f.metadata() or {}
            keys = list(f.keys())
            vec = f.get_tensor(CONDITION_KEY) if CONDITION_KEY in keys else None
    except Exception as exc:  # safetensors has its own error types
        raise EmbeddingError(f"cannot read {path} as a safetensors condition file: {exc}") from exc
    if file_meta.get("format") != CONDITION_FORMAT or vec is None:
        raise EmbeddingError(f"{path} is not a qsep condition file (make one with `qsep embed`)")
    try:
        meta = json.loads(file_meta.get(_META_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise EmbeddingError(f"{path}: condition metadata is not valid JSON: {exc}") from exc
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CONDITION_FORMAT_VERSION:
        raise EmbeddingError(f"{path}: condition format version {version!r} is newer than this qsep understands")
    if vec.ndim != 1 or int(meta.get("dim", -1)) != vec.numel():
        raise EmbeddingError(f"{path}: stored dim {meta.get('dim')} does not match the vector shape {tuple(vec.shape)}")
    return vec.float(), meta


def check_embedding_dim(vec: torch.Tensor, model_dim: int, model: str = "the model", source: str = "condition") -> None:
    """Error naming both sizes when a condition does not fit a model's condition size."""
    dim = int(vec.shape[-1])
    if dim != int(model_dim):
        raise EmbeddingError(
            f"{source} has dimension {dim} but {model} expects {int(model_dim)}-d conditions; "
            "make the condition with the same model (`qsep embed --model ...`)"
        )
