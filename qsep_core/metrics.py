"""Separation metrics: SDR, SI-SDR, the MDX whole-track SDR, and improvements over the mixture.

Every function takes keyword-only ``estimate=`` and ``reference=`` (SDR is not symmetric, and a
swapped pair of positional arguments gives a plausible but wrong number), tensors of the same
shape ``(..., time)`` (any leading dims: channels, batch), and returns one value per leading
index. By default they compute in float64 (numbers that are reported); ``dtype=None`` keeps
the inputs' floating dtype, for losses that back-propagate in the training precision.
``eps`` keeps silent signals finite and is the only regularisation.

Definitions (``s`` reference, ``s_hat`` estimate, sums over time):

* ``sdr = 10 log10((|s|^2 + eps) / (|s - s_hat|^2 + eps))`` (plain SNR of the estimate; no
  distortion filter, unlike BSS Eval's SDR in ``museval``);
* ``si_sdr``: the same ratio between ``alpha s`` and ``s_hat - alpha s`` with
  ``alpha = (<s_hat, s> + eps) / (|s|^2 + eps)``, after removing the means (Le Roux et al. 2019;
  the formula of ``torchmetrics.functional.scale_invariant_signal_distortion_ratio``);
* ``mdx_sdr``: ``sdr`` with the sums over channels and time together (Music Demixing Challenge).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["sdr", "si_sdr", "mdx_sdr", "improvement", "Metric"]

#: a metric of this module: ``metric(*, estimate, reference, **options) -> (...)``
Metric = Callable[..., torch.Tensor]


def _prepare(estimate: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    if estimate.shape != reference.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} must have the same shape"
        )
    if reference.shape[-1] == 0:
        raise ValueError("cannot compute a metric on zero-length signals")
    if dtype is None:
        dtype = torch.promote_types(torch.promote_types(estimate.dtype, reference.dtype), torch.float32)
    return estimate.to(dtype), reference.to(dtype)


def sdr(*, estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8,
        dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Signal-to-distortion ratio ``10 log10(|s|^2 / |s - s_hat|^2)`` in dB over the last axis.

    Args:
        estimate, reference: ``(..., time)``, same shape.
        eps: added to both energies.
        dtype: computation and result dtype (None: the inputs' floating dtype, at least float32).

    Returns:
        ``(...)`` in dB.

    Raises:
        ValueError: the shapes differ or the signals are empty.
    """
    e, s = _prepare(estimate, reference, dtype)
    num = (s**2).sum(-1) + eps
    den = ((s - e) ** 2).sum(-1) + eps
    return 10.0 * torch.log10(num / den)


def si_sdr(*, estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8, zero_mean: bool = True,
           dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Scale-invariant SDR (Le Roux et al. 2019) in dB over the last axis, ``(..., time)`` -> ``(...)``.

    The reference is scaled by the least-squares gain ``(<s_hat, s> + eps) / (|s|^2 + eps)`` before
    the ratio is taken, so the estimate's gain does not matter. Arguments and errors as :func:`sdr`
    (``eps`` also regularises the gain), plus ``zero_mean``: remove each signal's mean first (as
    torchmetrics).
    """
    e, s = _prepare(estimate, reference, dtype)
    if zero_mean:
        s = s - s.mean(-1, keepdim=True)
        e = e - e.mean(-1, keepdim=True)
    alpha = ((e * s).sum(-1, keepdim=True) + eps) / ((s**2).sum(-1, keepdim=True) + eps)
    target = alpha * s
    noise = e - target
    return 10.0 * torch.log10(((target**2).sum(-1) + eps) / ((noise**2).sum(-1) + eps))


def mdx_sdr(*, estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-7,
            dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Whole-track SDR of the Music Demixing Challenge: one number over all channels and samples.

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` with the sums over the last two axes.

    Args:
        estimate, reference: ``(..., channels, time)``, same shape.

    Returns:
        ``(...)`` in dB.

    Raises:
        ValueError: the shapes differ, the signals are empty, or there is no channel axis.
    """
    e, s = _prepare(estimate, reference, dtype)
    if s.dim() < 2:
        raise ValueError(f"mdx_sdr expects (..., channels, time), got shape {tuple(s.shape)}")
    num = (s**2).sum((-2, -1)) + eps
    den = ((s - e) ** 2).sum((-2, -1)) + eps
    return 10.0 * torch.log10(num / den)


def improvement(metric: Metric, *, estimate: torch.Tensor, reference: torch.Tensor, mixture: torch.Tensor,
                **options) -> torch.Tensor:
    """``metric(estimate) - metric(mixture)`` against the same ``reference`` (SDRi, SI-SDRi), in dB.

    Raises:
        ValueError: as ``metric`` (shapes differ, empty signals).
    """
    return (metric(estimate=estimate, reference=reference, **options)
            - metric(estimate=mixture, reference=reference, **options))
