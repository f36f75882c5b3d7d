"""Configs are dataclasses; JSON model files and YAML files in ``configs/`` only override their fields.

One source of truth per fact: a preset is a dict of field values (data, not
code), a YAML file overlays some fields, and unknown fields are an error that
names them.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

__all__ = ["ConfigError", "to_dict", "from_dict", "override", "load_yaml", "from_yaml"]

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
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_dict(tp, value, _where=where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return list(value)
    numeric = tp is float or (origin in (typing.Union, types.UnionType) and float in typing.get_args(tp))
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if numeric and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it is meant to be
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], _where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError` naming them."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_where or cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints.get(k), v, f"{_where or cls.__name__}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{_where or cls.__name__}: {exc}") from exc


def override(cfg: C, changes: Mapping[str, Any]) -> C:
    """Copy of ``cfg`` with ``changes`` applied (nested dataclasses are merged field by field)."""
    base = to_dict(cfg)

    def merge(into: dict, upd: Mapping, where: str) -> None:
        for k, v in upd.items():
            if k not in into:
                raise ConfigError(f"{where}: unknown field {k!r}; valid fields are {sorted(into)}")
            if isinstance(into[k], dict) and isinstance(v, Mapping):
                merge(into[k], v, f"{where}.{k}")
            else:
                into[k] = v

    merge(base, changes, type(cfg).__name__)
    return from_dict(type(cfg), base)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (empty file: empty dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_yaml(cfg: C, path: str | Path) -> C:
    """``cfg`` with the fields set in the YAML file at ``path`` overridden."""
    try:
        return override(cfg, load_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
