"""Finding models: a folder path, a name in the model search path, the shipped default, or a Hugging Face repo id.

This is the ONE resolver of every command and API entry point that takes a model (``qsep separate``,
``embed``, ``detect``, ``evaluate``, ``models``, :func:`sed.load_detector`, :class:`separator.Separator`),
so a name that ``qsep models`` lists works everywhere and no ``--model`` means the shipped model.

Resolution order for :func:`resolve_model` (``name_or_path``):

1. ``None``: the shipped default model (:data:`DEFAULT_MODEL`, inside the installed package).
2. An existing path (a model folder or a ``.safetensors`` model file).
3. A bare name: ``<dir>/<name>`` for each dir of :func:`search_path` — ``$QSEP_MODELS`` (``:``-separated),
   ``~/.cache/qsep/models``, then the models shipped inside the package.
4. ``owner/repo`` (optionally ``owner/repo@revision``): a Hugging Face Hub repository, only when
   ``huggingface_hub`` is installed. It is looked up in the local hub cache first; the network is used only when
   the cache lacks it and ``HF_HUB_OFFLINE`` is not set.

Nothing here touches the network for paths or names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qsep_core.constants import user_cache_dir
from qsep_core.checkpoint import CheckpointError, ModelFolder

__all__ = ["DEFAULT_MODEL", "PRETRAINED_DIR", "search_path", "resolve_model", "ModelEntry", "list_models", "describe_model",
           "model_display_name"]

#: name of the model every command and ``Separator.from_pretrained()`` use when none is given
DEFAULT_MODEL = "qsep-starter"
#: models shipped inside the package
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def search_path() -> list[Path]:
    """Folders searched for models given by name, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get("QSEP_MODELS", "").split(os.pathsep) if p]
    dirs.append(user_cache_dir() / "models")
    dirs.append(PRETRAINED_DIR)
    return dirs


def _is_model(p: Path) -> bool:
    """Whether ``p`` looks like a model; an unreadable place (e.g. a cache folder of another user) is not one."""
    try:
        return (p.is_dir() and (p / "config.json").is_file()) or (p.is_file() and p.suffix == ".safetensors")
    except OSError:
        return False


def _from_hub(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise CheckpointError(f"{repo!r} looks like a Hugging Face repo id, but huggingface_hub is not installed") from None
    repo_id, _, revision = repo.partition("@")
    allow = ["config.json", "model.safetensors", "*.md"]
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=allow, local_files_only=True))
    except Exception as local_exc:  # not in the cache
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise CheckpointError(
                f"model {repo!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set ({local_exc})"
            ) from None
        try:
            return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=allow))
        except Exception as exc:
            raise CheckpointError(f"cannot fetch model {repo!r} from the Hugging Face Hub: {exc}") from exc


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """The folder (or file) of a model given by path, name or hub id (see the module doc)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not _is_model(p):
            raise CheckpointError(f"{p} is not a qsep model (expected a folder with config.json, or a .safetensors file)")
        return p
    name = str(name_or_path)
    if not name.strip():
        raise CheckpointError("empty model name: give a model folder, a name from `qsep models`, or leave --model out")
    if "/" not in name:
        for d in search_path():
            if _is_model(d / name):
                return d / name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            return _from_hub(name)
        except CheckpointError as exc:  # an OWNER/REPO id is also a relative path: say both were tried
            raise CheckpointError(f"no model folder {p.resolve()} exists, and as a Hugging Face Hub id: {exc}") from exc
    where = ", ".join(str(d) for d in search_path())
    hint = (
        " No default model is shipped with this version of qsep: pass --model DIR (train one with the recipes, or "
        "convert an official checkpoint with `qsep import-official zsass`)."
        if name == DEFAULT_MODEL else ""
    )
    raise CheckpointError(f"unknown model {name!r}: not a path, and not found in {where}.{hint}")


@dataclass
class ModelEntry:
    """What ``qsep models`` shows about one model."""

    name: str
    path: Path
    query_types: list[str]
    sample_rate: int | None
    size_mb: float
    preset: str | None
    error: str | None = None


def model_display_name(path: Path) -> str:
    """The name a model is listed and written under: its folder name, or ``<run>`` for a training run's
    ``<run>/model`` export (``model`` alone says nothing); a ``.safetensors`` file's stem."""
    path = Path(path)
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.stem if path.suffix == ".safetensors" else path.name


def describe_model(path: Path, name: str | None = None, builders: Mapping[str, Any] | None = None) -> ModelEntry:
    """Facts about the model at ``path`` (never raises: problems go into ``error``). With ``builders`` (component
    kind -> builder, e.g. :data:`separator.checkpoint.BUILDERS`) every component is also checked against its
    weights without allocating them (:meth:`qsep_core.checkpoint.ModelFolder.check`), so a folder that would
    not load is listed with its error."""
    name = name or model_display_name(path)
    try:
        return _describe(path, name, builders)
    except (CheckpointError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return ModelEntry(name, path, [], None, 0.0, None, error=str(exc) or type(exc).__name__)


def _describe(path: Path, name: str, builders: Mapping[str, Any] | None = None) -> ModelEntry:
    folder = ModelFolder(path, builders=builders)
    if builders is not None:
        unknown = sorted({folder.kind(n) for n in folder.components} - set(builders))
        if unknown:
            raise CheckpointError(f"unknown component kind(s) {unknown}; this qsep builds {sorted(builders)}")
        folder.check()
    kinds = {spec.get("kind") for spec in folder.components.values()}
    types = []
    if "text_projection" in kinds:
        types.append("text")
    if "htsat" in kinds:
        types.append("audio")
    if "label_bank" in kinds:
        types.append("label")
    types.append("embedding")
    rate = preset = None
    for spec in folder.components.values():
        if spec.get("kind") == "query_unet":
            rate = spec["config"].get("sample_rate")
            preset = folder.metadata.get("preset") or spec["config"].get("preset")
            if preset is None and folder.metadata.get("trained_with"):
                preset = "custom"  # trained before qsep recorded the preset
    if "query_unet" not in kinds:
        types = [f"(no separator: {', '.join(sorted(k for k in kinds if k))})"]
    return ModelEntry(name, path, types, rate, folder.size_bytes() / 1e6, preset)


def list_models(extra: list[str | os.PathLike] = (), builders: Mapping[str, Any] | None = None) -> list[ModelEntry]:
    """Every model in the search path (and the ``extra`` folders, which may be models or folders of models);
    ``builders``: as :func:`describe_model`."""
    seen: set[Path] = set()
    out: list[ModelEntry] = []
    for d in [*map(Path, extra), *search_path()]:
        try:
            candidates = [d] if _is_model(d) else sorted(d.iterdir()) if d.is_dir() else []
        except OSError:  # an unreadable folder of the search path lists nothing
            continue
        for c in candidates:
            if _is_model(c) and c.resolve() not in seen:
                seen.add(c.resolve())
                out.append(describe_model(c, builders=builders))
    return out
