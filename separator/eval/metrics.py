"""Separation metrics written for qsep: SDR, SI-SDR and the MDX whole-track SDR.

All functions take ``(..., time)`` tensors (any leading dims: channels, batch) and
return one value per leading index, computed in float64. ``eps`` keeps silent
references finite; it is the only regularisation.
"""
from __future__ import annotations

import torch

__all__ = ["sdr", "si_sdr", "mdx_sdr", "improvement"]


def _check(reference: torch.Tensor, estimate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if reference.shape != estimate.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} must have the same shape")
    if reference.shape[-1] == 0:
        raise ValueError("cannot compute a metric on zero-length signals")
    return reference.double(), estimate.double()


def sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Plain signal-to-distortion ratio ``10 log10(|s|^2 / |s - s_hat|^2)`` in dB.

    Args:
        reference, estimate: ``(..., time)``.

    Returns:
        ``(...)`` float64.
    """
    s, e = _check(reference, estimate)
    num = (s**2).sum(-1) + eps
    den = ((s - e) ** 2).sum(-1) + eps
    return 10.0 * torch.log10(num / den)


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-8, zero_mean: bool = True) -> torch.Tensor:
    """Scale-invariant SDR (Le Roux et al. 2019) in dB.

    The reference is scaled by the least-squares gain ``<s_hat, s> / |s|^2`` before the ratio
    is taken; with ``zero_mean`` both signals have their mean removed first (as torchmetrics).

    Args:
        reference, estimate: ``(..., time)``.

    Returns:
        ``(...)`` float64.
    """
    s, e = _check(reference, estimate)
    if zero_mean:
        s = s - s.mean(-1, keepdim=True)
        e = e - e.mean(-1, keepdim=True)
    alpha = ((e * s).sum(-1, keepdim=True) + eps) / ((s**2).sum(-1, keepdim=True) + eps)
    target = alpha * s
    noise = e - target
    return 10.0 * torch.log10(((target**2).sum(-1) + eps) / ((noise**2).sum(-1) + eps))


def mdx_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Whole-track SDR of the Music Demixing Challenge: one number over all channels and samples.

    ``10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))`` where the sums run over the last
    two axes ``(channels, time)``.

    Args:
        reference, estimate: ``(..., channels, time)``.

    Returns:
        ``(...)`` float64.
    """
    s, e = _check(reference, estimate)
    if s.dim() < 2:
        raise ValueError(f"mdx_sdr expects (..., channels, time), got shape {tuple(s.shape)}")
    num = (s**2).sum((-2, -1)) + eps
    den = ((s - e) ** 2).sum((-2, -1)) + eps
    return 10.0 * torch.log10(num / den)


def improvement(metric, reference: torch.Tensor, estimate: torch.Tensor, mixture: torch.Tensor, **kwargs) -> torch.Tensor:
    """``metric(reference, estimate) - metric(reference, mixture)`` (SDRi, SI-SDRi)."""
    return metric(reference, estimate, **kwargs) - metric(reference, mixture, **kwargs)
