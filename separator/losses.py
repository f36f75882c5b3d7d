"""Named training losses of qsep: the separator's waveform losses and the text projection's InfoNCE.

All take keyword-only arguments (``estimate=``, ``reference=`` as :mod:`qsep_core.metrics`), so an
argument swap cannot go unnoticed, and all return a scalar to minimise.

=============  ===========================================  =====================================
``LOSSES`` key function                                      best value
=============  ===========================================  =====================================
``l1``         :func:`l1_loss` (official ZS-ASS)             0 (identical signals)
``sisdr``      :func:`negative_si_sdr_loss`                  very negative (identical signals)
``mrstft``     :func:`multi_resolution_stft_loss`            0 (identical signals)
=============  ===========================================  =====================================
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from qsep_core.metrics import si_sdr

__all__ = [
    "MRSTFT_RESOLUTIONS",
    "LOSSES",
    "l1_loss",
    "negative_si_sdr_loss",
    "multi_resolution_stft_loss",
    "info_nce",
]

#: (n_fft, hop) of the multi-resolution STFT loss
MRSTFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def l1_loss(*, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean absolute waveform error (the official ZS-ASS loss).

    Args:
        estimate, reference: ``(..., time)`` waveforms of the same shape.

    Returns:
        A scalar; 0 when the signals are identical.

    Raises:
        ValueError: the shapes differ.
    """
    _same_shape(estimate, reference)
    return (estimate - reference).abs().mean()


def negative_si_sdr_loss(*, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Minus the scale-invariant SDR in dB (:func:`qsep_core.metrics.si_sdr`), averaged over the leading dims.

    Args:
        estimate, reference: ``(..., time)`` waveforms of the same shape.

    Returns:
        A scalar in dB; invariant to the gain of ``estimate``; lowest (very negative, bounded by the
        metric's epsilon) when ``estimate`` is a scaled copy of ``reference``.

    Raises:
        ValueError: the shapes differ.
    """
    _same_shape(estimate, reference)
    return -si_sdr(estimate=estimate, reference=reference, dtype=None).mean()


def multi_resolution_stft_loss(*, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, summed over :data:`MRSTFT_RESOLUTIONS`.

    Per resolution: ``||R - E||_F / ||R||_F`` (per example, then averaged) plus the mean of
    ``|log R - log E|``, with ``E``, ``R`` the STFT magnitudes (floored at 1e-7) of the float32 signals.

    Args:
        estimate, reference: ``(batch, channels, time)`` waveforms of the same shape (any leading dims
            that :func:`qsep_core.dsp.stft` accepts).

    Returns:
        A scalar; 0 when the signals are identical.

    Raises:
        ValueError: the shapes differ.
    """
    from qsep_core.dsp import StftConfig, stft

    _same_shape(estimate, reference)
    total = estimate.new_zeros(())
    for n_fft, hop in MRSTFT_RESOLUTIONS:
        cfg = StftConfig(n_fft=n_fft, hop_length=hop, win_length=n_fft)
        e = stft(estimate.float(), cfg).abs().clamp_min(1e-7)  # (batch, 1, freq, frames)
        r = stft(reference.float(), cfg).abs().clamp_min(1e-7)
        sc = torch.linalg.vector_norm(r - e, dim=(-2, -1)) / torch.linalg.vector_norm(r, dim=(-2, -1)).clamp_min(1e-7)
        total = total + sc.mean() + (r.log() - e.log()).abs().mean()
    return total


#: separator training losses by config name (``SeparatorTrainingConfig.loss``)
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1": l1_loss,
    "sisdr": negative_si_sdr_loss,
    "mrstft": multi_resolution_stft_loss,
}


def info_nce(*, text: torch.Tensor, audio: torch.Tensor, scale: torch.Tensor | float,
             positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE between a batch of text and a batch of audio directions.

    ``logits = scale * text @ audio.T`` ``(n_text, n_audio)``. Text->audio: cross-entropy of each row's
    softmax against that row's positives, weighted uniformly (soft targets); audio->text: the same per
    column. The loss is the mean of the two directions. With ``positives`` None, pair ``i`` of the two
    batches is the only positive of each other (CLIP's loss).

    Args:
        text: ``(n_text, dim)`` directions (unit vectors for a cosine similarity).
        audio: ``(n_audio, dim)`` directions.
        scale: the logit scale, ``1 / temperature`` (a learnable scalar tensor or a number).
        positives: ``(n_text, n_audio)`` bool or 0/1: which pairs match. Every row and every column
            needs at least one positive.

    Returns:
        A scalar. Known answers: two orthogonal pairs with scale ``s`` give ``log(1 + exp(-s))``; all
        logits equal and all pairs positive give ``log(n)``.

    Raises:
        ValueError: wrong shapes, or a row / column of ``positives`` without a positive.
    """
    if text.ndim != 2 or audio.ndim != 2 or text.shape[1] != audio.shape[1]:
        raise ValueError(f"text {tuple(text.shape)} and audio {tuple(audio.shape)} must be (n, dim) with the same dim")
    if positives is None:
        if text.shape[0] != audio.shape[0]:
            raise ValueError(f"without positives, text and audio must pair up one to one, got {text.shape[0]} and {audio.shape[0]}")
        positives = torch.eye(text.shape[0], device=text.device)
    if tuple(positives.shape) != (text.shape[0], audio.shape[0]):
        raise ValueError(f"positives {tuple(positives.shape)} must be (n_text, n_audio) = {(text.shape[0], audio.shape[0])}")
    pos = positives.to(device=text.device, dtype=torch.float32)
    if bool((pos.sum(1) == 0).any()) or bool((pos.sum(0) == 0).any()):
        raise ValueError("every text and every audio item needs at least one positive")
    logits = scale * text @ audio.T  # (n_text, n_audio)
    loss_t2a = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_a2t = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return 0.5 * (loss_t2a + loss_a2t)


def _same_shape(estimate: torch.Tensor, reference: torch.Tensor) -> None:
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} must have the same shape")
