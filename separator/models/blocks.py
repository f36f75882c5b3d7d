"""Building blocks of the query-conditioned U-Net: conditioning, conv blocks, encoder/decoder stages.

All blocks work on ``(batch, channels, frames, freq)`` feature maps and take the
condition as ``(batch, cond_dim)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conditioning", "PlainBlock", "ResidualBlock", "EncoderStage", "DecoderStage", "make_block", "activation"]


def activation(name: str, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``relu`` or ``leaky_relu`` (slope 0.01)."""
    return F.relu(x, inplace=inplace) if name == "relu" else F.leaky_relu(x, 0.01, inplace=inplace)


class Conditioning(nn.Module):
    """Per-channel conditioning from a condition vector.

    ``additive``: ``x + W c`` (official ZS-ASS); ``film``: ``x * (1 + s) + b`` with
    ``[s, b] = W c`` (Perez et al. 2018).
    """

    def __init__(self, cond_dim: int, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.proj = nn.Linear(cond_dim, channels * (2 if mode == "film" else 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x`` (B, C, T, F), ``cond`` (B, D) -> (B, C, T, F); ``inplace`` overwrites ``x``."""
        p = self.proj(cond)[:, :, None, None]  # (batch, C or 2C, 1, 1)
        if self.mode == "additive":
            return x.add_(p) if inplace else x + p
        scale, shift = p.chunk(2, dim=1)
        if inplace:
            return x.mul_(1.0 + scale).add_(shift)
        return x * (1.0 + scale) + shift

    def affine(self, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item ``(scale, shift)``, each (B, C), of ``cond(a * x + b)`` for per-channel ``a``, ``b`` (C,)."""
        p = self.proj(cond)  # (batch, C or 2C)
        if self.mode == "additive":
            return a.expand(p.shape[0], -1), b + p
        s, sh = p.chunk(2, dim=1)
        return a * (1.0 + s), b * (1.0 + s) + sh


def norm_condition(bn: nn.BatchNorm2d, conditioning: Conditioning, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``conditioning(bn(x), cond)``; in eval mode fused into one multiply-add (same values to float rounding)."""
    if bn.training or not bn.track_running_stats:
        return conditioning(bn(x), cond)
    a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    b = bn.bias - bn.running_mean * a
    scale, shift = conditioning.affine(cond, a, b)  # (batch, C) each
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])


def bn_act_condition(bn: nn.Module, conditioning: Conditioning, act: str, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``conditioning(act(bn(h)), cond)`` for a convolution's output ``h``.

    Without autograd (inference) the activation and the condition overwrite the
    map instead of allocating two more of its size; ``bn`` may be an
    ``nn.Identity`` once :func:`separator.models.fold_batchnorm` has moved it
    into the convolution.
    """
    inplace = not torch.is_grad_enabled()
    return conditioning(activation(act, bn(h), inplace=inplace), cond, inplace=inplace)


class PlainBlock(nn.Module):
    """Two (3x3 conv -> BN -> act -> condition) layers, as in the official ZS-ASS ``ConvBlock``.

    The condition is applied AFTER the activation, so outputs can be negative.
    """

    def __init__(self, cin: int, cout: int, cond_dim: int, conditioning: str, act: str, bn_momentum: float):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.cond1 = Conditioning(cond_dim, cout, conditioning)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.cond2 = Conditioning(cond_dim, cout, conditioning)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, cin, T, F) -> (B, cout, T, F)."""
        x = bn_act_condition(self.bn1, self.cond1, self.act, self.conv1(x), cond)
        return bn_act_condition(self.bn2, self.cond2, self.act, self.conv2(x), cond)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: two (BN -> condition -> act -> 3x3 conv) layers plus a shortcut.

    As the ResUNet blocks of Kong et al. 2021 (USS, AudioSep), with the
    condition applied to the normalised features before each activation.
    """

    def __init__(self, cin: int, cout: int, cond_dim: int, conditioning: str, act: str, bn_momentum: float):
        super().__init__()
        self.act = act
        self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.cond1 = Conditioning(cond_dim, cin, conditioning)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.cond2 = Conditioning(cond_dim, cout, conditioning)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, cin, T, F) -> (B, cout, T, F)."""
        h = self.conv1(activation(self.act, norm_condition(self.bn1, self.cond1, x, cond), inplace=True))
        h = self.conv2(activation(self.act, norm_condition(self.bn2, self.cond2, h, cond), inplace=True))
        return h.add_(self.shortcut(x))


def make_block(kind: str, cin: int, cout: int, cond_dim: int, conditioning: str, act: str, bn_momentum: float) -> nn.Module:
    cls = PlainBlock if kind == "plain" else ResidualBlock
    return cls(cin, cout, cond_dim, conditioning, act, bn_momentum)


class BlockStack(nn.ModuleList):
    """``n`` conv blocks in a row, the first one changing ``cin`` to ``cout``."""

    def __init__(self, n: int, kind: str, cin: int, cout: int, cond_dim: int, conditioning: str, act: str, bn_momentum: float):
        super().__init__(
            make_block(kind, cin if i == 0 else cout, cout, cond_dim, conditioning, act, bn_momentum) for i in range(n)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, cond)
        return x


class EncoderStage(nn.Module):
    """Conv blocks, then 2x2 average pooling; returns ``(pooled, skip)`` with ``skip`` the pre-pool output."""

    def __init__(self, blocks: BlockStack):
        super().__init__()
        self.blocks = blocks

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, cin, T, F) -> ((B, cout, T/2, F/2), (B, cout, T, F))."""
        skip = self.blocks(x, cond)
        return F.avg_pool2d(skip, 2), skip


class DecoderStage(nn.Module):
    """Stride-2 ConvTranspose -> BN -> act -> condition, crop to the skip, ``cat([x, skip])``, conv blocks.

    With kernel 3 the up-sampled map has ``2n+1`` rows/cols and its LAST row and
    column are pruned (official ZS-ASS); with kernel 2 nothing is pruned.
    """

    def __init__(self, cin: int, cout: int, up_kernel: int, blocks: BlockStack, cond_dim: int, conditioning: str,
                 act: str, bn_momentum: float):
        super().__init__()
        self.act = act
        self.up = nn.ConvTranspose2d(cin, cout, up_kernel, stride=2, padding=0, bias=False)
        self.up_bn = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.up_cond = Conditioning(cond_dim, cout, conditioning)
        self.blocks = blocks

    def forward(self, x: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, cin, T/2, F/2), skip (B, cout, T, F) -> (B, cout, T, F)."""
        rows, cols = skip.shape[2], skip.shape[3]
        x = self.up(x)
        # prune only when there is something to prune (kernel 3): a crop that is always a no-op (kernel 2) would
        # leave torch.export (ONNX) with a crop size it cannot infer
        prune = x.shape[2] != rows or x.shape[3] != cols
        if prune and not self.up_bn.training:  # only element-wise layers follow: prune first, touch less
            x = x[:, :, :rows, :cols]
        x = bn_act_condition(self.up_bn, self.up_cond, self.act, x, cond)
        if prune:
            x = x[:, :, :rows, :cols]  # prune the last row/col (kernel 3); training: after the batch statistics
        assert x.shape == skip.shape, f"decoder/skip mismatch {tuple(x.shape)} vs {tuple(skip.shape)}"
        return self.blocks(torch.cat([x, skip], dim=1), cond)
