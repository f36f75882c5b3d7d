"""Training conditions that match inference (own latent / class centroid / routed mixture), augmentation
(SNR, level, band limit, reverb), and the level- and condition-normalised separator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sed.mining import load_manifest
from separator import augment
from separator.models import QueryUNet, preset
from separator.train import LabelOverlap, MixingConfig, MixtureDataset, SegmentStore, class_centroids

from .fakes import SYN_RATE, write_synthetic_manifest


def _dataset(folder, mode, **mix):
    m = load_manifest(write_synthetic_manifest(folder))
    store = SegmentStore(m, SYN_RATE, SYN_RATE)
    rows = list(range(len(store)))
    cents = class_centroids(m.latents.float(), store.mined_label, rows, 3)
    cfg = MixingConfig(condition=mode, **mix)
    return MixtureDataset(store, rows, LabelOverlap(3, None, m.class_names), cfg, 0, 200, m.latents.float(), rows, centroids=cents), m, cents


def test_class_centroids_are_per_class_means():
    lat = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    c = class_centroids(lat, [0, 0, 2], [0, 1, 2], 3)
    assert torch.equal(c, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert torch.equal(class_centroids(lat, [0, 0, 2], [0, 2], 3)[0], torch.tensor([1.0, 0.0]))  # only the given rows


def test_mixed_conditions_are_own_latent_centroid_or_target_led_mixture(tmp_path):
    ds, m, cents = _dataset(tmp_path, "mixed", condition_probs=(1, 1, 1), routed_weight_min=0.6)
    kinds = {"own": 0, "centroid": 0, "routed": 0}
    for key in range(150):
        item = ds[key]
        t = item["target_index"]
        cls = ds.store.mined_label[t]
        c = item["condition"]
        if torch.allclose(c, m.latents[t].float()):
            kinds["own"] += 1
        elif torch.allclose(c, cents[cls]):
            kinds["centroid"] += 1
        else:
            kinds["routed"] += 1
            # a convex combination led by the target class: solve for the weights over all centroids
            w = torch.linalg.lstsq(cents.T, c[:, None]).solution[:, 0]
            assert w.sum().item() == pytest.approx(1.0, abs=1e-4)
            assert w[cls].item() >= 0.6 - 1e-4 and w[cls].item() == pytest.approx(w.max().item())
        assert ds[key]["condition"].equal(c)  # a pure function of the key
    assert min(kinds.values()) >= 25, kinds  # each kind drawn about a third of the time


def test_centroid_mode_always_gives_the_class_centroid(tmp_path):
    ds, _, cents = _dataset(tmp_path, "centroid")
    for key in range(20):
        item = ds[key]
        assert torch.equal(item["condition"], cents[ds.store.mined_label[item["target_index"]]])


def test_snr_and_level_augmentation_are_exact_and_the_mixture_is_the_sum(tmp_path):
    ds, _, _ = _dataset(tmp_path, "latent", snr_db=(-10.0, 10.0), level_dbfs=(-45.0, -10.0),
                        bandlimit_prob=0.5, reverb_prob=0.5)
    snrs, levels = [], []
    for key in range(40):
        item = ds[key]
        s1, s2, mix = item["target"], item["interferer"], item["mixture"]
        assert torch.equal(mix, s1 + s2)
        snrs.append(float(augment.rms_db(s1) - augment.rms_db(s2)))
        levels.append(float(augment.rms_db(mix)))
    assert min(snrs) >= -10 - 1e-3 and max(snrs) <= 10 + 1e-3 and np.std(snrs) > 3
    assert min(levels) >= -45 - 1e-3 and max(levels) <= -10 + 1e-3 and np.std(levels) > 4


def test_lowpass_removes_the_band_above_the_cutoff_and_keeps_the_band_below():
    sr = 32000
    t = torch.arange(sr, dtype=torch.float64) / sr  # float64 phases: float32 ones are off by ~1e-2 rad at 12 kHz
    lo, hi = torch.sin(2 * np.pi * 1000 * t).float(), torch.sin(2 * np.pi * 12000 * t).float()
    y = augment.lowpass(lo + hi, sr, 8000.0)
    assert torch.allclose(y, lo, atol=1e-3)
    assert augment.lowpass(hi, 16000, 9000.0).equal(hi)  # cutoff above Nyquist: unchanged
    with pytest.raises(ValueError, match="cutoff_hz"):
        augment.lowpass(lo, sr, 0.0)


def test_synthetic_rir_decay_and_fft_convolution_known_answers():
    g = torch.Generator().manual_seed(0)
    h = augment.synthetic_rir(16000, 0.4, -12.0, g)
    assert h[0] == 1.0 and h.shape == (6400,)
    assert 10 * torch.log10(h[1:].pow(2).sum()).item() == pytest.approx(-12.0, abs=1e-3)
    early, late = h[1:800].pow(2).mean(), h[-800:].pow(2).mean()
    assert 10 * torch.log10(early / late) > 40  # ~60 dB over the tail
    x = torch.randn(2, 3000, generator=g)
    y = augment.convolve(x, h[:50])
    ref = np.stack([np.convolve(r, h[:50].numpy())[:3000] for r in x.numpy()])
    assert np.allclose(y.numpy(), ref, atol=1e-4)


def _tiny(**kw):
    cfg = preset("resunet_film_small", cond_dim=8, channels=(8, 16), bottleneck=16, freq_fold=4, **kw)
    torch.manual_seed(0)
    return QueryUNet(cfg).eval()


def test_level_norm_makes_the_separator_scale_equivariant():
    x = torch.randn(2, 1, 8000)
    c = torch.randn(2, 8)
    with torch.no_grad():
        plain, normed = _tiny(), _tiny(level_norm=True)
        assert not torch.allclose(plain(10 * x, c), 10 * plain(x, c), rtol=1e-3, atol=1e-4)  # BatchNorm input: level-dependent
        assert torch.allclose(normed(10 * x, c), 10 * normed(x, c), rtol=1e-4, atol=1e-5)
        assert torch.allclose(normed(1e-3 * x, c), 1e-3 * normed(x, c), rtol=1e-4, atol=1e-8)
        assert normed(torch.zeros(1, 1, 8000), c[:1]).abs().max() == 0  # silence stays silence


def test_cond_norm_centres_and_rescales_the_condition():
    m = _tiny(cond_norm=True)
    assert "cond_center" in m.state_dict()
    with torch.no_grad():
        m.cond_center.copy_(torch.full((8,), 3.0))
        x, c = torch.randn(1, 1, 8000), torch.randn(1, 8)
        a = m(x, 3.0 + c)
        assert torch.allclose(a, m(x, 3.0 + 5 * c), atol=1e-5)  # the same direction from the centre: same output
        assert not torch.allclose(a, m(x, 3.0 - c), atol=1e-4)
