"""Wiener post-filter and oracle estimators against closed forms computed here (the metrics: tests/core/test_metrics.py)."""
from __future__ import annotations

import math

import pytest
import torch

from separator.eval.estimators import MixtureOracle, oracle
from qsep_core.metrics import sdr
from separator.eval.wiener import wiener


def test_mono_wiener_matches_closed_form():
    """Mono, one EM iteration: gain = v_j R_j / (sum_k v_k R_k + sqrt(eps)) on the scaled mixture."""
    g = torch.Generator().manual_seed(1)
    x = torch.complex(torch.randn(1, 1, 33, 20, generator=g), torch.randn(1, 1, 33, 20, generator=g)).to(torch.complex128) * 30
    m = torch.rand(3, 1, 1, 33, 20, generator=g).double()
    eps, sf = 1e-9, 8.0
    out = wiener(m, x, iterations=1, softmask=True, scale_factor=sf, eps=eps)
    scale = max(1.0, float(x.abs().max()) / sf)
    xs = x / scale
    y0 = xs[None] * m / (eps + m.sum(0, keepdim=True))
    v = y0.abs() ** 2  # (3, 1, 1, F, T)
    r = v.sum(-1, keepdim=True) / (eps + v.sum(-1, keepdim=True))
    expected = scale * xs[None] * v * r / ((v * r).sum(0, keepdim=True) + math.sqrt(eps))
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-9)


def test_wiener_without_iterations_is_the_soft_mask():
    x = torch.complex(torch.randn(2, 5, 4), torch.randn(2, 5, 4)).to(torch.complex128)
    m = torch.rand(2, 2, 5, 4).double()
    out = wiener(m, x, iterations=0, softmask=True, eps=0.0)
    assert torch.allclose(out, x[None] * m / m.sum(0, keepdim=True))
    with pytest.raises(ValueError, match="sources"):
        wiener(m[:, :1], x)


def test_oracles():
    g = torch.Generator().manual_seed(0)
    n = 16000
    freqs = torch.fft.rfftfreq(n, 1 / 16000)
    refs = {}
    for name, (lo, hi) in {"low": (50, 500), "high": (2000, 6000)}.items():
        spec = torch.fft.rfft(torch.randn(2, n, generator=g))
        spec[:, (freqs < lo) | (freqs > hi)] = 0
        refs[name] = torch.fft.irfft(spec, n=n).float()  # (channels, time)
    mix = refs["low"] + refs["high"]
    assert torch.equal(MixtureOracle().estimate(mix, 16000, "low"), mix)
    irm = oracle("irm")
    est = irm.estimate(mix, 16000, "low", references=refs)
    assert est.shape == mix.shape
    assert float(sdr(estimate=est, reference=refs["low"]).min()) > 25.0
    with pytest.raises(ValueError, match="true sources"):
        irm.estimate(mix, 16000, "low")
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle("perfect")


def test_condition_estimator_fingerprint_tracks_queries():
    from separator.eval.estimators import ConditionEstimator

    a = ConditionEstimator(separate=lambda w, sr, q: w * q[0], queries={"vocals": torch.tensor([0.5])}, model_id="m1")
    b = ConditionEstimator(separate=lambda w, sr, q: w * q[0], queries={"vocals": torch.tensor([0.25])}, model_id="m1")
    assert a.fingerprint != b.fingerprint and a.fingerprint == ConditionEstimator(a.separate, dict(a.queries), model_id="m1").fingerprint
    assert torch.equal(a.estimate(torch.ones(1, 4), 8000, "vocals"), torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match="no query"):
        a.estimate(torch.ones(1, 4), 8000, "bass")
