"""``QueryUNetConfig``: one dataclass describes every member of the query-conditioned U-Net family.

Presets are data (:data:`PRESETS`: name -> dict of field values), resolved by
:func:`preset`. The ``zsass`` preset is the official ZS-ASS separator (Chen et
al. 2022); ``resunet_film_*`` are residual U-Nets with FiLM conditioning in the
style of Kong et al. 2021 / USS / AudioSep, sized for CPU inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qsep_core.config import ConfigError, check_positive, from_dict, override
from qsep_core.constants import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH
from qsep_core.dsp import StftConfig

__all__ = ["QueryUNetConfig", "PRESETS", "DEFAULT_PRESET", "preset", "BLOCKS", "CONDITIONINGS", "MASKS", "ACTIVATIONS"]

BLOCKS = ("plain", "residual")
CONDITIONINGS = ("additive", "film")
MASKS = ("magnitude", "complex")
ACTIVATIONS = ("relu", "leaky_relu")


@dataclass(frozen=True)
class QueryUNetConfig:
    """Architecture and preprocessing of a :class:`~separator.models.QueryUNet`.

    Attributes:
        sample_rate: rate the model runs at (mono).
        n_fft, hop_length, window, periodic, center, pad_mode: STFT settings
            (see :class:`qsep_core.dsp.StftConfig`; the window is ``n_fft`` long).
        channels: channels of the encoder blocks, one per 2x2 down-sampling; the
            decoder mirrors them.
        bottleneck: channels of the bottleneck block.
        block: ``plain`` (conv-BN-act twice, official) or ``residual``
            (pre-activation BN-act-conv twice plus shortcut, Kong et al. 2021).
        blocks_per_stage: conv blocks per encoder/decoder stage and in the bottleneck.
        conditioning: ``additive`` (Linear(D->C) added per channel, official) or
            ``film`` (per-channel scale and shift from Linear(D->2C)).
        mask: ``magnitude`` (sigmoid mask on the mixture magnitude, mixture phase)
            or ``complex`` (sigmoid magnitude mask plus a unit phase rotation).
        cond_dim: dimension D of the condition vector.
        activation: ``relu`` (official) or ``leaky_relu`` (slope 0.01).
        up_kernel: kernel of the stride-2 ConvTranspose2d that up-samples in the
            decoder; 3 gives ``2n+1`` rows/cols and the LAST row/col is pruned
            (official), 2 gives ``2n`` exactly.
        freq_fold: adjacent frequency bins folded into channels before the U-Net
            (1 = none, official). A fold of k makes every layer k times cheaper.
        input_norm: BatchNorm over frequency bins of the input magnitude (official ``bn0``).
        bn_momentum: BatchNorm momentum (official 0.01).
        phase_floor: ``|X|`` floor used to compute the mixture phase (official 1e-10).
        level_norm: divide the mixture by its RMS before the STFT and multiply the estimate back, so
            the output does not depend on the input level (a mask model is then scale-equivariant).
            Not in the official model (False); qsep-starter v2 uses it.
        cond_norm: centre the condition on the buffer ``cond_center`` (the mean training condition,
            set by training) and scale it to L2 norm ``sqrt(cond_dim)``, so own-segment latents, class
            centroids and weighted mixtures of centroids (text routing) reach the network at one scale
            whatever their raw norm. Not official (False); qsep-starter v2 uses it.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    window: str = "hann"
    periodic: bool = True
    center: bool = True
    pad_mode: str = "reflect"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    bottleneck: int = 128
    block: str = "residual"
    blocks_per_stage: int = 1
    conditioning: str = "film"
    mask: str = "magnitude"
    cond_dim: int = 2048
    activation: str = "leaky_relu"
    up_kernel: int = 2
    freq_fold: int = 1
    input_norm: bool = True
    bn_momentum: float = 0.01
    phase_floor: float = 1e-10
    level_norm: bool = False
    cond_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name, value, allowed in (
            ("block", self.block, BLOCKS),
            ("conditioning", self.conditioning, CONDITIONINGS),
            ("mask", self.mask, MASKS),
            ("activation", self.activation, ACTIVATIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"QueryUNetConfig.{name}={value!r}; choose one of {allowed}")
        check_positive(self, "sample_rate", "n_fft", "hop_length", "bottleneck", "cond_dim")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"QueryUNetConfig.channels must be a non-empty list of positive ints, got {self.channels}")
        if self.up_kernel not in (2, 3):
            raise ConfigError(f"QueryUNetConfig.up_kernel must be 2 or 3, got {self.up_kernel}")
        if self.blocks_per_stage < 1:
            raise ConfigError(f"QueryUNetConfig.blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        if self.n_fft % 2:
            raise ConfigError(f"QueryUNetConfig.n_fft must be even, got {self.n_fft}")
        net_bins = self.n_fft // 2  # the Nyquist bin is not fed to the network
        need = self.freq_fold * self.downsample
        if self.freq_fold < 1 or net_bins % need:
            raise ConfigError(
                f"n_fft/2 = {net_bins} bins must be divisible by freq_fold * 2**len(channels) = {need} "
                f"(freq_fold {self.freq_fold}, {len(self.channels)} down-samplings); change n_fft, freq_fold or channels"
            )

    @property
    def stft(self) -> StftConfig:
        """The model's STFT settings (window ``n_fft`` long)."""
        return StftConfig(
            n_fft=self.n_fft, hop_length=self.hop_length, win_length=None, window=self.window,
            periodic=self.periodic, center=self.center, pad_mode=self.pad_mode,
        )

    @property
    def downsample(self) -> int:
        """Total down-sampling factor of the U-Net along time and (folded) frequency."""
        return 2 ** len(self.channels)

    def padding_free_length(self, samples: float) -> int:
        """The input length nearest to ``samples`` whose STFT frame count is a multiple of :attr:`downsample`.

        The U-Net zero-pads time to such a multiple, so chunks of this length waste
        no computation on padding (a 6-s chunk of ``zsass``, 601 frames, runs as
        640: 6.5 % of its work on zeros). The length sits half a hop inside its
        frame bucket, so a resampling error of a few samples keeps the count.
        """
        hop, ds = self.hop_length, self.downsample
        offset = 0 if self.center else self.n_fft
        frames = max(1.0, (samples - offset) / hop + 1)
        k = max(1, round(frames / ds))
        return offset + (k * ds - 1) * hop + hop // 2


#: name -> field values over the dataclass defaults (the STFT of every preset is the default one:
#: 32 kHz, hop 320, periodic Hann, centred with reflect padding; only ``n_fft`` differs).
#:
#: * ``zsass``: the official separator (167,614,499 trainable parameters); 66 GFLOP
#:   per audio second, ~3x real time on 2 CPU threads once prepared for inference
#:   (:func:`separator.models.prepare_for_inference`).
#: * ``resunet_film_small`` (default): 11.9 M parameters with 2048-d conditions
#:   (9.7 M of them in the FiLM projections, which cost nothing per frame).
#:   Folding 8 adjacent bins into channels makes every layer 8x cheaper; with
#:   hop 320 and 5 levels, 3 min of 44.1 kHz stereo runs ~60x real time through
#:   :class:`separator.api.Separator` on 2 CPU threads (resampling and 25 %
#:   overlap included; benchmarks/README.md). The complex mask starts as the
#:   identity rotation; in a 40-step toy fit it beat the magnitude mask (18-20 vs
#:   17.6 dB SI-SDRi) and fold 8 matched fold 4 at ~2x the speed.
#: * ``resunet_film_base``: 94 M parameters, full resolution, 2 blocks per stage (GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "zsass": {
        "n_fft": N_FFT,
        "channels": [32, 64, 128, 256, 512, 1024], "bottleneck": 2048,
        "block": "plain", "blocks_per_stage": 1, "conditioning": "additive", "mask": "magnitude",
        "cond_dim": 2048, "activation": "relu", "up_kernel": 3, "freq_fold": 1, "input_norm": True,
        "bn_momentum": 0.01, "phase_floor": 1e-10,
    },
    "resunet_film_small": {
        "n_fft": WIN_LENGTH,
        "channels": [16, 32, 64, 128, 128], "bottleneck": 128,
        "block": "residual", "blocks_per_stage": 1, "conditioning": "film", "mask": "complex",
        "cond_dim": 2048, "activation": "leaky_relu", "up_kernel": 2, "freq_fold": 8,
    },
    "resunet_film_base": {
        "n_fft": N_FFT,
        "channels": [32, 64, 128, 256, 384, 384], "bottleneck": 384,
        "block": "residual", "blocks_per_stage": 2, "conditioning": "film", "mask": "complex",
        "cond_dim": 2048, "activation": "leaky_relu", "up_kernel": 2, "freq_fold": 1,
    },
}

DEFAULT_PRESET = "resunet_film_small"


def preset(name: str, **changes: Any) -> QueryUNetConfig:
    """The config of preset ``name`` with optional field ``changes``.

    Raises:
        ConfigError: unknown preset or field, or an inconsistent result.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown QueryUNet preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = from_dict(QueryUNetConfig, PRESETS[name])
    return override(cfg, changes) if changes else cfg
