"""separator.losses: known answers of the named training losses."""
from __future__ import annotations

import math

import pytest
import torch

from separator.losses import LOSSES, info_nce, l1_loss, multi_resolution_stft_loss, negative_si_sdr_loss


def _signals():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 4096, generator=g), torch.randn(2, 1, 4096, generator=g)


def test_loss_table_keeps_its_config_names():
    assert LOSSES == {"l1": l1_loss, "sisdr": negative_si_sdr_loss, "mrstft": multi_resolution_stft_loss}


def test_identical_signals_give_the_best_value():
    ref, other = _signals()
    assert float(l1_loss(estimate=ref, reference=ref)) == 0.0
    assert float(multi_resolution_stft_loss(estimate=ref, reference=ref)) == pytest.approx(0.0, abs=1e-6)
    assert float(negative_si_sdr_loss(estimate=ref, reference=ref)) < -60
    for fn in LOSSES.values():
        assert float(fn(estimate=ref, reference=ref)) < float(fn(estimate=ref + 0.3 * other, reference=ref))


def test_l1_known_value():
    assert float(l1_loss(estimate=torch.ones(1, 1, 8), reference=torch.zeros(1, 1, 8))) == 1.0


def test_sisdr_loss_is_scale_invariant_and_minus_the_metric():
    ref, other = _signals()
    est = ref + 0.5 * other
    base = negative_si_sdr_loss(estimate=est, reference=ref)
    assert float(negative_si_sdr_loss(estimate=7.0 * est, reference=ref)) == pytest.approx(float(base), abs=1e-4)
    # orthogonal noise 10 dB below the reference: SI-SDR 10 dB, loss -10
    n = other - (other * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    n = n * ref.norm(dim=-1, keepdim=True) / n.norm(dim=-1, keepdim=True) / 10 ** 0.5
    assert float(negative_si_sdr_loss(estimate=ref + n, reference=ref)) == pytest.approx(-10.0, abs=0.05)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        l1_loss(estimate=torch.zeros(2, 1, 8), reference=torch.zeros(2, 8))


def test_info_nce_known_answers():
    eye = torch.eye(2)
    for s in (1.0, 5.0):  # two orthogonal pairs: each row/column softmax is (e^s, 1) / (e^s + 1)
        assert float(info_nce(text=eye, audio=eye, scale=s)) == pytest.approx(math.log1p(math.exp(-s)), rel=1e-6)
    # all logits equal and every pair positive: the uniform target over n items costs log(n)
    x = torch.ones(3, 4) / 2
    assert float(info_nce(text=x, audio=x, scale=2.0, positives=torch.ones(3, 3, dtype=torch.bool))) == pytest.approx(math.log(3))
    # swapping text and audio (and transposing the positives) gives the same symmetric loss
    g = torch.Generator().manual_seed(1)
    t, a = torch.randn(4, 5, generator=g), torch.randn(3, 5, generator=g)
    pos = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(info_nce(text=t, audio=a, scale=3.0, positives=pos)) == pytest.approx(
        float(info_nce(text=a, audio=t, scale=3.0, positives=pos.T)), rel=1e-6)


def test_info_nce_errors():
    with pytest.raises(ValueError, match="at least one positive"):
        info_nce(text=torch.eye(2), audio=torch.eye(2), scale=1.0, positives=torch.tensor([[1, 0], [1, 0]]))
    with pytest.raises(ValueError, match="one to one"):
        info_nce(text=torch.eye(2), audio=torch.ones(3, 2), scale=1.0)
