"""HTS-AT front end: waveform -> log-mel (dB), and the time/frequency fold to the Swin input image.

Everything follows the official HTS-AT numerics (``HTSATConfig`` holds the
values): qsep's one STFT (:func:`qsep_core.dsp.stft`, i.e. ``torch.stft``) with a
periodic Hann window and reflect centre padding, power ``re^2 + im^2``, a Slaney
mel bank (torchaudio), ``10*log10(max(mel, amin))`` minus the reference level, no
``top_db`` clipping by default. The official code computes the STFT with stored
conv kernels (torchlibrosa); ``torch.stft`` equals it within float32 rounding
(:func:`stft_kernels` gives those kernels, to check imported checkpoints).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from qsep_core.dsp import dft_kernels, stft, window
from sed.config import HTSATConfig

__all__ = ["mel_filterbank", "stft_kernels", "log_mel", "LogMel", "stretch_frames", "tile_frames", "fold_to_image"]


def mel_filterbank(cfg: HTSATConfig) -> torch.Tensor:
    """The ``(n_freqs, n_mels)`` mel matrix of ``cfg`` (float32), so that ``mel = power @ melW``."""
    with torch.device("cpu"):  # a real matrix even when a model is being built on the meta device
        return torchaudio.functional.melscale_fbanks(
            cfg.n_freqs, float(cfg.fmin), float(cfg.fmax), cfg.n_mels, cfg.sample_rate,
            norm=cfg.mel_norm, mel_scale=cfg.mel_scale,
        ).to(torch.float32)


def stft_kernels(cfg: HTSATConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The DFT kernels that the front end's STFT applies, in torchlibrosa's conv layout ``(n_freqs, 1, n_fft)``.

    :func:`qsep_core.dsp.dft_kernels` of ``cfg.stft``, computed in float64 and rounded to float32.
    Used to check the frozen kernels of official checkpoints.
    """
    return dft_kernels(cfg.stft, dtype=torch.float32)


def log_mel(wave: torch.Tensor, cfg: HTSATConfig, melW: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrogram in dB.

    Args:
        wave: ``(batch, samples)`` float at ``cfg.sample_rate``.
        melW: ``(n_freqs, n_mels)`` mel matrix.
        window: ``(win_length,)`` analysis window.

    Returns:
        ``(batch, frames, n_mels)`` with ``frames = cfg.frames(samples)``.

    Raises:
        ValueError: ``wave`` is not 2-d.
    """
    if wave.dim() != 2:
        raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    spec = stft(wave, cfg.stft, window_tensor=window)  # (batch, freqs, frames)
    power = spec.real**2 + spec.imag**2
    mel = torch.matmul(power.transpose(1, 2), melW)  # (batch, frames, mels)
    db = 10.0 * torch.log10(torch.clamp(mel, min=cfg.amin))
    db = db - 10.0 * math.log10(max(cfg.amin, cfg.ref))
    if cfg.top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - cfg.top_db)
    return db


class LogMel(nn.Module):
    """``(batch, samples)`` -> ``(batch, frames, n_mels)`` log-mel in dB.

    The mel matrix is a persistent buffer ``melW`` (saved with the model, so an
    imported checkpoint keeps its own frozen matrix); the window is rebuilt.
    """

    def __init__(self, cfg: HTSATConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("melW", mel_filterbank(cfg))
        # made in float64 and rounded, as the official kernels; unpadded (torch.stft pads a short window itself)
        win = window(cfg.stft, torch.float64).to(torch.float32)
        self.register_buffer("window", win, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return log_mel(wave, self.cfg, self.melW, self.window)


def tile_frames(mel: torch.Tensor, target: int) -> torch.Tensor:
    """Repeat ``(..., frames, mels)`` ``floor(target / frames)`` times along frames (official ``infer_mode``)."""
    reps = target // mel.shape[-2]
    if reps < 1:
        raise ValueError(f"cannot tile {mel.shape[-2]} frames into {target}")
    return mel.repeat(*([1] * (mel.dim() - 2)), reps, 1)


def stretch_frames(x: torch.Tensor, target: int) -> torch.Tensor:
    """Bicubic (align_corners=True) stretch of ``(batch, 1, frames, mels)`` to ``target`` frames.

    Inputs already ``target`` frames long are returned unchanged (as the official code does).
    """
    frames = x.shape[-2]
    if frames > target:
        raise ValueError(f"{frames} frames do not fit the model's {target}-frame clip")
    if frames == target:
        return x
    return F.interpolate(x, size=(target, x.shape[-1]), mode="bicubic", align_corners=True)


def fold_to_image(x: torch.Tensor, freq_ratio: int) -> torch.Tensor:
    """``(batch, 1, frames, mels)`` -> ``(batch, 1, freq_ratio * mels, frames / freq_ratio)``.

    Time is cut into ``freq_ratio`` chunks stacked along the height, chunk-major:
    image row ``c * mels + m``, column ``frame - c * chunk``.
    """
    return rearrange(x, "b k (c t) m -> b k (c m) t", c=freq_ratio)  # (batch, 1, chunks*mels, chunk_frames)
