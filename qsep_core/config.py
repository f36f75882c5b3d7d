"""Configs are dataclasses; JSON model files and YAML files in ``configs/`` only override their fields.

The YAML presets ship with the package (``qsep_core/configs/``; ``configs/`` in the checkout points there):
:func:`resolve_config` turns a preset name (``sed_tiny``), a preset file name (``sed_tiny.yaml``,
``configs/sed_tiny.yaml``) or a path into the file to read, from any working directory.

One source of truth per fact: a preset is a dict of field values (data, not
code), a YAML file overlays some fields, and unknown fields are an error that
names them. A dataclass that renamed a field lists ``{old: new}`` in a class attribute
``RENAMED_FIELDS``; the old name is still read (files written before the rename keep loading).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

__all__ = [
    "ConfigError", "to_dict", "from_dict", "override", "load_yaml", "from_yaml", "nested_overrides", "load_config",
    "upgrade_fields", "check_positive", "PRESET_DIR", "preset_names", "resolve_config",
]

#: the YAML presets shipped with the package
PRESET_DIR = Path(__file__).resolve().parent / "configs"

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or dict does not fit the dataclass it is meant for."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (nested ones included) to a JSON/YAML-friendly dict; tuples become lists."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as the field type ``tp`` wants it; a value of the wrong kind is a :class:`ConfigError` naming it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(rest[0], value, where)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, _where=where)
    if origin in (tuple, list) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if len(args) == 1 else list(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(value)
        return value
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    numeric = tp is float or (origin in (typing.Union, types.UnionType) and float in args)
    if numeric and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if numeric and isinstance(value, int):
        return float(value)
    if numeric and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it is meant to be
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is float and not isinstance(value, float):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    return value


def check_positive(cfg: Any, *names: str) -> None:
    """Raise :class:`ConfigError` unless every field in ``names`` of dataclass ``cfg`` is a number > 0."""
    for name in names:
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be > 0, got {v!r}")


def upgrade_fields(cls: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (top-level fields of dataclass ``cls``) with old field names (``cls.RENAMED_FIELDS``) renamed.

    Use it to compare a stored config dict with a freshly written one.

    Raises:
        ConfigError: a field is given under both its old and its new name.
    """
    return dict(_renamed(cls, data, cls.__name__))


def _renamed(cls: Any, data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``data`` with the old field names of ``cls.RENAMED_FIELDS`` replaced by the new ones."""
    renames: Mapping[str, str] = getattr(cls, "RENAMED_FIELDS", {})
    old = [k for k in data if k in renames]
    if not old:
        return data
    out = dict(data)
    for k in old:
        new = renames[k]
        if new in out:
            raise ConfigError(f"{where}: {k!r} is the old name of {new!r}; give only {new!r}")
        out[new] = out.pop(k)
    return out


def from_dict(cls: type[C], data: Mapping[str, Any], _where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``.

    Raises:
        ConfigError: ``data`` is not a mapping, has unknown keys (named, with the valid ones), or
            holds a value the dataclass rejects.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = _renamed(cls, data, _where or cls.__name__)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        section = _where.partition(".")[2]  # "Outer.inner" -> "inner": name nested fields by their dotted path
        named = [f"{section}.{u}" for u in unknown] if section else unknown
        raise ConfigError(
            f"{_where or cls.__name__}: unknown field(s) {named}; valid fields are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints.get(k), v, f"{_where or cls.__name__}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_where or cls.__name__}: {exc}") from exc


def override(cfg: C, changes: Mapping[str, Any]) -> C:
    """Copy of ``cfg`` with ``changes`` applied (nested dataclasses are merged field by field).

    Raises:
        ConfigError: a changed field does not exist (named, with the valid ones) or its value is rejected.
    """
    base = to_dict(cfg)

    def merge(into: dict, upd: Mapping, where: str, node: Any) -> None:
        upd = _renamed(type(node), upd, where) if dataclasses.is_dataclass(node) else upd
        for k, v in upd.items():
            if k not in into:
                raise ConfigError(f"{where}: unknown field {k!r}; valid fields are {sorted(into)}")
            if isinstance(into[k], dict) and isinstance(v, Mapping):
                merge(into[k], v, f"{where}.{k}", getattr(node, k, None))
            else:
                into[k] = v

    merge(base, changes, type(cfg).__name__, cfg)
    return from_dict(type(cfg), base)


def preset_names() -> list[str]:
    """Names of the shipped YAML presets (``sed_tiny``, ``separator_audioset``, ...), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(name: str | Path) -> Path:
    """The YAML file meant by ``name``: an existing file, else a shipped preset.

    A preset is found by its name (``sed_tiny``), its file name (``sed_tiny.yaml``) or its path in the
    checkout (``configs/sed_tiny.yaml``), whatever the working directory.

    Raises:
        ConfigError: neither a file nor a preset (the message lists the presets).
    """
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    looks_like_preset = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    if looks_like_preset and (PRESET_DIR / f"{stem}.yaml").is_file():
        return PRESET_DIR / f"{stem}.yaml"
    raise ConfigError(f"config file not found: {name} (not a file, and not one of the shipped presets "
                      f"{', '.join(preset_names())})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (empty file: empty dict); ``path`` may name a shipped preset (:func:`resolve_config`).

    Raises:
        ConfigError: the file is missing or its top level is not a mapping.
    """
    path = resolve_config(path)
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_yaml(cfg: C, path: str | Path) -> C:
    """``cfg`` with the fields set in the YAML file at ``path`` overridden.

    Raises:
        ConfigError: the file is missing or sets an unknown field (the message names the file).
    """
    try:
        return override(cfg, load_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def nested_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides as a nested dict.

    ``overrides``: ``["data.batch_size=8", "lr=3e-4"]`` (values parsed as YAML), or a mapping whose
    keys may be dotted (``{"data.batch_size": 8}``) or nested (``{"data": {"batch_size": 8}}``).

    Raises:
        ConfigError: an item is not ``KEY=VALUE``, its value is not valid YAML, or a key sets both a
            value and fields below it.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE")
            key, raw = item.split("=", 1)
            try:
                items.append((key.strip(), yaml.safe_load(raw)))
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
    out: dict[str, Any] = {}
    for key, value in items:
        _merge_into(out, _nest(str(key), value), "")
    return out


def _nest(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    node: Any = value
    for p in reversed(parts):
        node = {p: node}
    return node


def _merge_into(into: dict[str, Any], upd: Mapping[str, Any], where: str) -> None:
    for k, v in upd.items():
        if isinstance(v, Mapping) and k in into:
            if not isinstance(into[k], dict):
                raise ConfigError(f"override {where}{k}: {where}{k!r} is set to a value, not a section")
            _merge_into(into[k], v, f"{where}{k}.")
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v


def load_config(cls: type[C], path: str | Path | None = None,
                overrides: Sequence[str] | Mapping[str, Any] | None = None) -> C:
    """Dataclass ``cls``: its defaults <- the YAML file at ``path`` <- ``overrides`` (see :func:`nested_overrides`).

    Sections merge field by field.

    Raises:
        ConfigError: the file is missing or malformed, or a field anywhere is unknown (named, with the file).
    """
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    # old top-level field names (RENAMED_FIELDS) are renamed in each source, so an override under
    # either name replaces the file's value under either name
    try:
        data = dict(_renamed(cls, data, str(path) if path is not None else cls.__name__))
    except ConfigError:
        pass  # both names in the file: from_dict below reports it with the file name
    _merge_into(data, dict(_renamed(cls, nested_overrides(overrides), "overrides")), "")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from exc
