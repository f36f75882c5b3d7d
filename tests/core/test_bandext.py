"""Full-band extension: the target's share of the band above the model's Nyquist follows the band below."""
from __future__ import annotations

import pytest
import torch

from qsep_core import audio
from qsep_core.dsp import extend_band
from qsep_core.metrics import sdr

RATE = 44100
CUT = 16000.0


def _band_limit(x: torch.Tensor) -> torch.Tensor:
    """What a 32-kHz separator returns at 44.1 kHz: the signal resampled down and back (nothing above 16 kHz)."""
    return audio.resample(audio.resample(x, RATE, 32000), 32000, RATE)[..., : x.shape[-1]]


def _signals():
    g = torch.Generator().manual_seed(0)
    n = RATE * 2
    source = 0.2 * torch.randn(2, n, generator=g)  # full band (a cymbal-like noise), stereo
    other = _band_limit(_band_limit(0.2 * torch.randn(2, n, generator=g)))  # nothing above 16 kHz
    on = (torch.arange(n) % RATE < RATE // 2).float()  # the source plays half of each second
    return source * on, other


def test_high_band_follows_the_source():
    source, other = _signals()
    mix = source + other
    limited = _band_limit(source)  # an ideal 32-kHz separator's target
    full = extend_band(mix, limited, RATE, CUT)
    assert sdr(reference=source, estimate=full).mean() > sdr(reference=source, estimate=limited).mean() + 3.0
    # below the crossover (0.85 x 16 kHz) the target is the model's: the correction lives above it
    power = torch.fft.rfft(full - limited).abs().pow(2)  # (C, bins)
    freqs = torch.fft.rfftfreq(full.shape[-1], 1 / RATE)
    assert power[:, freqs < 12000].sum() < 1e-3 * power[:, freqs > CUT].sum()


def test_silent_target_stays_silent_and_whole_mixture_stays_whole():
    source, other = _signals()
    mix = source + other
    assert extend_band(mix, torch.zeros_like(mix), RATE, CUT).abs().max() < 1e-6
    whole = extend_band(mix, _band_limit(mix), RATE, CUT)
    assert sdr(reference=mix, estimate=whole).min() > 20.0


def test_broadcasts_queries_and_leaves_model_rate_inputs_alone():
    source, other = _signals()
    mix = (source + other)[None, None]  # (1, 1, C, L)
    targets = torch.stack([_band_limit(source), _band_limit(other)])[None]  # (1, Q=2, C, L)
    out = extend_band(mix, targets, RATE, CUT)
    assert out.shape == (1, 2, 2, RATE * 2)
    assert torch.allclose(out[0, 0], extend_band(mix[0, 0], targets[0, 0], RATE, CUT), atol=1e-6)
    x = torch.randn(2, 32000)
    assert torch.equal(extend_band(x, 0.5 * x, 32000, CUT), 0.5 * x)


def test_bad_band_edges():
    with pytest.raises(ValueError, match="band edges"):
        extend_band(torch.zeros(RATE), torch.zeros(RATE), RATE, CUT, cross_low=15000, cross_high=14000)
