"""HTS-AT front end: waveform -> log-mel (dB), and the time/frequency fold to the Swin input image.

Everything follows the official HTS-AT numerics (``HTSATConfig`` holds the
values): ``torch.stft`` with a periodic Hann window and reflect centre padding,
power ``re^2 + im^2``, a Slaney mel bank (torchaudio), ``10*log10(max(mel, amin))``
minus the reference level, no ``top_db`` clipping by default. The official code
computes the STFT with stored conv kernels (torchlibrosa); ``torch.stft`` equals
it within float32 rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from sed.config import HTSATConfig

__all__ = ["mel_filterbank", "stft_kernels", "log_mel", "LogMel", "stretch_frames", "tile_frames", "fold_to_image"]


def mel_filterbank(cfg: HTSATConfig) -> torch.Tensor:
    """The ``(n_freqs, n_mels)`` mel matrix of ``cfg`` (float32), so that ``mel = power @ melW``."""
    with torch.device("cpu"):  # a real matrix even when a model is being built on the meta device
        return torchaudio.functional.melscale_fbanks(
            cfg.n_freqs, float(cfg.fmin), float(cfg.fmax), cfg.n_mels, cfg.sample_rate,
            norm=cfg.mel_norm, mel_scale=cfg.mel_scale,
        ).to(torch.float32)


def _window(cfg: HTSATConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    makers = {"hann": torch.hann_window, "hamming": torch.hamming_window}
    if cfg.window not in makers:
        raise ValueError(f"unknown window {cfg.window!r}; choose one of {sorted(makers)}")
    win = makers[cfg.window](cfg.win_length, periodic=cfg.periodic_window, dtype=dtype)
    if cfg.win_length < cfg.n_fft:  # centred zero padding, as torch.stft does
        left = (cfg.n_fft - cfg.win_length) // 2
        win = F.pad(win, (left, cfg.n_fft - cfg.win_length - left))
    return win


def stft_kernels(cfg: HTSATConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The DFT kernels that ``torch.stft`` applies, in torchlibrosa's conv layout ``(n_freqs, 1, n_fft)``.

    ``real[k, 0, n] = cos(2 pi k n / N) w[n]``, ``imag[k, 0, n] = -sin(2 pi k n / N) w[n]``, computed
    in float64 and rounded to float32. Used to check the frozen kernels of official checkpoints.
    """
    n = torch.arange(cfg.n_fft, dtype=torch.int64)
    k = torch.arange(cfg.n_freqs, dtype=torch.int64)
    ang = 2 * math.pi * ((k[:, None] * n[None, :]) % cfg.n_fft).to(torch.float64) / cfg.n_fft  # (freqs, n_fft)
    win = _window(cfg)[None, :]
    real = (torch.cos(ang) * win).to(torch.float32)[:, None, :]  # (freqs, 1, n_fft)
    imag = (-torch.sin(ang) * win).to(torch.float32)[:, None, :]
    return real, imag


def log_mel(wave: torch.Tensor, cfg: HTSATConfig, melW: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrogram in dB.

    Args:
        wave: ``(batch, samples)`` float at ``cfg.sample_rate``.
        melW: ``(n_freqs, n_mels)`` mel matrix.
        window: ``(win_length,)`` analysis window.

    Returns:
        ``(batch, frames, n_mels)`` with ``frames = cfg.frames(samples)``.
    """
    if wave.dim() != 2:
        raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    spec = torch.stft(
        wave, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
        center=cfg.center, pad_mode=cfg.pad_mode, normalized=False, onesided=True, return_complex=True,
    )  # (batch, freqs, frames)
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
        left = (cfg.n_fft - cfg.win_length) // 2  # torch.stft pads a short window itself: keep it unpadded
        win = _window(cfg, torch.float64)[left:left + cfg.win_length].to(torch.float32)
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
