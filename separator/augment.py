"""Training-time augmentation of separator sources: level, band limit, light reverb, and SNR.

Pure functions on waveforms ``(..., time)`` (any leading dims); randomness only through an explicit
``torch.Generator``. :class:`separator.train.MixtureDataset` applies them to the target and the
interferer BEFORE mixing, so the training target is the source as it sounds in the mixture (band
limited and reverberant when the draw says so) and ``mixture == target + interferer`` holds exactly.
"""
from __future__ import annotations

import math

import torch

__all__ = ["rms_db", "scale_to_db", "lowpass", "synthetic_rir", "convolve", "uniform"]

#: RMS floor (about -120 dBFS) below which a signal counts as silent and is left unscaled.
SILENCE_RMS = 1e-6


def uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One draw of ``U(low, high)`` from ``generator``."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def rms_db(x: torch.Tensor) -> torch.Tensor:
    """RMS level over the last axis in dBFS ``(...,)`` (silence gives about -240 dB, never -inf)."""
    return 10 * torch.log10(x.pow(2).mean(-1).clamp(min=1e-24))


def scale_to_db(x: torch.Tensor, target_db: float) -> float:
    """The gain that brings ``x`` (one signal, any shape) to ``target_db`` dBFS RMS; 1.0 for silence."""
    rms = float(x.pow(2).mean().sqrt())
    if rms < SILENCE_RMS:
        return 1.0
    return 10 ** (target_db / 20) / rms


def lowpass(x: torch.Tensor, sample_rate: int, cutoff_hz: float, transition_hz: float = 500.0) -> torch.Tensor:
    """Zero-phase low-pass by an FFT mask with a raised-cosine transition band.

    Args:
        x: ``(..., time)`` waveform.
        sample_rate: Hz.
        cutoff_hz: the mask is 1 below ``cutoff_hz - transition_hz / 2`` and 0 above ``cutoff_hz + transition_hz / 2``.

    Returns:
        ``(..., time)``, same dtype. A cutoff at or above Nyquist returns ``x`` unchanged.

    Raises:
        ValueError: ``cutoff_hz`` or ``transition_hz`` is not positive.
    """
    if cutoff_hz <= 0 or transition_hz <= 0:
        raise ValueError(f"cutoff_hz and transition_hz must be > 0, got {cutoff_hz}, {transition_hz}")
    if cutoff_hz - transition_hz / 2 >= sample_rate / 2:
        return x
    n = x.shape[-1]
    spec = torch.fft.rfft(x.float(), n=n)  # (..., n // 2 + 1)
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate)
    t = ((freqs - (cutoff_hz - transition_hz / 2)) / transition_hz).clamp(0, 1)
    mask = 0.5 * (1 + torch.cos(math.pi * t))  # 1 -> 0 across the transition band
    return torch.fft.irfft(spec * mask, n=n).to(x.dtype)


def synthetic_rir(sample_rate: int, rt60: float, wet_db: float, generator: torch.Generator) -> torch.Tensor:
    """A small-room impulse response ``(samples,)``: a unit direct path plus exponentially decaying noise.

    Args:
        rt60: seconds for the tail to decay by 60 dB (the tail lasts ``rt60`` seconds).
        wet_db: energy of the tail relative to the direct path, dB (e.g. -12: light reverb).
        generator: draws the noise.

    Raises:
        ValueError: ``rt60`` is not positive.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be > 0 seconds, got {rt60}")
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=generator) * torch.exp(-6.9078 * t / rt60)  # -60 dB at rt60 (ln 1000 = 6.9078)
    tail[0] = 0.0
    tail = tail * (10 ** (wet_db / 20) / tail.pow(2).sum().sqrt().clamp(min=1e-12))
    tail[0] = 1.0
    return tail


def convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal FFT convolution of ``x (..., time)`` with ``h (taps,)``, cut to ``x``'s length."""
    n = x.shape[-1] + h.shape[-1] - 1
    size = 1 << (n - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x.float(), n=size) * torch.fft.rfft(h.float(), n=size), n=size)
    return y[..., : x.shape[-1]].to(x.dtype)
