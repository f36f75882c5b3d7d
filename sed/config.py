"""HTS-AT configuration: one dataclass with every architectural and front-end setting, and named presets.

Presets are data (dicts of field values). ``htsat_config("audioset")`` is the
official AudioSet HTS-AT (RetroCirce/HTS-Audio-Transformer), ``"zsass_2048d"``
the ZS-ASS query encoder (the same network with embed 256, hence a 2048-d
latent), ``"tiny"`` a small model that trains on a 2-core CPU in minutes.

Geometry (all presets): a clip of ``clip_samples`` gives ``1 + clip_samples // hop_length``
log-mel frames, which are stretched (bicubic) to ``spec_size * freq_ratio`` frames and
folded into a ``spec_size x spec_size`` image: ``freq_ratio`` time chunks of
``spec_size`` frames stacked along the height, each ``n_mels = spec_size // freq_ratio``
rows high.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qsep_core.config import ConfigError, check_positive, from_dict, override
from qsep_core.constants import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH
from qsep_core.dsp import StftConfig

__all__ = ["HTSATConfig", "PRESETS", "htsat_config", "preset_names"]


@dataclass
class HTSATConfig:
    """Every setting of an HTS-AT sound event detector.

    Front end:
        sample_rate: input rate in Hz (the model never resamples).
        n_fft, win_length, hop_length, window, periodic, center, pad_mode: the STFT (the fields of
            :class:`qsep_core.dsp.StftConfig`, returned by :attr:`stft`; ``periodic`` was called
            ``periodic_window`` before, which model files may still say).
        n_mels, fmin, fmax, mel_scale, mel_norm: the mel filter bank (torchaudio, Slaney by default).
        amin, ref, top_db: ``10*log10(max(mel, amin)) - 10*log10(max(amin, ref))``, clipped to
            ``top_db`` below the maximum when ``top_db`` is not None (the official model: None).
        bn_eps: eps of the BatchNorm over mel bins (``bn0``).
    Geometry:
        clip_samples: one model clip (10 s at 32 kHz for the official models). Longer inputs
            are windowed over clips of this length.
        spec_size, freq_ratio: the folded image is ``spec_size x spec_size``; the time axis is
            stretched to ``spec_size * freq_ratio`` frames; ``n_mels == spec_size // freq_ratio``.
        patch_size, patch_stride: patch embedding conv kernel / stride.
    Swin:
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, layer_norm_eps,
        drop_rate, attn_drop_rate, drop_path_rate (stochastic depth, linear over blocks).
        attn_mask_value: additive mask of shifted windows (the official code uses -100, not -inf).
        use_sdpa: compute window attention with ``F.scaled_dot_product_attention`` on GPUs
            (fused kernels). On the CPU the explicit ``softmax(q k^T + bias) v`` is used either
            way: there it is ~10 % faster for HTS-AT's 64-token windows (benchmarks/README.md).
    Head:
        num_classes: outputs of the token-semantic head.
    Inference:
        infer_tiling: clips shorter than ``clip_samples`` are tiled along time before the
            stretch, as the official ``infer_mode=True`` (the ZS-ASS query path) does.
        long_overlap: overlap (fraction of a clip) of the windows used for inputs longer
            than ``clip_samples``.
        long_batch: how many windows of a long input run at once (bounds memory).
    """

    #: old field name -> new one (old model files are still read)
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"periodic_window": "periodic"}

    # front end
    sample_rate: int = SAMPLE_RATE
    n_fft: int = WIN_LENGTH
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    window: str = "hann"
    periodic: bool = True
    center: bool = True
    pad_mode: str = "reflect"
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"
    amin: float = 1e-10
    ref: float = 1.0
    top_db: float | None = None
    bn_eps: float = 1e-5
    # geometry
    clip_samples: int = 10 * SAMPLE_RATE  # 10-s AudioSet clips
    spec_size: int = 256
    freq_ratio: int = 4
    patch_size: int = 4
    patch_stride: int = 4
    # swin
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attn_mask_value: float = -100.0
    use_sdpa: bool = True
    # head
    num_classes: int = 527
    # inference
    infer_tiling: bool = True
    long_overlap: float = 0.5
    long_batch: int = 4

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.validate()

    # derived sizes -------------------------------------------------------
    @property
    def stft(self) -> StftConfig:
        """The front end's STFT settings."""
        return StftConfig(
            n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=self.window,
            periodic=self.periodic, center=self.center, pad_mode=self.pad_mode,
        )

    @property
    def n_freqs(self) -> int:
        """STFT bins (``n_fft // 2 + 1``)."""
        return self.n_fft // 2 + 1

    @property
    def target_frames(self) -> int:
        """Frames of the stretched log-mel (``spec_size * freq_ratio``; 1024 officially)."""
        return self.spec_size * self.freq_ratio

    @property
    def num_layers(self) -> int:
        return len(self.depths)

    @property
    def latent_dim(self) -> int:
        """Width of the last stage (``embed_dim * 2**(stages-1)``): 768 for AudioSet, 2048 for ZS-ASS."""
        return self.embed_dim * 2 ** (self.num_layers - 1)

    @property
    def final_grid(self) -> int:
        """Side of the token grid after the last stage (8 officially)."""
        return self.spec_size // self.patch_stride // 2 ** (self.num_layers - 1)

    @property
    def time_steps(self) -> int:
        """Frame-wise steps of the token-semantic head (32 officially)."""
        return self.final_grid * self.freq_ratio

    @property
    def clip_frames(self) -> int:
        """Log-mel frames of one clip of ``clip_samples`` (1001 officially)."""
        return self.frames(self.clip_samples)

    def frames(self, samples: int) -> int:
        """Log-mel frames for ``samples`` input samples."""
        return self.stft.frames(samples)

    def validate(self) -> None:
        """Check that the settings fit together.

        Raises:
            ConfigError: naming the first inconsistent setting and its value.
        """
        check_positive(self, "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "clip_samples", "spec_size",
                       "freq_ratio", "patch_size", "patch_stride", "embed_dim", "window_size")
        if len(self.depths) != len(self.num_heads):
            raise ConfigError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.spec_size % self.freq_ratio or self.spec_size // self.freq_ratio != self.n_mels:
            raise ConfigError(
                f"n_mels must equal spec_size // freq_ratio; got n_mels={self.n_mels}, "
                f"spec_size={self.spec_size}, freq_ratio={self.freq_ratio}"
            )
        if self.patch_size != self.patch_stride:
            raise ConfigError(f"patch_size ({self.patch_size}) != patch_stride ({self.patch_stride}) is not supported")
        grid = self.spec_size // self.patch_stride
        if self.spec_size % self.patch_stride or grid % 2 ** (self.num_layers - 1):
            raise ConfigError(
                f"spec_size {self.spec_size} / patch {self.patch_stride} = {grid} tokens must be divisible "
                f"by 2**(stages-1) = {2 ** (self.num_layers - 1)}"
            )
        if self.final_grid % self.freq_ratio:
            raise ConfigError(
                f"the last token grid ({self.final_grid}) must be divisible by freq_ratio ({self.freq_ratio})"
            )
        for i, h in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % h:
                raise ConfigError(f"stage {i}: width {self.embed_dim * 2**i} is not divisible by {h} heads")
        if self.clip_frames > self.target_frames:
            raise ConfigError(
                f"clip_samples={self.clip_samples} gives {self.clip_frames} frames, more than "
                f"spec_size*freq_ratio={self.target_frames}; shorten the clip or raise hop_length"
            )
        if not 0.0 <= self.long_overlap < 1.0:
            raise ConfigError(f"long_overlap must be in [0, 1), got {self.long_overlap}")
        if self.long_batch < 1:
            raise ConfigError(f"long_batch must be >= 1, got {self.long_batch}")
        if self.fmax > self.sample_rate / 2:
            raise ConfigError(f"fmax {self.fmax} Hz is above Nyquist ({self.sample_rate / 2} Hz)")


#: Named presets: field values over the dataclass defaults (the defaults are the AudioSet model).
PRESETS: dict[str, dict[str, Any]] = {
    "audioset": {},
    "zsass_2048d": {"embed_dim": 256},
    # 10-s clips at 32 kHz, hop 640 -> 501 frames stretched to 512, folded into a 128x128 image
    # of 32 mels; 3 stages (32x32 -> 16x16 -> 8x8 tokens, shifted windows in stages 0-1),
    # 96-d latent, 32 frame-wise steps per clip; ~0.1 M parameters.
    "tiny": {
        "hop_length": 640,
        "n_mels": 32,
        "spec_size": 128,
        "freq_ratio": 4,
        "embed_dim": 24,
        "depths": [2, 2, 2],
        "num_heads": [2, 4, 8],
        "window_size": 8,
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.0,
        "num_classes": 25,
        "long_batch": 8,
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def htsat_config(name: str = "audioset", **overrides: Any) -> HTSATConfig:
    """The preset ``name`` with ``overrides`` applied.

    Raises:
        ConfigError: unknown preset, unknown field, or an inconsistent result.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown HTS-AT preset {name!r}; choose one of {preset_names()}")
    base = from_dict(HTSATConfig, PRESETS[name])
    return override(base, overrides) if overrides else base
