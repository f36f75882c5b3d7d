"""Multichannel Wiener post-filter over several source estimates (written for qsep).

This is the classic local Gaussian model refinement (Duong et al. 2010; Nugraha et al. 2016),
the same algorithm as ``norbert.wiener`` and the post-filter of the ZS-ASS reference
evaluation: start from a soft mask of the mixture built from the sources' magnitude
estimates, then run expectation-maximisation iterations that re-estimate each source's
power spectral density ``v_j(f, t)`` and spatial covariance ``R_j(f)`` and apply the
multichannel Wiener gain ``v_j R_j C_x^{-1}`` to the mixture.
"""
from __future__ import annotations

import torch

__all__ = ["wiener"]


def _em_step(y: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """One EM iteration.

    Args:
        y: ``(sources, batch, channels, freq, frames)`` complex current estimates.
        x: ``(batch, channels, freq, frames)`` complex mixture.

    Returns:
        New estimates, same shape as ``y``.
    """
    n_src, batch, channels, n_freq, n_frames = y.shape
    v = (y.abs() ** 2).mean(dim=2)  # (sources, batch, freq, frames)
    # Spatial covariance per source and frequency: sum_t y y^H / sum_t v.
    yt = y.permute(0, 1, 3, 4, 2)  # (sources, batch, freq, frames, channels)
    cov = torch.einsum("sbftc,sbftd->sbfcd", yt, yt.conj())  # (sources, batch, freq, ch, ch)
    weight = v.sum(-1) + eps  # (sources, batch, freq)
    r = cov / weight[..., None, None]
    # Mixture covariance C_x(f, t) = sum_j v_j R_j + sqrt(eps) I.
    eye = torch.eye(channels, dtype=y.dtype, device=y.device)
    vr = v[..., None, None].to(y.dtype) * r[:, :, :, None]  # (sources, batch, freq, frames, ch, ch)
    cxx = vr.sum(0) + (eps**0.5) * eye  # (batch, freq, frames, ch, ch)
    inv = torch.linalg.inv(cxx)
    xt = x.permute(0, 2, 3, 1)  # (batch, freq, frames, channels)
    gain = vr @ inv[None]  # (sources, batch, freq, frames, ch, ch)
    out = (gain @ xt[None, ..., None])[..., 0]  # (sources, batch, freq, frames, channels)
    return out.permute(0, 1, 4, 2, 3)  # (sources, batch, channels, freq, frames)


def wiener(
    magnitudes: torch.Tensor,
    mixture_stft: torch.Tensor,
    iterations: int = 1,
    softmask: bool = True,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
) -> torch.Tensor:
    """Refine source estimates with a multichannel Wiener filter.

    Args:
        magnitudes: ``(sources, ..., channels, freq, frames)`` non-negative magnitude estimates.
        mixture_stft: ``(..., channels, freq, frames)`` complex STFT of the mixture.
        iterations: EM iterations (0: only the initial soft mask / mixture-phase estimate).
        softmask: initialise with the ratio mask ``m_j / sum_k m_k`` applied to the mixture
            (the ZS-ASS evaluation did); otherwise with ``m_j`` and the mixture's phase.
        scale_factor: the mixture is scaled so its largest magnitude is at most
            ``scale_factor`` during EM (numerical range), and scaled back afterwards.
        eps: regularisation of the mask denominators and of the mixture covariance.

    Returns:
        ``(sources, ..., channels, freq, frames)`` complex STFTs of the sources.
    """
    if magnitudes.shape[1:] != mixture_stft.shape:
        raise ValueError(
            f"magnitudes {tuple(magnitudes.shape)} must be (sources, *mixture_stft.shape) with mixture_stft "
            f"{tuple(mixture_stft.shape)}"
        )
    if not mixture_stft.is_complex():
        raise ValueError("mixture_stft must be a complex tensor")
    if mixture_stft.dim() < 3:
        raise ValueError(f"mixture_stft must be (..., channels, freq, frames), got {tuple(mixture_stft.shape)}")
    lead = mixture_stft.shape[:-3]
    channels, n_freq, n_frames = mixture_stft.shape[-3:]
    n_src = magnitudes.shape[0]
    x = mixture_stft.reshape(-1, channels, n_freq, n_frames)  # (batch, channels, freq, frames)
    m = magnitudes.reshape(n_src, -1, channels, n_freq, n_frames).to(x.real.dtype)  # (sources, batch, ch, freq, frames)
    if softmask:
        y = x[None] * (m / (eps + m.sum(0, keepdim=True)))
    else:
        y = m * torch.exp(1j * torch.angle(x))[None]
    if iterations > 0:
        peak = x.abs().amax(dim=(1, 2, 3))  # (batch,) — per signal, as norbert does per call
        scale = torch.clamp(peak / scale_factor, min=1.0)[:, None, None, None]
        xs, ys = x / scale, y / scale
        for _ in range(iterations):
            ys = _em_step(ys, xs, eps)
        y = ys * scale
    return y.reshape(n_src, *lead, channels, n_freq, n_frames)
