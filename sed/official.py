"""Import of the official HTS-AT checkpoints (RetroCirce/HTS-Audio-Transformer and the ZS-ASS ST-SED).

The published files are PyTorch-Lightning checkpoints whose ``state_dict`` holds the
``HTSAT_Swin_Transformer`` under a prefix: ``sed_model.`` in ``HTSAT_AudioSet_Saved_*.ckpt``
and ``htsat_audioset_2048d.ckpt``, ``at_model.sed_model.`` inside ``zeroshot_asp_*.ckpt``.

Conversion (:func:`convert_htsat_state_dict`) strips the prefix and renames nothing else
(qsep's :class:`sed.htsat.HTSAT` uses the official names) except
``logmel_extractor.melW`` -> ``mel.melW``. Before dropping the frozen torchlibrosa STFT kernels
it checks them against the DFT that ``torch.stft`` computes, and it checks ``melW`` against
qsep's Slaney mel bank: a checkpoint with another front end is refused. The computed buffers
(``relative_position_index``, ``attn_mask``) must equal what qsep builds. ``head.*`` (unused by
the token-semantic model) is dropped. Any other unknown or missing key is an error naming it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from qsep_core.checkpoint import CheckpointError, Component, file_sha256, save_model
from qsep_core.config import to_dict
from sed import COMPONENT_BUILDERS
from sed.config import htsat_config
from sed.features import stft_kernels

__all__ = [
    "OfficialCheckpointError",
    "read_official_checkpoint",
    "convert_htsat_state_dict",
    "import_htsat",
    "import_zsass_sed",
    "select_prefix",
    "HTSAT_PREFIX",
    "ZSASS_SED_PREFIX",
    "COMPONENT",
]

HTSAT_PREFIX = "sed_model."
ZSASS_SED_PREFIX = "at_model.sed_model."
#: component name of the detector in a qsep model folder
COMPONENT = "detector"

_STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")
_MEL_KEY = "logmel_extractor.melW"
_DROPPED = ("head.weight", "head.bias")
#: max |difference| accepted between stored frozen kernels and qsep's (official kernels are 1 ulp away)
KERNEL_ATOL = 1e-6


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint cannot be read or does not fit the expected model."""


def read_official_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint (Lightning ``state_dict`` unwrapped).

    Reads with ``torch.load(weights_only=True)``, which cannot run code. If the file needs
    full unpickling, this stops with an explanation unless ``trust_pickle`` is True.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses a file for two reasons: it names Python objects beyond tensors (a real
        # checkpoint that needs full unpickling), or it is not a pickle at all (random bytes, a truncated
        # or foreign file). Only the first is helped by --trust-pickle.
        if "Unsupported global" not in str(exc):
            raise OfficialCheckpointError(
                f"cannot read {path} as a PyTorch checkpoint: the file is corrupt, truncated or not a "
                f"checkpoint ({_last_line(exc)}); re-download it"
            ) from None
        if not trust_pickle:
            raise OfficialCheckpointError(
                f"{path} cannot be read safely: it contains Python objects beyond tensors, and loading them "
                "means running pickle, which can execute arbitrary code from the file. Only if you trust where "
                f"this file comes from, re-run with --trust-pickle (trust_pickle=True). Details: {_last_line(exc)}"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure of full unpickling is a bad file
            raise OfficialCheckpointError(
                f"cannot read {path} even with --trust-pickle: {type(exc2).__name__}: {exc2}"
            ) from exc2
    except Exception as exc:  # truncated file, not a torch file at all...
        raise OfficialCheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{path}: expected a state_dict (mapping of tensors), got {type(obj).__name__}")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise OfficialCheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    return dict(obj)


def _last_line(exc: BaseException) -> str:
    """The informative line of torch's long unpickling messages (the one naming the operand or global)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if ln.startswith(("Unsupported", "WeightsUnpickler"))]
    return (named or lines or [type(exc).__name__])[-1][:300]


def _check_close(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if tuple(got.shape) != tuple(want.shape):
        raise OfficialCheckpointError(
            f"{name} has shape {tuple(got.shape)}, qsep expects {tuple(want.shape)}: {what}"
        )
    diff = (got.to(torch.float64) - want.to(torch.float64)).abs().max().item()
    if not diff <= KERNEL_ATOL:
        raise OfficialCheckpointError(
            f"{name} differs from what qsep computes by up to {diff:.3g} (limit {KERNEL_ATOL:g}): {what}; "
            "this checkpoint's front end is not the one qsep reproduces, refusing to import it"
        )


def convert_htsat_state_dict(state_dict: Mapping[str, torch.Tensor], preset: str, prefix: str) -> Component:
    """Official HTS-AT tensors under ``prefix`` -> a qsep ``Component`` of kind ``"htsat"``.

    Keys outside ``prefix`` are ignored (a ZS-ASS checkpoint also holds the separator).
    Raises :class:`OfficialCheckpointError` naming unknown, missing or mis-shaped keys, and
    when the frozen front end or the computed buffers differ from qsep's.
    """
    from sed.htsat import computed_buffers

    cfg = htsat_config(preset)
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        sample = sorted(state_dict)[:5]
        raise OfficialCheckpointError(f"no key starts with {prefix!r} (first keys: {sample}); is this the right checkpoint?")
    ref_real, ref_imag = stft_kernels(cfg)
    for key, ref in zip(_STFT_KEYS, (ref_real, ref_imag)):
        if key not in sub:
            raise OfficialCheckpointError(f"missing frozen STFT kernel {prefix}{key}")
        _check_close(prefix + key, sub.pop(key), ref, f"expected the {cfg.n_fft}-point periodic-{cfg.window} DFT")
    own, buffers = computed_buffers(cfg)
    if _MEL_KEY not in sub:
        raise OfficialCheckpointError(f"missing frozen mel matrix {prefix}{_MEL_KEY}")
    mel = sub.pop(_MEL_KEY)
    _check_close(
        prefix + _MEL_KEY, mel, buffers["mel.melW"],
        f"expected the {cfg.mel_scale} mel bank ({cfg.n_mels} bands, {cfg.fmin:g}-{cfg.fmax:g} Hz, norm {cfg.mel_norm})",
    )
    for key in _DROPPED:
        sub.pop(key, None)
    sub["mel.melW"] = mel.to(torch.float32)
    missing = sorted(set(own) - set(sub))
    unknown = sorted(set(sub) - set(own))
    shapes = sorted(
        f"{prefix}{k}: checkpoint {tuple(sub[k].shape)} vs preset {preset!r} {own[k][0]}"
        for k in set(own) & set(sub) if own[k][0] != tuple(sub[k].shape)
    )
    problems = []
    if unknown:
        problems.append("unknown keys " + ", ".join(prefix + k for k in unknown))
    if missing:
        problems.append("missing keys " + ", ".join(prefix + k for k in missing))
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes))
    if problems:
        raise OfficialCheckpointError(f"checkpoint does not fit the {preset!r} HTS-AT: " + " | ".join(problems))
    for k, v in buffers.items():
        if k != "mel.melW" and not torch.equal(sub[k].to(v.dtype), v):
            raise OfficialCheckpointError(f"{prefix}{k} differs from the buffer qsep computes; refusing to import")
    out = {k: sub[k].to(own[k][1]).contiguous() for k in own}
    return Component("htsat", to_dict(cfg), out)


def select_prefix(state_dict: Mapping[str, Any], prefixes: tuple[str, ...], what: str = "checkpoint") -> str:
    """The first of ``prefixes`` that keys of ``state_dict`` start with.

    Under ``sed_model.`` (an HTS-AT checkpoint) every key must carry the prefix; under
    ``at_model.sed_model.`` the other keys are the ZS-ASS separator's and are left alone.
    """
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
        raise OfficialCheckpointError(
            f"{what}: no key starts with any of {list(prefixes)} (first keys: {sorted(state_dict)[:5]}); "
            "is this an official HTS-AT / ZS-ASS checkpoint?"
        )
    outside = sorted(k for k in state_dict if not k.startswith(prefix))
    if outside and prefix == HTSAT_PREFIX:
        raise OfficialCheckpointError(f"{what}: unknown keys outside {prefix!r}: {outside[:10]}")
    return prefix




def _import(ckpt: str | os.PathLike, out_dir: str | os.PathLike, preset: str, prefixes: tuple[str, ...],
            source: str, trust_pickle: bool, overwrite: bool) -> Path:
    ckpt = Path(ckpt)
    sd = read_official_checkpoint(ckpt, trust_pickle=trust_pickle)
    prefix = select_prefix(sd, prefixes, str(ckpt))
    comp = convert_htsat_state_dict(sd, preset, prefix)
    metadata: dict[str, Any] = {
        "task": "sound_event_detection",
        "preset": preset,
        "class_names": None,  # the AudioSet class list is not shipped; outputs are class indices
        "source": source,
        "source_checkpoint": ckpt.name,
        "source_sha256": file_sha256(ckpt),
        "source_prefix": prefix,
    }
    return save_model(out_dir, {COMPONENT: comp}, metadata=metadata, overwrite=overwrite, kinds=COMPONENT_BUILDERS)


def import_htsat(ckpt: str | os.PathLike, out_dir: str | os.PathLike, trust_pickle: bool = False,
                 overwrite: bool = False) -> Path:
    """Official AudioSet HTS-AT checkpoint (``sed_model.*``) -> qsep model folder ``out_dir``."""
    return _import(ckpt, out_dir, "audioset", (HTSAT_PREFIX,), "RetroCirce/HTS-Audio-Transformer",
                   trust_pickle, overwrite)


def import_zsass_sed(ckpt: str | os.PathLike, out_dir: str | os.PathLike, trust_pickle: bool = False,
                     overwrite: bool = False) -> Path:
    """The 2048-d ST-SED of ZS-ASS -> qsep model folder ``out_dir``.

    Accepts ``zeroshot_asp_*.ckpt`` (keys ``at_model.sed_model.*``; the separator keys are
    ignored here, ``qsep import-official zsass`` imports them) and ``htsat_audioset_2048d.ckpt``
    (keys ``sed_model.*``).
    """
    return _import(ckpt, out_dir, "zsass_2048d", (ZSASS_SED_PREFIX, HTSAT_PREFIX),
                   "RetroCirce/Zero_Shot_Audio_Source_Separation", trust_pickle, overwrite)
