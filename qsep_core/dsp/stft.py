"""The one STFT of qsep (separators, HTS-AT's front end, evaluation); every function accepts any leading dims.

:class:`StftConfig` names the settings once; the model configs (``HTSATConfig``,
``QueryUNetConfig``) carry fields of the same names and return them as an ``StftConfig``
from their ``stft`` property. :func:`dft_kernels` / :func:`idft_kernels` give the DFT that
:func:`torch.stft` / :func:`torch.istft` apply, in the conv layout of torchlibrosa, to check
the frozen front-end kernels of official checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qsep_core.constants import HOP_LENGTH, N_FFT

__all__ = ["StftConfig", "stft", "istft", "magnitude", "magphase", "window", "dft_kernels", "idft_kernels", "WINDOWS"]


@dataclass(frozen=True)
class StftConfig:
    """Short-time Fourier transform settings.

    Attributes:
        n_fft: FFT size in samples; ``n_fft // 2 + 1`` frequency bins.
        hop_length: hop between frames in samples.
        win_length: window length in samples (None: ``n_fft``); a shorter window is zero-padded
            to ``n_fft`` in the middle, as :func:`torch.stft` does.
        window: one of :data:`WINDOWS` (``"hann"``, ``"hamming"``, ``"rect"``).
        periodic: periodic (DFT-even) window, as ``scipy.signal.get_window`` and librosa use.
        center: pad ``n_fft // 2`` samples on both sides so frame ``k`` is centred at ``k * hop``.
        pad_mode: padding used when ``center`` (``"reflect"``, ``"constant"``, ...).
    """

    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
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


#: window name -> maker ``(length, periodic=, dtype=, device=)``
WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "rect": lambda n, periodic=True, dtype=None, device=None: torch.ones(n, dtype=dtype, device=device),
}


def window(cfg: StftConfig, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
           full: bool = False) -> torch.Tensor:
    """The analysis/synthesis window of ``cfg``: ``(win_length,)``, or ``(n_fft,)`` zero-padded in the middle if ``full``.

    Raises:
        ValueError: ``cfg.window`` is not one of :data:`WINDOWS`.
    """
    try:
        make = WINDOWS[cfg.window]
    except KeyError:
        raise ValueError(f"unknown window {cfg.window!r}; choose one of {sorted(WINDOWS)}") from None
    length = cfg.win_length or cfg.n_fft
    win = make(length, periodic=cfg.periodic, dtype=dtype, device=device)
    if full and length < cfg.n_fft:  # centred zero padding, as torch.stft applies to a short window
        left = (cfg.n_fft - length) // 2
        win = F.pad(win, (left, cfg.n_fft - length - left))
    return win


def stft(x: torch.Tensor, cfg: StftConfig, window_tensor: torch.Tensor | None = None) -> torch.Tensor:
    """Complex STFT.

    Args:
        x: ``(..., time)`` real signal.
        window_tensor: ``(win_length,)`` window to use instead of :func:`window` ``(cfg)`` (a module
            that keeps its window as a buffer passes it, so the numbers stay those of its buffer).

    Returns:
        ``(..., n_bins, frames)`` complex tensor, ``frames = cfg.frames(time)``.

    Raises:
        ValueError: unknown window; RuntimeError (torch): ``center`` with reflect padding on a
            signal not longer than ``n_fft // 2``.
    """
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # (batch, time)
    win = window(cfg, flat.dtype, flat.device) if window_tensor is None else window_tensor
    spec = torch.stft(
        flat, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window=win, center=cfg.center, pad_mode=cfg.pad_mode,
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

    Raises:
        ValueError: unknown window.
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


def _angles(rows: int, n_fft: int) -> torch.Tensor:
    """``2 pi (r c mod N) / N`` for ``r < rows``, ``c < N`` in float64 (exact integer products first)."""
    r = torch.arange(rows, dtype=torch.int64)
    c = torch.arange(n_fft, dtype=torch.int64)
    return 2 * math.pi * ((r[:, None] * c[None, :]) % n_fft).to(torch.float64) / n_fft  # (rows, n_fft)


def dft_kernels(cfg: StftConfig, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The windowed DFT :func:`stft` applies, as conv kernels ``(n_bins, 1, n_fft)`` (torchlibrosa's layout).

    ``real[k, 0, n] = cos(2 pi k n / N) w[n]``, ``imag[k, 0, n] = -sin(2 pi k n / N) w[n]`` with the
    full-length window ``w`` of ``cfg``; computed in float64, returned in ``dtype``.
    """
    ang = _angles(cfg.n_bins, cfg.n_fft)  # (bins, n_fft)
    win = window(cfg, torch.float64, full=True)[None, :]
    real = (torch.cos(ang) * win).to(dtype)[:, None, :]  # (bins, 1, n_fft)
    imag = (-torch.sin(ang) * win).to(dtype)[:, None, :]
    return real, imag


def idft_kernels(cfg: StftConfig, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The windowed inverse DFT of :func:`istft` in torchlibrosa's layout: ``(real, imag, ola_window)``.

    ``real[b, a, 0] = cos(2 pi a b / N) w[b] / N``, ``imag[b, a, 0] = sin(2 pi a b / N) w[b] / N``
    (``(n_fft, n_fft, 1)``: time ``b``, frequency ``a``), and the overlap-add window ``w**2`` ``(n_fft,)``.
    """
    ang = _angles(cfg.n_fft, cfg.n_fft)  # (time b, freq a)
    win = window(cfg, torch.float64, full=True)
    real = (torch.cos(ang) / cfg.n_fft * win[:, None]).to(dtype)[:, :, None]  # (n_fft, n_fft, 1)
    imag = (torch.sin(ang) / cfg.n_fft * win[:, None]).to(dtype)[:, :, None]
    return real, imag, (win**2).to(dtype)
