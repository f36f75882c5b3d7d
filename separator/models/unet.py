"""``QueryUNet``: mixture waveform + condition vector -> waveform of the queried source.

Pipeline (all presets; the ``zsass`` preset reproduces the official ZS-ASS separator):

1. STFT of the mixture; magnitude ``|X|`` without epsilon. Inputs of at most
   ``n_fft/2`` samples (too short for reflect padding; the official code fails
   on them) are zero-extended first and the output is cropped back.
2. ``input_norm``: BatchNorm over the frequency bins (official ``bn0``), THEN
   zero-pad time at the end to a multiple of the U-Net down-sampling factor
   (the zeros are not normalised), then drop the Nyquist bin.
3. Optional frequency fold (adjacent bins -> channels), the conditioned U-Net,
   unfold.
4. The Nyquist bin gets logit 0 (mask sigmoid(0) = 0.5), time is cropped back.
5. Mask: ``sigmoid(logit) * |X|`` with the mixture phase
   ``X / max(|X|, phase_floor)`` (``magnitude``), optionally rotated by a
   predicted unit phasor (``complex``); ISTFT to the input length.

Two options that the official model lacks (both off in its preset): ``level_norm`` runs the
network on the mixture scaled to unit RMS and scales the estimate back (level invariance);
``cond_norm`` centres and rescales the condition before the network (one scale for every kind
of query). See :class:`~separator.models.config.QueryUNetConfig`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from qsep_core.config import from_dict, to_dict
from qsep_core.dsp import istft, stft
from separator.models.blocks import BlockStack, DecoderStage, EncoderStage
from separator.models.config import QueryUNetConfig

__all__ = ["QueryUNet", "build_from_config", "analyze", "synthesize"]

#: RMS below which ``level_norm`` stops scaling up (about -100 dBFS): digital silence stays silence.
LEVEL_FLOOR = 1e-5


class QueryUNet(nn.Module):
    """Query-conditioned spectrogram U-Net (one configurable class for every preset).

    ``model(mixture (B, 1, T), condition (B, D)) -> (B, 1, T)`` at ``config.sample_rate``.
    """

    def __init__(self, config: QueryUNetConfig):
        super().__init__()
        self.config = config
        c = config
        common = dict(cond_dim=c.cond_dim, conditioning=c.conditioning, act=c.activation, bn_momentum=c.bn_momentum)
        self.input_norm = nn.BatchNorm2d(c.n_fft // 2 + 1, momentum=c.bn_momentum) if c.input_norm else None
        self.out_per_bin = 3 if c.mask == "complex" else 1  # magnitude logit (+ phase re, im)
        cin = c.freq_fold
        self.encoders = nn.ModuleList()
        for ch in c.channels:
            self.encoders.append(EncoderStage(BlockStack(c.blocks_per_stage, c.block, cin, ch, **common)))
            cin = ch
        self.bottleneck = BlockStack(c.blocks_per_stage, c.block, cin, c.bottleneck, **common)
        cin = c.bottleneck
        self.decoders = nn.ModuleList()
        for ch in reversed(c.channels):
            blocks = BlockStack(c.blocks_per_stage, c.block, 2 * ch, ch, **common)
            self.decoders.append(DecoderStage(cin, ch, c.up_kernel, blocks, **common))
            cin = ch
        self.after = BlockStack(1, c.block, cin, cin, **common)
        self.head = nn.Conv2d(cin, self.out_per_bin * c.freq_fold, 1)
        if c.cond_norm:
            # mean training condition (set by `qsep train separator`); saved with the weights
            self.register_buffer("cond_center", torch.zeros(c.cond_dim))
        if c.mask == "complex":
            # the phase rotation starts as the identity (re = 1, im = 0), so an untrained
            # model keeps the mixture phase instead of scrambling it
            with torch.no_grad():
                self.head.weight[c.freq_fold:].zero_()
                self.head.bias[c.freq_fold: 2 * c.freq_fold].fill_(1.0)
                self.head.bias[2 * c.freq_fold:].zero_()

    # ------------------------------------------------------------------ forward
    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Separate the source described by ``condition``.

        Args:
            mixture: ``(batch, 1, time)`` waveform at ``config.sample_rate``.
            condition: ``(batch, cond_dim)`` query vector.

        Returns:
            ``(batch, 1, time)`` target estimate (same length as ``mixture``).
        """
        return self.forward_debug(mixture, condition)["wav"]

    def forward_queries(self, mixture: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Separate several sources from each mixture in one call: the STFT of each mixture is taken once.

        Args:
            mixture: ``(batch, 1, time)`` waveform at ``config.sample_rate``.
            conditions: ``(queries, cond_dim)``, the same queries for every mixture.

        Returns:
            ``(batch, queries, 1, time)``: row ``[b, q]`` equals ``forward(mixture[b:b+1], conditions[q:q+1])``
            to float rounding (the network runs on ``batch * queries`` rows).
        """
        if conditions.dim() != 2 or conditions.shape[1] != self.config.cond_dim:
            raise ValueError(f"conditions must be (queries, cond_dim={self.config.cond_dim}), got {tuple(conditions.shape)}")
        wav = self._forward(mixture, conditions, queries=conditions.shape[0])["wav"]  # (batch * queries, 1, time)
        return rearrange(wav, "(b q) 1 t -> b q 1 t", q=conditions.shape[0])

    def forward_debug(self, mixture: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`forward` plus intermediate tensors for tests and analysis.

        Returns a dict with
            ``wav`` (B, 1, T); ``magnitude`` mixture ``|X|`` (B, 1, frames, bins);
            ``mask_logits`` (B, K, frames, bins) with K = 1 (``magnitude``) or
            3 (``complex``: magnitude logit, phase re, phase im), Nyquist logits 0;
            ``sp`` masked magnitude (B, 1, frames, bins).
        """
        if mixture.dim() == 3 and (condition.dim() != 2 or condition.shape != (mixture.shape[0], self.config.cond_dim)):
            raise ValueError(
                f"condition must be (batch={mixture.shape[0]}, cond_dim={self.config.cond_dim}), got {tuple(condition.shape)}"
            )
        return self._forward(mixture, condition, queries=1)

    def _forward(self, mixture: torch.Tensor, condition: torch.Tensor, queries: int) -> dict[str, torch.Tensor]:
        """The forward pass; ``condition`` is ``(B, D)`` for ``queries == 1``, else ``(queries, D)`` applied to every
        mixture, and the outputs have ``B * queries`` rows ordered ``(mixture, query)``."""
        spec, gain, length = analyze(mixture, self.config)  # (batch, 1, frames, bins) complex
        if queries > 1:  # one STFT per mixture, one row per (mixture, query)
            rows = spec.shape[0]
            spec = spec.repeat_interleave(queries, dim=0)  # (batch * queries, 1, frames, bins)
            condition = condition.repeat(rows, 1)  # (batch * queries, cond_dim)
            gain = None if gain is None else gain.repeat_interleave(queries, dim=0)  # (batch * queries, 1)
        out = self.forward_spectrum(spec.real, spec.imag, condition)
        with torch.autocast(mixture.device.type, enabled=False):
            target = torch.complex(out.pop("target_real"), out.pop("target_imag"))
            wav = synthesize(target, gain, self.config, length)  # (rows, 1, time)
        if gain is not None:
            out["sp"] = out["sp"] * gain[:, :, None, None]
        return {"wav": wav, **out}

    def forward_spectrum(self, spec_real: torch.Tensor, spec_imag: torch.Tensor,
                         condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """The part of :meth:`forward` between the STFT and the ISTFT, on real tensors only.

        This is what ``qsep export --onnx`` puts in the ONNX graph (:mod:`separator.export`); :func:`analyze` and
        :func:`synthesize` are the parts outside it.

        Args:
            spec_real, spec_imag: ``(batch, 1, frames, bins)`` STFT of the mixture as :func:`analyze` returns it
                (level-normalised when ``config.level_norm``).
            condition: ``(batch, cond_dim)`` query vectors.

        Returns:
            A dict with ``target_real``, ``target_imag`` (batch, 1, frames, bins), the masked complex spectrum;
            ``magnitude`` ``|X|`` (batch, 1, frames, bins); ``mask_logits`` (batch, K, frames, bins) with K = 1
            (``magnitude``) or 3 (``complex``: magnitude logit, phase re, phase im), Nyquist logits 0;
            ``sp`` the masked magnitude (batch, 1, frames, bins), before the level is restored.
        """
        c = self.config
        if c.cond_norm:
            condition = F.normalize(condition.float() - self.cond_center, dim=-1) * c.cond_dim ** 0.5  # (B, cond_dim)
        with torch.autocast(spec_real.device.type, enabled=False):
            spec_real, spec_imag = spec_real.float(), spec_imag.float()
            mag = torch.sqrt(spec_real**2 + spec_imag**2)  # (batch, 1, frames, bins), no epsilon (official)
        logits = self._network(mag, condition.to(mag.dtype))  # (batch, K, frames, bins)
        with torch.autocast(spec_real.device.type, enabled=False):
            logits = logits.float()
            sp = torch.sigmoid(logits[:, :1]) * mag  # (batch, 1, frames, bins)
            denom = mag.clamp(min=c.phase_floor)
            cos, sin = spec_real / denom, spec_imag / denom
            if c.mask == "complex":
                pr, pi = logits[:, 1:2], logits[:, 2:3]
                norm = torch.sqrt(pr**2 + pi**2).clamp(min=1e-8)
                pr, pi = pr / norm, pi / norm
                cos, sin = cos * pr - sin * pi, sin * pr + cos * pi
        return {"target_real": sp * cos, "target_imag": sp * sin, "magnitude": mag, "mask_logits": logits, "sp": sp}

    def _network(self, mag: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Magnitude (B, 1, frames, bins) -> mask logits (B, K, frames, bins)."""
        c = self.config
        frames = mag.shape[2]
        x = mag
        if self.input_norm is not None:
            # BatchNorm over the frequency bins: bins become the channel axis
            x = self.input_norm(rearrange(x, "b 1 n f -> b f n 1"))
            x = rearrange(x, "b f n 1 -> b 1 n f")  # (batch, 1, frames, bins)
        pad = (-frames) % c.downsample
        x = F.pad(x, (0, 0, 0, pad))  # zeros AFTER the norm (official)
        x = x[..., :-1]  # drop the Nyquist bin -> (batch, 1, frames_pad, bins - 1)
        x = rearrange(x, "b c n (f k) -> b (c k) n f", k=c.freq_fold)  # (batch, fold, frames_pad, bins/fold)
        skips = []
        for enc in self.encoders:
            x, skip = enc(x, cond)
            skips.append(skip)
        x = self.bottleneck(x, cond)
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(x, skip, cond)
        x = self.head(self.after(x, cond))  # (batch, K * fold, frames_pad, bins/fold)
        x = rearrange(x, "b (m k) n f -> b m n (f k)", k=c.freq_fold)  # (batch, K, frames_pad, bins - 1)
        x = F.pad(x, (0, 1))  # Nyquist logit 0 -> mask 0.5 (official)
        return x[:, :, :frames]  # (batch, K, frames, bins)

    # ------------------------------------------------------------------ helpers
    def config_dict(self) -> dict[str, Any]:
        """The config as a JSON-friendly dict (for :func:`build_from_config`)."""
        return to_dict(self.config)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def analyze(mixture: torch.Tensor, config: QueryUNetConfig) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The STFT side of :meth:`QueryUNet.forward`: level normalisation, zero-extension of very short inputs, STFT.

    Args:
        mixture: ``(batch, 1, time)`` waveform at ``config.sample_rate``.
        config: the model's config (STFT settings, ``level_norm``).

    Returns:
        ``(spec, gain, length)``: the complex STFT ``(batch, 1, frames, bins)`` of the (level-normalised) mixture,
        the ``(batch, 1)`` RMS it was divided by (None without ``level_norm``), and the input length in samples.

    Raises:
        ValueError: ``mixture`` is not ``(batch, 1, time)``.
    """
    c = config
    if mixture.dim() != 3 or mixture.shape[1] != 1:
        raise ValueError(f"mixture must be (batch, 1, time), got {tuple(mixture.shape)}")
    length = mixture.shape[-1]
    x = mixture[:, 0].float()  # (batch, time)
    gain = None
    if c.level_norm:
        gain = x.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=LEVEL_FLOOR)  # (batch, 1) RMS
        x = x / gain
    short = c.n_fft // 2 + 1 - length
    if c.center and short > 0:  # reflect padding needs more than n_fft/2 samples: zero-extend, crop at the end
        x = F.pad(x, (0, short))
    with torch.autocast(mixture.device.type, enabled=False):
        spec = stft(x, c.stft)  # (batch, bins, frames) complex
    return rearrange(spec, "b f n -> b 1 n f"), gain, length  # (batch, 1, frames, bins)


def synthesize(target: torch.Tensor, gain: torch.Tensor | None, config: QueryUNetConfig, length: int) -> torch.Tensor:
    """The ISTFT side of :meth:`QueryUNet.forward`: ISTFT, crop to ``length``, restore the level.

    Args:
        target: ``(batch, 1, frames, bins)`` complex target spectrum (``forward_spectrum``'s real and imaginary parts).
        gain: ``(batch, 1)`` from :func:`analyze`, or None.
        config: the model's config.
        length: the input length in samples.

    Returns:
        ``(batch, 1, length)`` waveform.
    """
    c = config
    padded = max(length, c.n_fft // 2 + 1) if c.center else length
    wav = istft(rearrange(target, "b 1 n f -> b 1 f n"), c.stft, padded)[..., :length]  # (batch, 1, time)
    return wav if gain is None else wav * gain[:, :, None]


def build_from_config(config: Mapping[str, Any] | QueryUNetConfig) -> QueryUNet:
    """Builder for model-folder components of kind ``query_unet`` (a config dict or dataclass)."""
    cfg = config if isinstance(config, QueryUNetConfig) else from_dict(QueryUNetConfig, config)
    return QueryUNet(cfg)
