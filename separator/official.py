"""Import of the official ZS-ASS checkpoints (``zeroshot_asp_full.ckpt``, ``zeroshot_asp_held_out.ckpt``).

An official checkpoint is a Lightning ``.ckpt`` of ``ZeroShotASP``: the separator
keys are unprefixed (``encoder_block1.conv_block.conv1.weight`` ...), the
embedded 2048-d ST-SED query encoder sits under ``at_model.sed_model.``. The
importer writes a qsep model folder with two components:

* ``separator`` (kind ``query_unet``, preset ``zsass``);
* ``audio_encoder`` (kind ``htsat``, preset ``zsass_2048d``), so audio-example
  queries work with the folder directly.

The frozen torchlibrosa STFT/ISTFT kernels of the separator (``stft.*``,
``istft.*``) are checked against the periodic-Hann DFT that :func:`torch.stft`
computes, then dropped. Unknown and missing keys are errors that name them.
Reading the file is delegated to :func:`sed.official.read_official_checkpoint`
(``weights_only`` unless ``trust_pickle``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch

from qsep_core.config import to_dict
from qsep_core.dsp import StftConfig, dft_kernels, idft_kernels
from separator.checkpoint import CheckpointError, Component, file_sha256, save_model
from separator.models import QueryUNet, preset

__all__ = [
    "ZSASS_SEPARATOR_PRESET",
    "ZSASS_ENCODER_PRESET",
    "AT_MODEL_PREFIX",
    "map_separator_key",
    "check_frozen_kernels",
    "convert_separator_state_dict",
    "import_zsass",
]

ZSASS_SEPARATOR_PRESET = "zsass"
ZSASS_ENCODER_PRESET = "zsass_2048d"
AT_MODEL_PREFIX = "at_model.sed_model."

#: the separator's frozen torchlibrosa front-end tensors (checked, then dropped)
FROZEN_KERNELS = (
    "stft.conv_real.weight", "stft.conv_imag.weight",
    "istft.conv_real.weight", "istft.conv_imag.weight", "istft.ola_window",
)

# official sub-module names -> ours (inside a conv block)
_BLOCK_PARTS = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "emb1": "cond1.proj", "emb2": "cond2.proj"}
_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^bn0\.(.+)$"), "input_norm.{0}"),
    (re.compile(r"^encoder_block(\d+)\.conv_block\.(conv1|bn1|conv2|bn2|emb1|emb2)\.(.+)$"), "encoders.{i0}.blocks.0.{p1}.{2}"),
    (re.compile(r"^conv_block7\.(conv1|bn1|conv2|bn2|emb1|emb2)\.(.+)$"), "bottleneck.0.{p0}.{1}"),
    (re.compile(r"^decoder_block(\d+)\.conv1\.(.+)$"), "decoders.{i0}.up.{1}"),
    (re.compile(r"^decoder_block(\d+)\.bn1\.(.+)$"), "decoders.{i0}.up_bn.{1}"),
    (re.compile(r"^decoder_block(\d+)\.emb1\.(.+)$"), "decoders.{i0}.up_cond.proj.{1}"),
    (re.compile(r"^decoder_block(\d+)\.conv_block2\.(conv1|bn1|conv2|bn2|emb1|emb2)\.(.+)$"), "decoders.{i0}.blocks.0.{p1}.{2}"),
    (re.compile(r"^after_conv_block1\.(conv1|bn1|conv2|bn2|emb1|emb2)\.(.+)$"), "after.0.{p0}.{1}"),
    (re.compile(r"^after_conv2\.(.+)$"), "head.{0}"),
]


def map_separator_key(key: str) -> str | None:
    """Our :class:`QueryUNet` parameter name for an official separator key (None: not a separator key)."""
    for pat, fmt in _PATTERNS:
        m = pat.match(key)
        if m is None:
            continue
        g = m.groups()
        fields: dict[str, str] = {}
        for j, v in enumerate(g):
            if v.isdigit():
                fields[f"i{j}"] = str(int(v) - 1)  # official blocks count from 1
            if v in _BLOCK_PARTS:
                fields[f"p{j}"] = _BLOCK_PARTS[v]
        return fmt.format(*g, **fields)
    return None


def _expected_kernel(key: str, n_fft: int) -> torch.Tensor:
    """The DFT tensor ``key`` must hold for :func:`torch.stft` / :func:`torch.istft` to be equivalent (float64)."""
    cfg = StftConfig(n_fft=n_fft)  # periodic Hann, window = n_fft
    if key.startswith("stft."):
        real, imag = dft_kernels(cfg)  # (bins, 1, n_fft)
    else:
        real, imag, ola = idft_kernels(cfg)  # (n_fft, n_fft, 1)
        if key == "istft.ola_window":
            return ola
    return real if key.endswith("real.weight") else imag


def check_frozen_kernels(state_dict: Mapping[str, torch.Tensor], n_fft: int, atol: float = 1e-6) -> list[str]:
    """Check the separator's stored STFT/ISTFT kernels against the periodic-Hann DFT.

    Returns the kernel keys that were present and checked. Raises
    :class:`CheckpointError` naming any kernel whose shape or values differ (then
    the checkpoint was not made with the STFT qsep computes, and importing it
    would silently change the model).
    """
    checked = []
    for key in FROZEN_KERNELS:
        if key not in state_dict:
            continue
        got = state_dict[key]
        want = _expected_kernel(key, n_fft)
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"frozen kernel {key} has shape {tuple(got.shape)}, expected {tuple(want.shape)} for n_fft {n_fft}")
        err = float((got.double() - want).abs().max())
        if err > atol:
            raise CheckpointError(
                f"frozen kernel {key} differs from the periodic-Hann DFT (max |diff| {err:.3g} > {atol}); "
                "this checkpoint does not use the STFT qsep computes with torch.stft"
            )
        checked.append(key)
    return checked


def convert_separator_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Component:
    """The ``separator`` component (kind ``query_unet``, preset ``zsass``) from official separator keys.

    Args:
        state_dict: official keys; ``at_model.*`` keys are ignored here (the ST-SED
            is converted separately), frozen STFT/ISTFT kernels are checked and dropped.

    Raises:
        CheckpointError: unknown, missing or mis-shaped keys (named), or frozen kernels that differ.
    """
    cfg = preset(ZSASS_SEPARATOR_PRESET)
    model = QueryUNet(cfg)
    own = model.state_dict()
    sep = {k: v for k, v in state_dict.items() if not k.startswith("at_model.")}
    check_frozen_kernels(sep, cfg.n_fft)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sep.items():
        if key in FROZEN_KERNELS:
            continue
        ours = map_separator_key(key)
        if ours is None or ours not in own:
            unknown.append(key)
            continue
        out[ours] = value
    missing = sorted(k for k in own if k not in out)
    shapes = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in out.items() if v.shape != own[k].shape
    )
    problems = []
    if unknown:
        problems.append(f"unknown separator keys {sorted(unknown)}")
    if missing:
        problems.append(f"missing separator tensors (qsep names) {missing}")
    if shapes:
        problems.append(f"shape mismatches {shapes}")
    if problems:
        raise CheckpointError("official ZS-ASS separator does not fit the zsass preset: " + "; ".join(problems))
    ordered = {k: out[k].to(own[k].dtype) for k in own}
    return Component("query_unet", to_dict(cfg), ordered)




def import_zsass(
    ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert an official ZS-ASS checkpoint into a qsep model folder.

    Args:
        ckpt: ``zeroshot_asp_full.ckpt`` / ``zeroshot_asp_held_out.ckpt`` (Lightning).
        out_dir: destination model folder.
        trust_pickle: allow full unpickling if ``weights_only`` loading fails
            (only for files from a source you trust).
        overwrite: replace an existing ``out_dir``.

    Returns:
        the model folder, with components ``separator`` and ``audio_encoder``.
    """
    from sed.official import convert_htsat_state_dict, read_official_checkpoint

    ckpt = Path(ckpt)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir} exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    sd = read_official_checkpoint(ckpt, trust_pickle=trust_pickle)
    stray = sorted(k for k in sd if k.startswith("at_model.") and not k.startswith(AT_MODEL_PREFIX))
    if stray:
        raise CheckpointError(f"{ckpt}: unknown keys under at_model. (expected {AT_MODEL_PREFIX}*): {stray[:12]}")
    if not any(k.startswith(AT_MODEL_PREFIX) for k in sd):
        raise CheckpointError(
            f"{ckpt} holds no '{AT_MODEL_PREFIX}*' keys, so it carries no query encoder; "
            "is it an official zeroshot_asp_*.ckpt? (an htsat_audioset_2048d.ckpt is imported with "
            "`qsep import-official zsass-sed`)"
        )
    separator = convert_separator_state_dict(sd)
    encoder_sd = {k: v for k, v in sd.items() if k.startswith(AT_MODEL_PREFIX)}
    del sd
    encoder = convert_htsat_state_dict(encoder_sd, preset=ZSASS_ENCODER_PRESET, prefix=AT_MODEL_PREFIX)
    del encoder_sd
    metadata = {
        "source": "official ZS-ASS checkpoint (RetroCirce/Zero_Shot_Audio_Source_Separation)",
        "source_checkpoint": ckpt.name,
        "source_sha256": file_sha256(ckpt),
        "separator_preset": ZSASS_SEPARATOR_PRESET,
        "audio_encoder_preset": ZSASS_ENCODER_PRESET,
        "query_types": ["audio", "embedding"],
    }
    return save_model(out_dir, {"separator": separator, "audio_encoder": encoder}, metadata=metadata, overwrite=overwrite)
