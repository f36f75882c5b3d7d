"""QueryUNet family: presets build and run, conditioning matters, gradients flow, a tiny model learns."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from qsep_core import metrics
from qsep_core.config import ConfigError, to_dict
from separator.checkpoint import Component, ModelFolder, save_model
from separator.models import (
    PRESETS, QueryUNet, QueryUNetConfig, build_from_config, build_preset, fold_batchnorm, prepare_for_inference, preset,
)

SR = 32000
# a tiny member of every axis of the family (fast on CPU)
TINY = dict(n_fft=256, hop_length=64, channels=[4, 8], bottleneck=8, cond_dim=6)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests are small; one thread avoids oversubscribing the shared 2-core test machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**changes) -> QueryUNet:
    return QueryUNet(QueryUNetConfig(**{**TINY, **changes}))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in ("zsass", "resunet_film_base") else n for n in sorted(PRESETS)]
)
def test_every_preset_builds_and_runs_on_one_second(name):
    model = build_preset(name).eval()
    x = torch.randn(1, 1, SR) * 0.1
    c = torch.randn(1, model.config.cond_dim)
    with torch.inference_mode():
        y = model(x, c)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert model.config.sample_rate == SR


def test_zsass_preset_has_the_official_parameter_count():
    # the official separator has 167,614,499 trainable parameters (ZS-ASS manifest)
    model = build_preset("zsass")
    assert model.num_parameters() == 167_614_499


@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("conditioning", ["additive", "film"])
@pytest.mark.parametrize("mask", ["magnitude", "complex"])
def test_family_axes_conditions_change_output_and_get_gradient(block, conditioning, mask):
    model = tiny(block=block, conditioning=conditioning, mask=mask, up_kernel=3 if block == "plain" else 2)
    model.eval()
    x = torch.randn(2, 1, 3001)  # odd length, not a multiple of the hop
    c = torch.randn(2, 6, requires_grad=True)
    y = model(x, c)
    assert y.shape == x.shape
    y2 = model(x, c.detach() + 1.0)
    assert (y - y2).abs().max() > 1e-4
    y.square().sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


@pytest.mark.parametrize("length", [1, 63, 257, 4099])
def test_any_length(length):
    model = tiny(freq_fold=2).eval()
    with torch.inference_mode():
        y = model(torch.randn(1, 1, length), torch.randn(1, 6))
    assert y.shape == (1, 1, length)


def test_debug_tensors_and_nyquist_logit_zero():
    model = tiny(mask="complex").eval()
    with torch.inference_mode():
        out = model.forward_debug(torch.randn(2, 1, 1000), torch.randn(2, 6))
    frames = model.config.stft.frames(1000)
    bins = model.config.n_fft // 2 + 1
    assert out["magnitude"].shape == (2, 1, frames, bins)
    assert out["mask_logits"].shape == (2, 3, frames, bins)
    assert torch.equal(out["mask_logits"][..., -1], torch.zeros(2, 3, frames))
    assert torch.allclose(out["sp"][..., -1], 0.5 * out["magnitude"][..., -1])


def test_untrained_complex_mask_keeps_the_mixture_phase():
    model = tiny(mask="complex", freq_fold=2).eval()
    x = torch.randn(1, 1, 2000)
    with torch.inference_mode():
        out = model.forward_debug(x, torch.randn(1, 6))
    logits = out["mask_logits"]
    assert torch.equal(logits[:, 1, :, :-1], torch.ones_like(logits[:, 1, :, :-1]))
    assert torch.equal(logits[:, 2], torch.zeros_like(logits[:, 2]))


def test_bad_inputs_are_named():
    model = tiny()
    with pytest.raises(ValueError, match="condition"):
        model(torch.randn(1, 1, 100), torch.randn(1, 5))
    with pytest.raises(ValueError, match="mixture"):
        model(torch.randn(1, 2, 100), torch.randn(1, 6))
    with pytest.raises(ConfigError, match="conditioning"):
        QueryUNetConfig(conditioning="concat")
    with pytest.raises(ConfigError, match="divisible"):
        QueryUNetConfig(n_fft=96, channels=[4, 8, 16, 32, 64, 128])
    with pytest.raises(ConfigError, match="unknown QueryUNet preset"):
        preset("nope")


def test_model_folder_round_trip(tmp_path):
    model = tiny(mask="complex")
    path = save_model(tmp_path / "m", {"separator": Component("query_unet", to_dict(model.config), model.state_dict())})
    loaded = ModelFolder(path).build("separator")
    x, c = torch.randn(1, 1, 800), torch.randn(1, 6)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x, c), loaded(x, c))
    assert build_from_config(to_dict(model.config)).config == model.config


@pytest.mark.slow
def test_small_preset_learns_to_pick_the_sine():
    """Frozen mixture, one-hot condition: 'which sine'. A few dozen steps must give > 10 dB SI-SDR improvement."""
    g = torch.Generator().manual_seed(0)
    n = SR // 4
    t = torch.arange(n) / SR
    sines = torch.stack([0.5 * torch.sin(2 * math.pi * 440.0 * t), 0.5 * torch.sin(2 * math.pi * 2500.0 * t)])
    noise = 0.3 * torch.randn(n, generator=g)
    mixtures = (sines + noise)[:, None]  # (2, 1, n): sine k + the same noise
    cond = torch.zeros(2, 2048)
    cond[0, 0] = cond[1, 1] = 1.0
    torch.manual_seed(0)
    model = build_preset("resunet_film_small")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        loss = (model(mixtures, cond) - sines[:, None]).abs().mean()
        loss.backward()
        opt.step()
    # BN momentum is 0.01, so 40 steps leave the running statistics near their init:
    # re-estimate them on the (frozen) training batch before switching to eval mode
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(mixtures, cond)
    model.eval()
    with torch.inference_mode():
        est = model(mixtures, cond)[:, 0]
    for k in range(2):
        improvement = float(metrics.improvement(metrics.si_sdr, estimate=est[k], reference=sines[k], mixture=mixtures[k, 0]))
        assert improvement > 10.0, f"sine {k}: SI-SDR improvement {improvement:.1f} dB"


def _random_batchnorm_statistics(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=g) - 0.2)


@pytest.mark.parametrize("block,conditioning,up_kernel", [("plain", "additive", 3), ("residual", "film", 2), ("plain", "film", 2)])
def test_prepared_model_equals_the_trained_one(block, conditioning, up_kernel):
    """BatchNorm folding + channels-last + in-place inference layers change nothing but float rounding."""
    torch.manual_seed(0)
    model = tiny(block=block, conditioning=conditioning, up_kernel=up_kernel).eval()
    _random_batchnorm_statistics(model)
    x = 0.3 * torch.randn(2, 1, 3001)
    c = torch.randn(2, model.config.cond_dim)
    with torch.inference_mode():
        ref = model(x, c)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    prepared = prepare_for_inference(copy.deepcopy(model))
    n_left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    plain_blocks = sum(type(m).__name__ == "PlainBlock" for m in model.modules())
    decoders = sum(type(m).__name__ == "DecoderStage" for m in model.modules())
    assert n_bn - n_left == 2 * plain_blocks + decoders
    with torch.inference_mode():
        out = prepared(x, c)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # with autograd on, the blocks take their out-of-place path: same numbers
    torch.testing.assert_close(model(x, c).detach(), ref, rtol=0, atol=1e-6)


def test_fold_batchnorm_leaves_training_layers_alone():
    model = tiny(block="plain").train()
    assert fold_batchnorm(model) == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("seconds", [0.01, 1.9, 2.0, 6.0, 10.0, 31.7])
def test_padding_free_length(name, seconds):
    c = preset(name)
    n = seconds * c.sample_rate
    nearest = c.padding_free_length(n)
    assert c.stft.frames(nearest) % c.downsample == 0
    # nearest: no other padding-free frame count is closer (below one step, the shortest)
    step = c.downsample * c.hop_length
    assert abs(nearest - n) <= step / 2 + c.hop_length or (n < step and c.stft.frames(nearest) == c.downsample)
    # a few samples of resampling error keep the frame count
    assert c.stft.frames(nearest - 100) == c.stft.frames(nearest + 100) == c.stft.frames(nearest)
