"""STFT helpers with config-driven parameters; every function accepts any leading dims."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StftConfig", "stft", "istft", "magnitude", "magphase", "window"]


@dataclass(frozen=True)
class StftConfig:
    """Short-time Fourier transform settings.

    Attributes:
        n_fft: FFT size; ``n_fft // 2 + 1`` frequency bins.
        hop_length: hop between frames in samples.
        win_length: window length (None: ``n_fft``).
        window: ``"hann"`` or ``"hamming"`` (or ``"rect"``).
        periodic: periodic (DFT-even) window, as ``scipy.signal.get_window`` and librosa use.
        center: pad ``n_fft // 2`` samples on both sides so frame ``k`` is centred at ``k * hop``.
        pad_mode: padding used when ``center`` (``"reflect"``, ``"constant"``, ...).
    """

    n_fft: int = 2048
    hop_length: int = 320
    win_length: int | None = None
    window: str = "hann"
    periodic: bool = True
    center: bool = True
    pad_mode: str = "reflect"

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, length: int) -> int:
        """Number of frames for a signal of ``length`` samples."""
        if self.center:
            return 1 + length // self.hop_length
        return 1 + (length - self.n_fft) // self.hop_length


_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "rect": lambda n, periodic=True, dtype=None, device=None: torch.ones(n, dtype=dtype, device=device),
}


def window(cfg: StftConfig, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The analysis/synthesis window of ``cfg`` as a 1-d tensor."""
    try:
        make = _WINDOWS[cfg.window]
    except KeyError:
        raise ValueError(f"unknown window {cfg.window!r}; choose one of {sorted(_WINDOWS)}") from None
    return make(cfg.win_length or cfg.n_fft, periodic=cfg.periodic, dtype=dtype, device=device)


def stft(x: torch.Tensor, cfg: StftConfig) -> torch.Tensor:
    """Complex STFT.

    Args:
        x: ``(..., time)`` real signal.

    Returns:
        ``(..., n_bins, frames)`` complex tensor.
    """
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # (batch, time)
    spec = torch.stft(
        flat, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window=window(cfg, flat.dtype, flat.device), center=cfg.center, pad_mode=cfg.pad_mode,
        normalized=False, onesided=True, return_complex=True,
    )  # (batch, bins, frames)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, cfg: StftConfig, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`.

    Args:
        spec: ``(..., n_bins, frames)`` complex.
        length: output length in samples (the original signal's length).

    Returns:
        ``(..., length)`` real signal.
    """
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])  # (batch, bins, frames)
    real_dtype = flat.real.dtype
    wav = torch.istft(
        flat, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window=window(cfg, real_dtype, flat.device), center=cfg.center, normalized=False,
        onesided=True, length=length,
    )  # (batch, length)
    return wav.reshape(*lead, length)


def magnitude(spec: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``sqrt(re^2 + im^2 + eps)``; with ``eps=0`` this is ``spec.abs()``."""
    if eps == 0.0:
        return spec.abs()
    return torch.sqrt(spec.real**2 + spec.imag**2 + eps)


def magphase(spec: torch.Tensor, floor: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Magnitude and unit phase ``(cos, sin)`` of a complex spectrogram.

    The phase is ``re / max(|X|, floor)``, ``im / max(|X|, floor)``, so silent
    bins get a zero phase vector instead of NaN.

    Returns:
        ``(mag, cos, sin)``, each shaped like ``spec``.
    """
    mag = spec.abs()
    denom = mag.clamp(min=floor)
    return mag, spec.real / denom, spec.imag / denom
