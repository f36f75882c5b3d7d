"""HTS-AT: hierarchical token-semantic audio transformer (Chen et al., ICASSP 2022), numerically faithful.

Pipeline (shapes for the official AudioSet preset, 10-s clip)::

    wave (B, 320000) --LogMel--> (B, 1001, 64) dB --bn0 over mels--> (B, 1, 1001, 64)
      --[tile if shorter than a clip]--> --bicubic stretch--> (B, 1, 1024, 64)
      --fold 4 time chunks along height--> (B, 1, 256, 256) image
      --patch embed 4x4--> 64x64 tokens --Swin stages (shifted windows, rel-pos bias)--> 8x8 tokens x 768
      --token-semantic head--> logits (B, 527, 32) --> clipwise (B, 527), framewise (B, 1024, 527), latent (B, 768)

The parameter and buffer names follow the official ``HTSAT_Swin_Transformer`` (minus the
torchlibrosa STFT kernels and the unused ``head``), so official checkpoints load by
prefix stripping (see :mod:`sed.official`). Every numeric quirk of the official forward is
kept: Slaney mel from a stored matrix, no top_db, bicubic ``align_corners=True`` stretch,
chunk-major fold, exact GELU, ``-100`` shift mask, clipwise = sigmoid(mean logits), frame-wise
output repeated per token step, and ``infer_mode`` tiling of short clips.

Input lengths (``n`` samples, ``clip = cfg.clip_samples``):

* ``n <= clip``: one clip. Shorter clips are tiled ``floor(frames_clip / frames)`` times along
  time before the stretch when ``cfg.infer_tiling`` (the official ``infer_mode=True`` path, used
  for ZS-ASS query embeddings); otherwise they are stretched alone. ``framewise`` is on the
  model's ``spec_size * freq_ratio``-frame axis (1024 officially); ``frame_times[i]`` is the time
  (s) of the input frame that stretched frame ``i`` samples. For a tiled clip these times wrap
  around (the clip appears several times on the axis).
* ``n > clip``: windows of exactly ``clip`` samples, hop ``clip * (1 - cfg.long_overlap)`` rounded
  to whole STFT hops; the last window ends at the last sample. Each window runs the 10-s path.
  ``framewise`` is stitched on the input's own frame axis (``1 + n // hop_length`` frames,
  ``frame_times = k * hop / sr``): each window's 1024 stretched frames are mapped back to its
  own frames and the windows are averaged with triangular weights. ``clipwise`` is the maximum
  over windows (an event anywhere in the file counts), ``latent`` the mean over windows.
  Windows run ``cfg.long_batch`` at a time, so memory is bounded by the batch plus the outputs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sed.config import HTSATConfig
from sed.features import LogMel, fold_to_image, stretch_frames, tile_frames

__all__ = ["HTSAT", "build_from_config", "computed_buffers", "relative_position_index", "shift_attention_mask"]


def relative_position_index(window: int) -> torch.Tensor:
    """``(window**2, window**2)`` int64 index into the ``(2*window-1)**2`` relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)  # (2, window*window)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 2)
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * windows, window*window, C)``, windows row-major."""
    return rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=window, q=window)


def _merge(x: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`_partition`: ``(B * windows, window*window, C)`` -> ``(B, H, W, C)``."""
    return rearrange(x, "(b h w) (p q) c -> b (h p) (w q) c", h=height // window, w=width // window, p=window, q=window)


def shift_attention_mask(resolution: int, window: int, shift: int, value: float) -> torch.Tensor:
    """``(windows, N, N)`` additive mask of shifted-window attention (0 within a region, ``value`` across)."""
    img = torch.zeros(1, resolution, resolution, 1)
    cnt = 0
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in spans:
        for ws in spans:
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = _partition(img, window).squeeze(-1)  # (windows, N)
    mask = win[:, None, :] - win[:, :, None]  # (windows, N, N)
    return mask.masked_fill(mask != 0, float(value)).masked_fill(mask == 0, 0.0)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float,
                 use_sdpa: bool):
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.scale = (dim // heads) ** -0.5
        self.use_sdpa = use_sdpa
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop_p = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def bias(self) -> torch.Tensor:
        """``(heads, N, N)`` relative-position bias."""
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, heads)
        return table.view(n, n, self.heads).permute(2, 0, 1).contiguous()

    def _additive(self, mask: torch.Tensor | None) -> torch.Tensor:
        """``bias (+ mask)``, ``(1 or windows, heads, N, N)``; without autograd it is cached until the
        bias table or the mask change (in place or by loading weights) or move."""
        key = None
        if not torch.is_grad_enabled():
            table = self.relative_position_bias_table
            key = (table.data_ptr(), table._version, table.device, table.dtype,
                   None if mask is None else (mask.data_ptr(), mask._version))
            cached = getattr(self, "_additive_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        add = self.bias()[None]  # (1, heads, N, N)
        if mask is not None:
            add = add + mask[:, None]  # (windows, heads, N, N)
        if key is not None:
            self._additive_cache = (key, add)
        return add

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(B * windows, N, C)``, ``mask`` ``(windows, N, N)`` or None -> ``(B * windows, N, C)``."""
        bw, n, c = x.shape
        windows = 1 if mask is None else mask.shape[0]
        qkv = rearrange(self.qkv(x), "(b w) n (k h d) -> k b w h n d", w=windows, k=3, h=self.heads)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, windows, heads, N, head_dim)
        add = self._additive(mask)
        if self.use_sdpa and x.device.type != "cpu":
            drop = self.attn_drop_p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=add.to(q.dtype), dropout_p=drop, scale=self.scale)
        else:
            attn = torch.matmul(q * self.scale, k.transpose(-2, -1)) + add
            out = torch.matmul(self.attn_drop(attn.softmax(dim=-1)), v)
        out = rearrange(out, "b w h n d -> (b w) n (h d)")  # (B*windows, N, C)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention + MLP, both residual."""

    def __init__(self, cfg: HTSATConfig, dim: int, resolution: int, heads: int, shift: int, drop_path: float):
        super().__init__()
        window = cfg.window_size
        if resolution <= window:  # the window covers the grid: no shift
            window, shift = resolution, 0
        self.dim, self.resolution, self.window, self.shift = dim, resolution, window, shift
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, window, heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate, cfg.use_sdpa)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)
        if shift > 0:
            self.register_buffer("attn_mask", shift_attention_mask(resolution, window, shift, cfg.attn_mask_value))
        else:
            self.attn_mask = None
        self._order: torch.Tensor | None = None  # see _window_order

    def _window_order(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, inverse)`` token permutations: ``tokens[:, order]`` is the cyclic shift plus the
        window partition in one gather (as ``_partition(roll(...))``), ``[:, inverse]`` undoes both."""
        if self._order is None or self._order.device != device:
            r = self.resolution
            grid = torch.arange(r * r).view(1, r, r, 1)
            if self.shift:
                grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
            self._order = _partition(grid, self.window).reshape(-1).to(device)
            self._inverse = torch.argsort(self._order)
        return self._order, self._inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H*W, C)`` -> same."""
        b, n, c = x.shape
        order, inverse = self._window_order(x.device)
        h = self.norm1(x)[:, order].view(-1, self.window * self.window, c)  # (batch * windows, N, C)
        h = self.attn(h, self.attn_mask).view(b, n, c)[:, inverse]  # back to row-major tokens
        if torch.is_grad_enabled() or self.training:
            x = x + self.drop_path(h)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # inference: the fresh maps take the residual in place (drop path is the identity)
        x = h.add_(x)
        return self.mlp(self.norm2(x)).add_(x)


class PatchMerging(nn.Module):
    """2x2 token merge: ``(B, R*R, C)`` -> ``(B, R/2*R/2, 2C)``."""

    def __init__(self, dim: int, resolution: int, eps: float):
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.view(b, -1, 4 * c)  # (batch, tokens/4, 4*channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, cfg: HTSATConfig, index: int, drop_paths: list[float]):
        super().__init__()
        dim = cfg.embed_dim * 2**index
        res = cfg.spec_size // cfg.patch_stride // 2**index
        shift = cfg.window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(cfg, dim, res, cfg.num_heads[index], 0 if j % 2 == 0 else shift, drop_paths[j])
            for j in range(cfg.depths[index])
        )
        last = index == cfg.num_layers - 1
        self.downsample = None if last else PatchMerging(dim, res, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: HTSATConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` image -> ``(B, (S/p)**2, embed)`` tokens, row-major."""
        return self.norm(rearrange(self.proj(x), "b c h w -> b (h w) c"))


class HTSAT(nn.Module):
    """HTS-AT sound event detector.

    ``forward(wave (B, samples) at cfg.sample_rate)`` returns a dict:

    * ``clipwise`` ``(B, classes)``: clip probabilities (sigmoid of the mean token-semantic logit).
    * ``framewise`` ``(B, frames, classes)``: frame probabilities on the axis of ``frame_times``.
    * ``latent`` ``(B, latent_dim)``: mean of the final tokens (the audio query embedding).
    * ``frame_times`` ``(frames,)``: seconds of each frame of ``framewise``.

    See the module docstring for how inputs shorter or longer than one clip are handled.
    """

    def __init__(self, cfg: HTSATConfig, init_weights: bool = True):
        """Args:
            cfg: every setting (see :class:`sed.config.HTSATConfig`).
            init_weights: truncated-normal init of Linear layers (as the official model) for
                training from scratch; False keeps PyTorch's default init, which is faster when
                weights are loaded right after.
        """
        super().__init__()
        self.cfg = cfg
        self.mel = LogMel(cfg)
        self.bn0 = nn.BatchNorm2d(cfg.n_mels, eps=cfg.bn_eps)
        self.patch_embed = PatchEmbed(cfg)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n_blocks = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear stochastic depth
        starts = [sum(cfg.depths[:i]) for i in range(cfg.num_layers)]
        self.layers = nn.ModuleList(
            SwinStage(cfg, i, dpr[starts[i]:starts[i] + cfg.depths[i]]) for i in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.latent_dim, eps=cfg.layer_norm_eps)
        c_freq = cfg.final_grid // cfg.freq_ratio
        self.tscam_conv = nn.Conv2d(cfg.latent_dim, cfg.num_classes, kernel_size=(c_freq, 3), padding=(0, 1))
        #: class names when known (set by :func:`sed.load_detector` from the model folder's metadata)
        self.class_names: list[str] | None = None
        if init_weights:
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, WindowAttention):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ stages
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` -> normalised log-mel ``(B, 1, frames, n_mels)`` (after ``bn0``).

        Training code applies SpecAugment / mixup to this tensor, then calls :meth:`forward_mel`.
        """
        x = self.mel(wave)[:, None]  # (batch, 1, frames, mels)
        x = x.transpose(1, 3)  # (batch, mels, frames, 1)
        x = self.bn0(x)
        return x.transpose(1, 3)  # (batch, 1, frames, mels)

    def forward_mel(self, x: torch.Tensor, tile: bool | None = None) -> dict[str, torch.Tensor]:
        """One clip from its normalised log-mel.

        Args:
            x: ``(B, 1, frames, n_mels)`` with ``frames <= spec_size * freq_ratio``.
            tile: tile clips shorter than ``cfg.clip_frames`` before the stretch (default ``cfg.infer_tiling``).

        Returns:
            ``clipwise (B, K)``, ``framewise (B, target_frames, K)``, ``latent (B, D)``, ``logits (B, K, steps)``.
        """
        cfg = self.cfg
        tile = cfg.infer_tiling if tile is None else tile
        if tile and x.shape[2] < cfg.clip_frames:
            x = tile_frames(x, cfg.target_frames)
        x = stretch_frames(x, cfg.target_frames)  # (batch, 1, target_frames, mels)
        return self.forward_image(fold_to_image(x, cfg.freq_ratio))

    def forward_image(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 1, spec_size, spec_size)`` folded image -> outputs (see :meth:`forward_mel`)."""
        cfg = self.cfg
        assert img.shape[1:] == (1, cfg.spec_size, cfg.spec_size), img.shape
        x = self.pos_drop(self.patch_embed(img))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # (batch, grid*grid, latent)
        g = cfg.final_grid
        x = rearrange(x, "b (h w) c -> b c h w", h=g, w=g)
        x = rearrange(x, "b c (k f) t -> b c f (k t)", k=cfg.freq_ratio)  # (batch, latent, freq, steps) chunk-major
        latent = x.flatten(2).mean(dim=-1)  # (batch, latent)
        logits = self.tscam_conv(x).flatten(2)  # (batch, classes, steps)
        repeat = cfg.target_frames // logits.shape[-1]
        framewise = torch.sigmoid(logits).transpose(1, 2).repeat_interleave(repeat, dim=1)  # (batch, target, classes)
        clipwise = torch.sigmoid(logits.mean(dim=-1))
        return {"clipwise": clipwise, "framewise": framewise, "latent": latent, "logits": logits}

    # ------------------------------------------------------------------ time axes
    def clip_frame_times(self, samples: int, tile: bool | None = None) -> torch.Tensor:
        """``(target_frames,)`` seconds of the input frame each stretched frame samples (one clip).

        A stretched clip gives the exact (fractional-frame) sampling position; a tiled clip gives
        the nearest input frame, wrapping around at every tile.
        """
        cfg = self.cfg
        tile = cfg.infer_tiling if tile is None else tile
        frames = cfg.frames(max(samples, self._min_samples()))
        reps = cfg.target_frames // frames if (tile and frames < cfg.clip_frames) else 1
        total = frames * reps
        i = torch.arange(cfg.target_frames, dtype=torch.float64)
        pos = i * (total - 1) / (cfg.target_frames - 1) if total < cfg.target_frames else i
        if reps > 1:  # a tiled clip: the nearest input frame (between tiles a position has no single time)
            pos = torch.remainder(torch.round(pos), frames)
        return (pos * cfg.hop_length / cfg.sample_rate).to(torch.float32)

    def long_frame_times(self, samples: int) -> torch.Tensor:
        """``(1 + samples // hop,)`` seconds of the input's own frames (inputs longer than a clip)."""
        cfg = self.cfg
        return torch.arange(cfg.frames(samples), dtype=torch.float64).mul(cfg.hop_length / cfg.sample_rate).float()

    def _min_samples(self) -> int:
        return self.cfg.n_fft // 2 + 1  # reflect padding needs more samples than the pad

    def window_starts(self, samples: int) -> list[int]:
        """Start samples of the clip windows of an input longer than one clip."""
        cfg = self.cfg
        clip = cfg.clip_samples
        hop = max(cfg.hop_length, round(clip * (1.0 - cfg.long_overlap) / cfg.hop_length) * cfg.hop_length)
        starts = list(range(0, samples - clip, hop))
        starts.append(samples - clip)
        return starts

    # ------------------------------------------------------------------ forward
    def forward(self, wave: torch.Tensor, tile: bool | None = None, framewise: bool = True) -> dict[str, torch.Tensor]:
        """``(B, samples)`` at ``cfg.sample_rate`` -> clipwise / framewise / latent / frame_times.

        Args:
            tile: override ``cfg.infer_tiling`` for inputs shorter than a clip.
            framewise: False skips stitching the frame-wise output of long inputs
                (``framewise`` is then absent from the result).
        """
        if wave.dim() != 2:
            raise ValueError(f"HTSAT expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        if not wave.is_floating_point():
            raise TypeError(f"HTSAT expects a float waveform, got {wave.dtype}")
        n = wave.shape[-1]
        if n <= self.cfg.clip_samples:
            if n < self._min_samples():
                wave = F.pad(wave, (0, self._min_samples() - n))
            out = self.forward_mel(self.features(wave), tile=tile)
            out["frame_times"] = self.clip_frame_times(n, tile).to(wave.device)
            return out
        return self._forward_long(wave, framewise)

    def _forward_long(self, wave: torch.Tensor, want_framewise: bool) -> dict[str, torch.Tensor]:
        b, n = wave.shape
        clip = self.cfg.clip_samples
        result: dict[str, torch.Tensor] = {}
        chunks = [c for _, c in self.iter_long(lambda row, s: wave[row, s:s + clip], b, n, want_framewise, result)]
        out = {"clipwise": result["clipwise"], "latent": result["latent"],
               "frame_times": self.long_frame_times(n).to(wave.device)}
        if want_framewise:
            out["framewise"] = torch.cat(chunks, dim=1)
        return out

    def iter_long(self, read: Callable[[int, int], torch.Tensor], batch: int, samples: int, want_framewise: bool,
                  result: dict[str, torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        """The long-input path (module docstring) over windows fetched one at a time, so a whole file need not
        be in memory: ``read(row, start)`` gives the ``(clip_samples,)`` window of row ``row`` starting at sample
        ``start``. Yields ``(first_frame, framewise (batch, m, classes))`` as soon as frames are final (no later
        window reaches them), in order; at the end ``result`` holds ``clipwise (batch, classes)`` and ``latent
        (batch, latent_dim)``. Memory: ``long_batch`` windows plus one window of frames. The concatenated
        frames equal :meth:`forward`'s ``framewise`` for the whole input.
        """
        cfg = self.cfg
        starts = self.window_starts(samples)
        total = cfg.frames(samples)
        cf = cfg.clip_frames
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        # stretched frame index for each of a window's own frames (nearest; framewise is piecewise constant)
        pick = torch.round(torch.arange(cf, dtype=torch.float64) * (cfg.target_frames - 1) / (cf - 1)).long().to(device)
        j = torch.arange(cf, device=device)
        taper = torch.minimum(j + 1, cf - j).to(dtype)  # triangular, > 0 everywhere
        base = 0  # first frame not yet yielded
        frame_sum = torch.zeros(batch, 0, cfg.num_classes, device=device, dtype=dtype)
        weight = torch.zeros(0, device=device, dtype=dtype)
        clipwise = torch.full((batch, cfg.num_classes), -math.inf, device=device, dtype=dtype)
        latent = torch.zeros(batch, cfg.latent_dim, device=device, dtype=dtype)
        jobs = [(row, s) for s in starts for row in range(batch)]
        for k in range(0, len(jobs), cfg.long_batch):
            part = jobs[k:k + cfg.long_batch]
            chunk = torch.stack([read(row, s).to(device, dtype) for row, s in part])  # (windows, clip)
            out = self.forward_mel(self.features(chunk), tile=False)
            for i, (row, s) in enumerate(part):
                clipwise[row] = torch.maximum(clipwise[row], out["clipwise"][i])
                latent[row] += out["latent"][i]
                if want_framewise:
                    idx = (round(s / cfg.hop_length) + j).clamp_(max=total - 1) - base
                    grow = int(idx.max()) + 1 - weight.shape[0]
                    if grow > 0:
                        frame_sum = F.pad(frame_sum, (0, 0, 0, grow))
                        weight = F.pad(weight, (0, grow))
                    frame_sum[row].index_add_(0, idx, out["framewise"][i, pick] * taper[:, None])
                    if row == 0:
                        weight.index_add_(0, idx, taper)
            if want_framewise:
                final = round(jobs[k + cfg.long_batch][1] / cfg.hop_length) if k + cfg.long_batch < len(jobs) else total
                m = final - base
                if m > 0:
                    yield base, frame_sum[:, :m] / weight[None, :m, None]
                    frame_sum, weight, base = frame_sum[:, m:], weight[m:], final
        result["clipwise"] = clipwise
        result["latent"] = latent / len(starts)

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Latent embedding only: ``(B, samples)`` -> ``(B, latent_dim)`` (the audio query encoder)."""
        return self.forward(wave, framewise=False)["latent"]


def computed_buffers(cfg: HTSATConfig) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, torch.Tensor]]:
    """State-dict layout of ``HTSAT(cfg)`` and the values of its constructed (not learned) buffers.

    Returns ``(layout, buffers)``: ``layout`` maps every state-dict key to ``(shape, dtype)``;
    ``buffers`` maps ``mel.melW``, every ``relative_position_index`` and every ``attn_mask`` to
    the tensor qsep builds. No weights are allocated (the model is built on the meta device).
    """
    from sed.features import mel_filterbank

    with torch.device("meta"):
        model = HTSAT(cfg, init_weights=False)
    layout = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    buffers: dict[str, torch.Tensor] = {"mel.melW": mel_filterbank(cfg)}
    for name, mod in model.named_modules():
        if isinstance(mod, WindowAttention):
            buffers[f"{name}.relative_position_index"] = relative_position_index(mod.window)
        elif isinstance(mod, SwinBlock) and mod.shift:
            buffers[f"{name}.attn_mask"] = shift_attention_mask(mod.resolution, mod.window, mod.shift, cfg.attn_mask_value)
    return layout, buffers


def build_from_config(config: Mapping[str, Any]) -> HTSAT:
    """Builder for model-folder components of kind ``"htsat"`` (a dict of :class:`HTSATConfig` fields).

    The weights keep PyTorch's default init: a model folder loads its own right after.
    """
    from qsep_core.config import from_dict

    return HTSAT(from_dict(HTSATConfig, config), init_weights=False)
