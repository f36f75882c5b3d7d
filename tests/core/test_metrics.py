"""qsep_core.metrics: known answers, keyword-only arguments, and agreement with torchmetrics."""
from __future__ import annotations

import pytest
import torch

from qsep_core.metrics import improvement, mdx_sdr, sdr, si_sdr

tm = pytest.importorskip("torchmetrics.functional.audio")


def _pair(shape=(3, 2, 4000), seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(*shape, generator=g, dtype=torch.float64)
    est = 0.7 * ref + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64) + 0.05  # gain, noise, offset
    return est, ref


def test_known_values():
    s = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    noise = torch.tensor([[0.1, 0.1, -0.1, -0.1]])  # orthogonal to s, |n|^2 = |s|^2 / 100
    assert float(sdr(estimate=s + noise, reference=s)) == pytest.approx(20.0, abs=1e-5)
    assert float(si_sdr(estimate=3.0 * (s + noise), reference=s)) == pytest.approx(20.0, abs=1e-5)  # gain ignored
    assert float(sdr(estimate=3.0 * (s + noise), reference=s)) < 0.0  # plain SDR punishes the gain
    sdri = improvement(sdr, estimate=s + noise, reference=s, mixture=s + 10 * noise)
    assert float(sdri) == pytest.approx(20.0, abs=1e-4)
    stereo = torch.stack([s[0], 2 * s[0]])  # (channels, time)
    assert float(mdx_sdr(estimate=stereo, reference=stereo)) > 60.0
    assert float(mdx_sdr(estimate=torch.zeros_like(stereo), reference=stereo)) == pytest.approx(0.0, abs=1e-6)


def test_arguments_are_keyword_only_and_checked():
    est, ref = _pair()
    with pytest.raises(TypeError):
        sdr(est, ref)  # a swapped positional pair cannot happen
    with pytest.raises(TypeError):
        si_sdr(est, ref)
    # the metrics are not symmetric: naming the arguments is what keeps published numbers right
    assert not torch.allclose(sdr(estimate=est, reference=ref), sdr(estimate=ref, reference=est))
    with pytest.raises(ValueError, match="same shape"):
        sdr(estimate=est, reference=ref[..., :10])
    with pytest.raises(ValueError, match="zero-length"):
        si_sdr(estimate=est[..., :0], reference=ref[..., :0])
    with pytest.raises(ValueError, match="channels"):
        mdx_sdr(estimate=est[0, 0], reference=ref[0, 0])


def test_sdr_equals_torchmetrics_snr():
    est, ref = _pair()
    ours = sdr(estimate=est, reference=ref)
    theirs = tm.signal_noise_ratio(est, ref, zero_mean=False)
    assert ours.shape == (3, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_si_sdr_equals_torchmetrics_si_sdr():
    est, ref = _pair()
    torch.testing.assert_close(si_sdr(estimate=est, reference=ref),
                               tm.scale_invariant_signal_distortion_ratio(est, ref, zero_mean=True), rtol=0, atol=1e-6)
    torch.testing.assert_close(si_sdr(estimate=est, reference=ref, zero_mean=False),
                               tm.scale_invariant_signal_distortion_ratio(est, ref, zero_mean=False), rtol=0, atol=1e-6)


def test_mdx_sdr_is_sdr_over_channels_and_time():
    est, ref = _pair()
    flat = tm.signal_noise_ratio(est.flatten(-2), ref.flatten(-2), zero_mean=False)  # (3,)
    torch.testing.assert_close(mdx_sdr(estimate=est, reference=ref, eps=0.0), flat, rtol=0, atol=1e-9)


def test_dtype_float64_by_default_and_input_dtype_for_losses():
    est, ref = (x.float().requires_grad_(True) for x in _pair())
    assert si_sdr(estimate=est, reference=ref).dtype == torch.float64
    loss = -si_sdr(estimate=est, reference=ref, dtype=None).mean()
    assert loss.dtype == torch.float32
    loss.backward()
    assert est.grad is not None and torch.isfinite(est.grad).all()
    assert float(loss.detach()) == pytest.approx(-float(si_sdr(estimate=est.detach(), reference=ref.detach()).mean()), abs=1e-3)
