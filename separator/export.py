"""ONNX export of the separator (``qsep export --onnx``) and a runner for the exported file.

What is inside the graph and what is outside:

* Inside: :meth:`QueryUNet.forward_spectrum <separator.models.QueryUNet.forward_spectrum>`, everything between the
  STFT and the ISTFT on real tensors: magnitude, condition normalisation (``cond_norm``), the conditioned U-Net, the
  magnitude mask and (``complex`` masks) the phase rotation. Inputs ``spec_real``, ``spec_imag``
  ``(batch, 1, frames, bins)`` and ``condition`` ``(batch, cond_dim)``; outputs ``target_real``, ``target_imag``
  ``(batch, 1, frames, bins)``. ``batch`` and ``frames`` are dynamic axes.
* Outside: :func:`~separator.models.unet.analyze` (level normalisation, STFT) and
  :func:`~separator.models.unet.synthesize` (ISTFT, level restored) — the same functions PyTorch's forward uses.
  ONNX has an STFT operator but no inverse STFT, and complex tensors are not ONNX types; an ISTFT rebuilt from
  convolutions inside the graph would be a second copy of qsep's one ISTFT. The graph's metadata
  (``qsep.config``) holds the model config, so :class:`OnnxSeparator` (or any other runtime, with a Hann STFT of
  the stated sizes) can do these two steps.

The export checks itself: onnxruntime's waveform is compared with PyTorch's on random input, and a difference above
:data:`TOLERANCE` fails the export before anything is written.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qsep_core.atomic import AtomicPath, write_error_message
from qsep_core.config import from_dict, to_dict
from qsep_core.extras import require
from separator.models.config import QueryUNetConfig
from separator.models.unet import QueryUNet, analyze, synthesize

__all__ = ["export_onnx", "ExportReport", "ExportError", "OnnxSeparator", "TOLERANCE", "MIN_OPSET", "DEFAULT_OPSET",
           "INPUT_NAMES", "OUTPUT_NAMES"]

#: largest max-abs difference on the waveform between onnxruntime and PyTorch that an export accepts
TOLERANCE = 1e-4
#: opsets the exporter (``torch.onnx.export(dynamo=True)``) supports
MIN_OPSET = 18
DEFAULT_OPSET = 18
INPUT_NAMES = ("spec_real", "spec_imag", "condition")
OUTPUT_NAMES = ("target_real", "target_imag")
#: key of the model config in the ONNX file's metadata
CONFIG_KEY = "qsep.config"


class ExportError(ValueError):
    """The export cannot be made (bad option, output exists, ONNX disagrees with PyTorch...)."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: the file, its size, the opset and the check against PyTorch."""

    path: Path
    size_mb: float
    opset: int
    max_abs_diff: float
    check_seconds: float


class _SpectralGraph(nn.Module):
    """The exported module: :meth:`QueryUNet.forward_spectrum` with tuple outputs."""

    def __init__(self, model: QueryUNet):
        super().__init__()
        self.model = model

    def forward(self, spec_real: torch.Tensor, spec_imag: torch.Tensor, condition: torch.Tensor):
        out = self.model.forward_spectrum(spec_real, spec_imag, condition)
        return out["target_real"], out["target_imag"]


def _session(path: str | os.PathLike, threads: int | None = None):
    ort = require("onnxruntime", "onnx", "running an exported ONNX model")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


class OnnxSeparator:
    """Run an exported separator with onnxruntime: STFT and ISTFT in PyTorch (qsep's own), the network in ONNX.

    Args:
        path: the ``.onnx`` file ``qsep export --onnx`` wrote.
        threads: onnxruntime's intra-op threads (None: onnxruntime's default, all cores).

    Raises:
        MissingExtraError: onnxruntime is not installed (the ``onnx`` extra).
        ExportError: the file is not a qsep export (no ``qsep.config`` metadata).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.session = _session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in meta:
            raise ExportError(f"{path} is not a qsep ONNX export (its metadata has no {CONFIG_KEY!r})")
        self.config: QueryUNetConfig = from_dict(QueryUNetConfig, json.loads(meta[CONFIG_KEY]))

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    def __call__(self, mixture: torch.Tensor | np.ndarray, condition: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Separate: ``mixture (batch, 1, time)`` at :attr:`sample_rate`, ``condition (batch, cond_dim)`` ->
        ``(batch, 1, time)`` float32, as :meth:`QueryUNet.forward` returns it.

        Raises:
            ValueError: a shape does not match.
        """
        mixture = torch.as_tensor(mixture, dtype=torch.float32)
        condition = torch.as_tensor(condition, dtype=torch.float32)
        if mixture.dim() != 3 or mixture.shape[1] != 1:
            raise ValueError(f"mixture must be (batch, 1, time), got {tuple(mixture.shape)}")
        if condition.shape != (mixture.shape[0], self.config.cond_dim):
            raise ValueError(f"condition must be (batch={mixture.shape[0]}, cond_dim={self.config.cond_dim}), "
                             f"got {tuple(condition.shape)}")
        spec, gain, length = analyze(mixture, self.config)  # (batch, 1, frames, bins) complex
        feeds = {"spec_real": spec.real.contiguous().numpy(), "spec_imag": spec.imag.contiguous().numpy(),
                 "condition": condition.numpy()}
        real, imag = self.session.run(list(OUTPUT_NAMES), feeds)
        return synthesize(torch.complex(torch.from_numpy(real), torch.from_numpy(imag)), gain, self.config, length)


def _check_opset(opset: int) -> int:
    onnx = require("onnx", "onnx", "ONNX export")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"--opset {opset} is not supported: choose {MIN_OPSET}..{newest} (torch's exporter needs "
                          f"at least {MIN_OPSET}; the installed onnx knows up to {newest})")
    return opset


def _random_input(cfg: QueryUNetConfig, seconds: float, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mixture = 0.1 * torch.randn(batch, 1, int(seconds * cfg.sample_rate), generator=g)
    return mixture, torch.randn(batch, cfg.cond_dim, generator=g)


def compare(model: QueryUNet, path: str | os.PathLike, seconds: float = 3.0, seed: int = 0) -> float:
    """Max abs difference between ``model``'s waveform and the ONNX file's, on random input (2 x ``seconds``)."""
    mixture, condition = _random_input(model.config, seconds, seed=seed)
    with torch.no_grad():
        ref = model(mixture, condition)
    got = OnnxSeparator(path)(mixture, condition)
    return float((got - ref).abs().max())


@contextlib.contextmanager
def _one_line_errors(what: str):
    """Turn an exporter / onnxruntime failure (pages of traceback) into an :class:`ExportError` with its first line."""
    try:
        yield
    except (ExportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ExportError(f"{what} failed: {first}") from exc


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that do not concern qsep (optional torchvision ops it skips, deprecations of
    torch internals): they are warnings and log records, not errors; errors still raise."""
    import logging
    import warnings

    lg = logging.getLogger("torch.onnx")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        lg.setLevel(level)


def export_onnx(model: str | os.PathLike | QueryUNet | None, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                overwrite: bool = False, check_seconds: float = 3.0) -> ExportReport:
    """Export a separator to ONNX (see the module doc for what the graph holds), checked against PyTorch.

    Args:
        model: a model folder / name / hub id as :func:`qsep_core.hub.resolve_model` takes it (None: the shipped
            model), or a :class:`QueryUNet`.
        out: the ``.onnx`` file to write (atomically: nothing appears unless the export and its check succeed).
        opset: ONNX opset (:data:`MIN_OPSET` .. the installed onnx's newest).
        overwrite: replace an existing ``out``.
        check_seconds: length of the random input of the check (2 mixtures).

    Returns:
        An :class:`ExportReport`.

    Raises:
        CheckpointError: the model is not found or holds no separator.
        MissingExtraError: onnx / onnxruntime / onnxscript are not installed (the ``onnx`` extra).
        ExportError: bad ``opset``, ``out`` exists without ``overwrite``, its folder is missing or not writable, or
            onnxruntime's waveform differs from PyTorch's by more than :data:`TOLERANCE`.
    """
    require("onnxscript", "onnx", "ONNX export")
    require("onnxruntime", "onnx", "checking an ONNX export")
    onnx = require("onnx", "onnx", "ONNX export")
    _check_opset(opset)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give the path of the .onnx file to write")
    if not isinstance(model, QueryUNet):
        from separator.api import Separator

        folder = Separator.open_model(model)
        model = folder.build("separator")
    model = model.float().eval()
    cfg = model.config
    spec, _, _ = analyze(_random_input(cfg, 1.0)[0], cfg)
    example = (spec.real.contiguous(), spec.imag.contiguous(), torch.randn(spec.shape[0], cfg.cond_dim))
    dyn = torch.export.Dim.DYNAMIC
    try:
        tmp_writer = AtomicPath(out, overwrite=overwrite)
    except FileExistsError:
        raise ExportError(f"{out} exists; pass --overwrite to replace it") from None
    except (FileNotFoundError, OSError) as exc:
        raise ExportError(str(exc) if isinstance(exc, FileNotFoundError) else write_error_message(out, exc)) from None
    try:
        with torch.no_grad(), _one_line_errors(f"exporting to ONNX (opset {opset})"), _quiet_exporter():
            program = torch.onnx.export(
                _SpectralGraph(model).eval(), example, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: dyn, 2: dyn}, {0: dyn, 2: dyn}, {0: dyn}), opset_version=opset, dynamo=True,
                verbose=False,
            )
        proto = program.model_proto
        meta = {CONFIG_KEY: json.dumps(to_dict(cfg)), "qsep.inputs": "spec_real, spec_imag: (batch, 1, frames, bins) "
                "STFT of the level-normalised mixture; condition: (batch, cond_dim)",
                "qsep.outputs": "target_real, target_imag: (batch, 1, frames, bins) target spectrum"}
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        try:
            onnx.save(proto, os.fspath(tmp_writer.tmp))
        except OSError as exc:
            raise ExportError(write_error_message(out, exc)) from None
        with _one_line_errors(f"running the exported graph in onnxruntime (opset {opset})"):
            diff = compare(model, tmp_writer.tmp, check_seconds)
        if not diff <= TOLERANCE:
            raise ExportError(f"the ONNX graph differs from PyTorch by {diff:.3g} (max abs on the waveform; "
                              f"tolerance {TOLERANCE:g}); nothing was written")
        size = tmp_writer.tmp.stat().st_size / 1e6
        tmp_writer.commit()
    except BaseException:
        tmp_writer.abort()
        raise
    return ExportReport(out, size, opset, diff, check_seconds)
