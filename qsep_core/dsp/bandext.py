"""Full-band output for a band-limited separator: extend the target's mask above the model's Nyquist.

A separator that runs at 32 kHz returns nothing above 16 kHz. At 44.1 / 48 kHz that band (cymbals,
the air of a voice) would all land in the residual. :func:`extend_band` gives it to the target in
proportion to how much of the band just below the cut-off the target took, frame by frame and
channel by channel:

1. STFT (Hann, ~46 ms) of the mixture ``X`` and of the band-limited target ``T`` at the input rate.
2. Reference band ``[ref_low, cross_low]`` (defaults: 8 - 13.6 kHz for a 32-kHz model): the mask of
   each frame is ``m = sum |T| / sum |X|`` over it, clipped to ``[0, 1]``.
3. Above the cut-off the target becomes ``m * X``. The change is made with a raised-cosine crossover
   from ``cross_low`` (0.85 x Nyquist) to ``cross_high`` (0.95 x Nyquist, below the resampler's
   roll-off): ``T + iSTFT(g * (m X - T))`` with ``g`` 0 below the crossover and 1 above it, so the
   target below ``cross_low`` is left exactly as the model made it.

``target + residual == mixture`` still holds when the residual is taken as ``mixture - target`` after
this step. Measured on the starter corpus' music test split: README, "Full-band output".
"""
from __future__ import annotations

import math

import torch

from qsep_core.dsp.stft import StftConfig, istft, stft

__all__ = ["extend_band", "band_stft"]

#: analysis window in seconds (2048 samples at 44.1 kHz)
WINDOW_SECONDS = 0.0464


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Broadcast shape of ``a`` and ``b`` (``torch.broadcast_shapes`` imports sympy on first use: ~0.4 s).

    Raises:
        ValueError: the shapes do not broadcast.
    """
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"mixture {a} and target {b} do not broadcast")
    return tuple(max(x, y) if 1 in (x, y) else x for x, y in zip(a, b))


def band_stft(rate: int) -> StftConfig:
    """The STFT of :func:`extend_band` at ``rate``: a power-of-two Hann window of ~46 ms, hop a quarter of it."""
    n_fft = 2 ** round(math.log2(max(16.0, WINDOW_SECONDS * rate)))
    return StftConfig(n_fft=n_fft, hop_length=n_fft // 4)


def extend_band(mixture: torch.Tensor, target: torch.Tensor, rate: int, cutoff: float,
                ref_low: float | None = None, cross_low: float | None = None,
                cross_high: float | None = None) -> torch.Tensor:
    """Give the target its share of the band above ``cutoff`` Hz (see the module doc).

    Args:
        mixture: ``(..., time)`` at ``rate``.
        target: ``(..., time)``, broadcastable against ``mixture`` (e.g. ``(n, queries, C, L)`` against
            ``(n, 1, C, L)``), band-limited to ``cutoff`` (a separator's output resampled from its rate).
        rate: sample rate of both, Hz.
        cutoff: the separator's Nyquist, Hz (16 000 for a 32-kHz model).
        ref_low, cross_low, cross_high: band edges in Hz (defaults ``cutoff / 2``, ``0.85 cutoff``, ``0.95 cutoff``).

    Returns:
        The target, shaped like ``target`` broadcast with ``mixture``; unchanged where ``rate / 2 <= cutoff``
        or the signal is too short for one analysis window.

    Raises:
        ValueError: band edges that are not increasing, or a non-positive rate or cutoff.
    """
    if rate <= 0 or cutoff <= 0:
        raise ValueError(f"rate and cutoff must be positive, got {rate}, {cutoff}")
    ref_low = cutoff / 2 if ref_low is None else float(ref_low)
    cross_low = 0.85 * cutoff if cross_low is None else float(cross_low)
    cross_high = 0.95 * cutoff if cross_high is None else float(cross_high)
    if not 0 <= ref_low < cross_low < cross_high <= cutoff:
        raise ValueError(f"band edges must satisfy 0 <= ref_low < cross_low < cross_high <= cutoff, got "
                         f"{ref_low}, {cross_low}, {cross_high}, {cutoff}")
    shape = _broadcast(tuple(mixture.shape), tuple(target.shape))
    if rate / 2 <= cutoff:
        return target.expand(shape)
    cfg = band_stft(rate)
    length = shape[-1]
    if length <= cfg.n_fft // 2:  # too short for reflect padding: nothing to extend reliably
        return target.expand(shape)
    x = stft(mixture.float(), cfg)  # (..., bins, frames)
    t = stft(target.float(), cfg)  # (..., bins, frames)
    hz_per_bin = rate / cfg.n_fft
    k_ref, k_cross = math.ceil(ref_low / hz_per_bin), math.ceil(cross_low / hz_per_bin)  # plain slices, no masks
    mask = t[..., k_ref:k_cross, :].abs().sum(-2) / x[..., k_ref:k_cross, :].abs().sum(-2).clamp(min=1e-8)  # (..., frames)
    mask = mask.clamp(0.0, 1.0)[..., None, :]  # (..., 1, frames)
    freqs = torch.arange(k_cross, cfg.n_bins, device=x.device) * hz_per_bin  # (high bins,)
    ramp = ((freqs - cross_low) / (cross_high - cross_low)).clamp(0.0, 1.0)
    gate = (0.5 - 0.5 * torch.cos(math.pi * ramp))[:, None]  # (high bins, 1): 0 at cross_low, 1 above cross_high
    high = gate * (mask * x[..., k_cross:, :] - t[..., k_cross:, :])  # (..., high bins, frames)
    correction = istft(torch.nn.functional.pad(high, (0, 0, k_cross, 0)), cfg, length)  # (..., time)
    return target + correction.to(target.dtype)
