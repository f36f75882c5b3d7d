"""qsep model files: a folder with ``config.json`` + ``model.safetensors``.

Layout of a model folder::

    my-model/
      config.json         {"format": "qsep-model", "format_version": 1, "qsep_version": ...,
                           "components": {"separator": {"kind": "query_unet", "config": {...}}, ...},
                           "metadata": {...}}
      model.safetensors   tensors of every component, keys "<component>.<parameter>"

A model may hold several components (the separator, its audio query encoder,
the text projection, the label bank...). ``kind`` names the builder that turns
a component's ``config`` into an ``nn.Module``. The kinds belong to the packages
that define the models: each passes its table of builders (kind ->
``"module:callable"``, imported only when a component of that kind is built) to
:class:`ModelFolder` and :func:`save_model` (``sed.COMPONENT_BUILDERS``,
``separator.checkpoint.BUILDERS``); this module names none of them. A single
``.safetensors`` file with the same JSON under the metadata key ``qsep_config``
is also accepted.

Loading never unpickles, and is strict: missing, unexpected or mis-shaped
weights are an error that names them. Lightning ``.ckpt`` files are only for
resuming training.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qsep_core.atomic import AtomicPath

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Builder",
    "CheckpointError",
    "Component",
    "ModelFolder",
    "save_model",
    "load_strict",
    "check_fit",
    "SafetensorsReader",
    "build_component",
    "qsep_version",
    "file_sha256",
]

FORMAT = "qsep-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: how a component kind is built: ``"module:callable"`` (imported on first use, so reading a model folder
#: never imports every model family) or the callable itself; it takes the component's config dict and
#: returns an ``nn.Module``
Builder = Union[str, Callable[[dict], torch.nn.Module]]


class CheckpointError(ValueError):
    """A model file is missing, malformed, of an unknown version, or does not fit its model."""


def qsep_version() -> str:
    """The installed qsep version ("unknown" when running from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qsep")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Component:
    """One part of a model: a builder kind, its config dict and its weights."""

    kind: str
    config: dict[str, Any]
    state_dict: Mapping[str, torch.Tensor] = field(default_factory=dict)


def _json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def save_model(
    path: str | os.PathLike,
    components: Mapping[str, Component],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    kinds: Collection[str] | None = None,
) -> Path:
    """Write a model folder atomically (built in a temporary sibling folder, then renamed).

    Args:
        path: destination folder.
        components: name -> :class:`Component`; names must not contain ``"."``.
        metadata: free-form JSON-serialisable facts (training data, query types, ...).
        overwrite: replace an existing folder at ``path``; otherwise that is an error.
        kinds: the component kinds a reader can build (a builder table); None: not checked.

    Raises:
        CheckpointError: ``path`` exists (without ``overwrite``), its folder is missing, a component
            name is invalid or its kind is not in ``kinds``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors: dict[str, torch.Tensor] = {}
    spec: dict[str, Any] = {}
    for name, comp in components.items():
        if "." in name or not name:
            raise CheckpointError(f"invalid component name {name!r}")
        if kinds is not None and comp.kind not in kinds:
            raise CheckpointError(f"component {name!r} has unknown kind {comp.kind!r}; known: {sorted(kinds)}")
        spec[name] = {"kind": comp.kind, "config": comp.config}
        for k, v in comp.state_dict.items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qsep_version": qsep_version(),
        "components": spec,
        "metadata": dict(metadata or {}),
    }
    with AtomicPath(path, directory=True, overwrite=overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(_json_dump(config))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
    return path


#: model files whose components were checked in this process (path, file versions, components)
_CHECKED: set[tuple] = set()


class ModelFolder:
    """A qsep model folder (or single ``.safetensors`` file), opened for reading.

    Args:
        path: the folder or ``.safetensors`` file.
        builders: component kind -> :data:`Builder`, used by :meth:`build` (None: no kind can be built;
            the other methods work).

    Attributes:
        path: the folder or file.
        config: the parsed ``config.json``.
        components: component name -> ``{"kind", "config"}``.
        metadata: free-form facts written at save time.

    Opening validates ``config.json`` (UTF-8 JSON, typed component specs); :meth:`check` and :meth:`build`
    validate a component before anything is allocated: the safetensors header (through the safetensors
    library: offsets contiguous and in range) and the component's config (field types and ranges) against
    the header's shapes, built on the meta device.

    Raises:
        CheckpointError: the path is missing, not a qsep model, unreadable, of a newer format version, or
            malformed (the message names the file, the component and the field).
    """

    def __init__(self, path: str | os.PathLike, builders: Mapping[str, Builder] | None = None):
        self.builders: Mapping[str, Builder] = {} if builders is None else builders
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"model not found: {self.path}")
        if self.path.is_dir():
            self.weights_path = self.path / WEIGHTS_NAME
            cfg_path = self.path / CONFIG_NAME
            if not cfg_path.is_file():
                raise CheckpointError(f"{self.path} is not a qsep model folder: {CONFIG_NAME} is missing")
            if not self.weights_path.is_file():
                raise CheckpointError(f"{self.path} is not a qsep model folder: {WEIGHTS_NAME} is missing")
            self.config = _read_json(cfg_path)
        elif self.path.suffix == ".safetensors":
            self.weights_path = self.path
            meta = self._safe_metadata()
            if "qsep_config" not in meta:
                raise CheckpointError(f"{self.path} carries no qsep_config metadata; it is not a qsep model file")
            try:
                self.config = json.loads(meta["qsep_config"])
            except (json.JSONDecodeError, TypeError) as exc:
                raise CheckpointError(f"{self.path}: its qsep_config metadata is not valid JSON ({exc})") from None
        else:
            raise CheckpointError(
                f"{self.path} is neither a qsep model folder nor a .safetensors model file "
                "(official .ckpt files are converted with `qsep import-official`)"
            )
        self._validate()
        self.components: dict[str, dict[str, Any]] = self.config["components"]
        self.metadata: dict[str, Any] = self.config.get("metadata", {})

    def check(self, *names: str) -> None:
        """Check components ``names`` (default: every one this reader can build) without allocating them: each
        config builds on the meta device and fits the tensor shapes in the safetensors header. Checked once per
        file version and process. (:meth:`build` always checks its component this way first.)

        Raises:
            CheckpointError: a config field of the wrong type or range, or shapes that do not fit (named).
        """
        buildable = [n for n in (names or self.components) if self.kind(n) in self.builders]
        if not buildable:
            return
        try:
            st = [p.stat() for p in {self.path / CONFIG_NAME if self.path.is_dir() else self.path, self.weights_path}]
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        key = (str(self.path.resolve()), tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in st), tuple(buildable))
        if key in _CHECKED:
            return
        with SafetensorsReader(self.weights_path) as f:
            shapes = {k: f.shape(k) for k in f.keys()}
        for name in buildable:
            where, prefix = f"{self.path} [{name}]", f"{name}."
            meta = _build_checked(self.kind(name), self.component_config(name), self.builders, where, meta=True)
            given = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
            check_fit({k: tuple(v.shape) for k, v in meta.state_dict().items()}, given, where)
        _CHECKED.add(key)

    def _safe_metadata(self) -> dict[str, str]:
        try:
            with safe_open(str(self.weights_path), framework="pt") as f:
                return f.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {self.weights_path}: {exc}") from exc

    def _validate(self) -> None:
        c = self.config
        where = self.path / CONFIG_NAME if self.path.is_dir() else self.path
        if not isinstance(c, dict):
            raise CheckpointError(f"{where}: expected a JSON object at the top level, got {type(c).__name__}")
        if c.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a qsep model (format {c.get('format')!r})")
        v = c.get("format_version")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CheckpointError(f"{where}: format_version must be a positive integer, got {v!r}")
        if v > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path}: model format version {v!r} is newer than this qsep understands "
                f"({FORMAT_VERSION}); upgrade qsep"
            )
        known = {"format", "format_version", "qsep_version", "components", "metadata"}
        unknown = sorted(set(c) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown field(s) {unknown}; a qsep model config has {sorted(known)}")
        if not isinstance(c.get("components"), dict) or not c["components"]:
            raise CheckpointError(f"{where}: config has no components (expected an object name -> {{kind, config}})")
        for name, spec in c["components"].items():
            if not name or "." in name:
                raise CheckpointError(f"{where}: invalid component name {name!r}")
            if not isinstance(spec, dict):
                raise CheckpointError(f"{where}: component {name!r} must be an object with kind and config, "
                                      f"got {type(spec).__name__}")
            extra = sorted(set(spec) - {"kind", "config"})
            if extra:
                raise CheckpointError(f"{where}: component {name!r} has unknown field(s) {extra}; expected kind, config")
            if not isinstance(spec.get("kind"), str) or not spec["kind"]:
                raise CheckpointError(f"{where}: component {name!r} has no kind (a string naming its builder)")
            if not isinstance(spec.get("config", None), dict):
                raise CheckpointError(f"{where}: component {name!r} needs a config object, got "
                                      f"{type(spec.get('config')).__name__}")
        if not isinstance(c.get("metadata", {}), dict):
            raise CheckpointError(f"{where}: metadata must be an object, got {type(c['metadata']).__name__}")

    def has(self, name: str) -> bool:
        return name in self.components

    def kind(self, name: str) -> str:
        return self._spec(name)["kind"]

    def component_config(self, name: str) -> dict[str, Any]:
        return self._spec(name)["config"]

    def _spec(self, name: str) -> dict[str, Any]:
        if name not in self.components:
            raise CheckpointError(f"{self.path} has no component {name!r}; it has {sorted(self.components)}")
        return self.components[name]

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The weights of component ``name`` (prefix stripped)."""
        self._spec(name)
        prefix = f"{name}."
        out: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(self.weights_path), framework="pt") as f:
                for k in f.keys():
                    if k.startswith(prefix):
                        out[k[len(prefix):]] = f.get_tensor(k)
        except Exception as exc:
            raise CheckpointError(f"cannot read {self.weights_path}: {exc}") from exc
        return out

    def build(self, name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Build component ``name``, load its weights strictly, and return it in eval mode.

        Tensors are read from the file one at a time into the module's own, so loading needs
        the model's memory plus its largest tensor, not twice the model.

        Raises:
            CheckpointError: no component ``name``, no builder for its kind, or weights that do not
                fit the built module (missing, unexpected and mis-shaped keys named).
        """
        kind, config, where = self.kind(name), self.component_config(name), f"{self.path} [{name}]"
        prefix = f"{name}."
        with SafetensorsReader(self.weights_path) as f:
            keys = {k[len(prefix):]: k for k in f.keys() if k.startswith(prefix)}
            given = {k: f.shape(full) for k, full in keys.items()}
            # the config is checked against the file's shapes on the meta device (nothing allocated), so a
            # config that does not fit its weights (n_fft 1e9, huge channel lists) fails before any memory goes
            meta = _build_checked(kind, config, self.builders, where, meta=True)
            check_fit({k: tuple(v.shape) for k, v in meta.state_dict().items()}, given, where)
            del meta
            module = _build_checked(kind, config, self.builders, where)
            own = module.state_dict()
            with torch.no_grad():
                for k, full in keys.items():
                    own[k].copy_(f.get_tensor(full))
        return module.to(device).eval()

    def size_bytes(self) -> int:
        return self.weights_path.stat().st_size


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsReader:
    """Reads tensors of a ``.safetensors`` file one at a time with plain file reads.

    ``safetensors.safe_open`` memory-maps the file, and every mapped page it touches counts
    in the process's resident memory until the file is closed, so loading a model through it
    peaks at twice the model. This reader holds one tensor at a time: a 670 MB ``zsass``
    separator loads at 670 MB plus its largest tensor. Errors name the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # the safetensors library validates the header first (types, dtypes, shapes, offsets contiguous,
        # in range and not overlapping); only a header it accepts is then read here
        try:
            with safe_open(str(self.path), framework="pt") as f:
                names = set(f.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"cannot read {self.path}: not a valid safetensors file ({exc})") from None
        try:
            self._file = self.path.open("rb")
            size = self.path.stat().st_size
            n = int.from_bytes(self._file.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise ValueError("bad header length")
            header = json.loads(self._file.read(n))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (OSError, ValueError) as exc:
            if hasattr(self, "_file"):
                self._file.close()
            raise CheckpointError(f"cannot read {self.path}: not a valid safetensors file ({exc})") from None
        self._data = 8 + n
        header.pop("__metadata__", None)
        self._entries: dict[str, dict[str, Any]] = header
        if set(header) != names:
            self._file.close()
            raise CheckpointError(f"cannot read {self.path}: its header lists tensors safetensors does not")
        for key, e in header.items():
            ok = isinstance(e, dict) and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
            begin, end = e["data_offsets"] if ok else (0, -1)
            dtype = _DTYPES.get(e.get("dtype")) if ok else None
            shape = e.get("shape") if ok else None
            ok = ok and dtype is not None and isinstance(shape, list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
            ) and all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)) and 0 <= begin <= end
            expected = _numel(shape) * torch.empty((), dtype=dtype).element_size() if ok else None
            if not ok or end - begin != expected or self._data + end > size:
                self._file.close()
                raise CheckpointError(f"cannot read {self.path}: tensor {key!r} has a bad entry {e}")

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def get_tensor(self, key: str) -> torch.Tensor:
        e = self._entries[key]
        begin, end = e["data_offsets"]
        buf = bytearray(end - begin)
        self._file.seek(self._data + begin)
        if self._file.readinto(buf) != len(buf):
            raise CheckpointError(f"cannot read {self.path}: the file ends inside tensor {key!r}")
        if not buf:
            return torch.empty(self.shape(key), dtype=_DTYPES[e["dtype"]])
        return torch.frombuffer(buf, dtype=_DTYPES[e["dtype"]]).reshape(self.shape(key))


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _read_json(path: Path) -> Any:
    """``path`` parsed as UTF-8 JSON, or a :class:`CheckpointError` saying what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start}); it is not a qsep model config") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def _build_checked(kind: str, config: Mapping[str, Any], builders: Mapping[str, Builder], where: str,
                   meta: bool = False) -> torch.nn.Module:
    """:func:`build_component`, with any failure of the builder on this config as a :class:`CheckpointError`."""
    try:
        if meta:
            with torch.device("meta"):
                return build_component(kind, config, builders)
        return build_component(kind, config, builders)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, IndexError, RuntimeError,
            NotImplementedError) as exc:
        raise CheckpointError(f"{where}: the {kind!r} config is invalid: {type(exc).__name__}: {exc}") from None


def build_component(kind: str, config: Mapping[str, Any], builders: Mapping[str, Builder]) -> torch.nn.Module:
    """Instantiate the module of ``kind`` from its config dict with ``builders[kind]`` (weights not loaded).

    Raises:
        CheckpointError: ``kind`` is not in ``builders``.
    """
    target = builders.get(kind)
    if target is None:
        raise CheckpointError(f"unknown component kind {kind!r}; known: {sorted(builders)}")
    if callable(target):
        return target(dict(config))
    mod_name, fn_name = target.split(":")
    fn: Any = importlib.import_module(mod_name)
    for part in fn_name.split("."):
        fn = getattr(fn, part)
    return fn(dict(config))


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Load ``state_dict`` into ``module`` strictly.

    Raises:
        CheckpointError: keys are missing, unexpected or mis-shaped (each named, with ``what``).
    """
    check_fit({k: tuple(v.shape) for k, v in module.state_dict().items()},
              {k: tuple(v.shape) for k, v in state_dict.items()}, what)
    module.load_state_dict(dict(state_dict), strict=True)


def check_fit(own: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], what: str = "model") -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or mis-shaped key (key -> shape maps)."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(
        f"{k}: file {given[k]} vs model {own[k]}" for k in set(own) & set(given) if tuple(own[k]) != tuple(given[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise CheckpointError(f"{what} does not fit its architecture: " + "; ".join(problems))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MB blocks (provenance of imported checkpoints)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _short(items: list[str], n: int = 12) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more
