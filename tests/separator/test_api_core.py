"""Separator core: model folder loading, any shape/rate/length, residual, streaming == in-memory."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qsep_core import audio
from separator.api import SeparationResult, Separator
from separator.checkpoint import CheckpointError, Component, ModelFolder, save_model
from qsep_core.config import to_dict
from separator.models import QueryUNet, QueryUNetConfig

COND_DIM = 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models; one thread avoids oversubscribing the shared 2-core test machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = QueryUNet(QueryUNetConfig(n_fft=256, hop_length=64, channels=[4, 8], bottleneck=8, cond_dim=COND_DIM, mask="complex"))
    # non-trivial BN statistics so the model is not near-identity
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("models") / "tiny"
    return save_model(path, {"separator": Component("query_unet", to_dict(model.config), model.state_dict())})


@pytest.fixture
def sep(folder):
    return Separator.from_pretrained(folder, segment=0.25, overlap=0.25, batch_size=2)


def cond(seed: int = 0) -> torch.Tensor:
    return torch.randn(COND_DIM, generator=torch.Generator().manual_seed(seed))


def test_from_pretrained_exposes_model_and_folder(sep, folder):
    assert isinstance(sep.model, QueryUNet) and not sep.model.training
    assert sep.model_folder.path == folder
    assert sep.sample_rate == 32000 and sep.cond_dim == COND_DIM


@pytest.mark.parametrize("shape", [(2, 44100), (2, 1), (1, 12345), (7919,), (2, 3)])
def test_stereo_44k_any_length_same_shape_and_residual(sep, shape):
    x = 0.3 * torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    res = sep.separate_condition(x, 44100, cond())
    assert isinstance(res, SeparationResult) and res.sample_rate == 44100
    assert res.target.shape == x.shape and res.residual.shape == x.shape
    assert res.target.dtype == torch.float32
    assert torch.isfinite(res.target).all()
    torch.testing.assert_close(res.target + res.residual, x, rtol=0, atol=1e-6)


def test_target_depends_on_condition_and_is_not_the_mixture(sep):
    x = 0.3 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(2))
    a = sep.separate_condition(x, 32000, cond(0)).target
    b = sep.separate_condition(x, 32000, cond(1)[None]).target
    assert (a - b).abs().max() > 1e-3
    assert (a - x).abs().max() > 1e-3


def test_channels_are_separated_independently(sep):
    x = 0.3 * torch.randn(2, 20000, generator=torch.Generator().manual_seed(3))
    both = sep.separate_condition(x, 32000, cond()).target
    left = sep.separate_condition(x[0], 32000, cond()).target
    torch.testing.assert_close(both[0], left, rtol=0, atol=1e-5)


def test_model_rate_and_one_chunk_equal_the_plain_model(folder):
    """At the model rate with a segment longer than the input, the API is exactly the model (no tail dropped)."""
    x = 0.3 * torch.randn(1, 5000, generator=torch.Generator().manual_seed(4))
    unprepared = ModelFolder(folder).build("separator").eval()
    # without snapping chunked_apply zero-pads the single chunk to the segment length, then crops
    sep = Separator.from_pretrained(folder, snap_segment=False)
    res = sep.separate_condition(x, 32000, cond(), segment=1.0, overlap=0.0)
    with torch.inference_mode():
        ref = unprepared(F.pad(x, (0, 32000 - 5000))[None], cond()[None])[0, :, :5000]
    torch.testing.assert_close(res.target, ref, rtol=0, atol=1e-6)
    # with snapping (default) an input shorter than a segment is one chunk of its own length
    res = Separator.from_pretrained(folder).separate_condition(x, 32000, cond(), segment=1.0, overlap=0.0)
    with torch.inference_mode():
        ref = unprepared(x[None], cond()[None])[0]
    torch.testing.assert_close(res.target, ref, rtol=0, atol=1e-6)


def test_segment_snaps_to_padding_free_chunks(sep):
    """A long input runs in chunks whose frame count is a multiple of the U-Net's down-sampling factor."""
    seen = []
    model = sep.model
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    try:
        sep.separate_condition(torch.zeros(1, 44100), 44100, cond(), segment=0.3, overlap=0.25)
    finally:
        hook.remove()
    c = model.config
    assert seen and all(c.stft.frames(n) % c.downsample == 0 for n in seen)


def test_progress_and_bad_inputs(sep):
    calls = []
    sep.separate_condition(torch.zeros(1, 32000), 32000, cond(), progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    with pytest.raises(ValueError, match="condition"):
        sep.separate_condition(torch.zeros(1, 100), 32000, torch.zeros(5))
    with pytest.raises(ValueError, match="waveform"):
        sep.separate_condition(torch.zeros(1, 1, 100), 32000, cond())
    with pytest.raises(audio.NonFiniteAudioError):
        sep.separate_condition(torch.full((1, 100), float("nan")), 32000, cond())
    with pytest.raises(audio.EmptyAudioError):
        sep.separate_condition(torch.zeros(1, 0), 32000, cond())


def test_streaming_file_variant_equals_in_memory(sep, tmp_path):
    x = 0.3 * torch.randn(2, 30001, generator=torch.Generator().manual_seed(5))
    src = tmp_path / "mix.wav"
    audio.save(src, x, 44100, bit_depth="32f")
    x_file, _ = audio.load(src)
    mem = sep.separate_condition(x_file, 44100, cond())
    writers = sep.separate_file_condition(src, tmp_path / "t.wav", tmp_path / "r.wav", cond(), bit_depth="32f")
    assert set(writers) == {"target", "residual"}
    t, sr = audio.load(tmp_path / "t.wav")
    r, _ = audio.load(tmp_path / "r.wav")
    assert sr == 44100 and t.shape == x.shape and r.shape == x.shape
    torch.testing.assert_close(t, mem.target, rtol=0, atol=1e-6)
    torch.testing.assert_close(r, mem.residual, rtol=0, atol=1e-6)


def test_streaming_only_residual(sep, tmp_path):
    src = tmp_path / "mix.wav"
    audio.save(src, 0.1 * torch.randn(1, 4000), 16000)
    sep.separate_file_condition(src, None, tmp_path / "r.flac", cond())
    assert (tmp_path / "r.flac").exists() and not (tmp_path / "t.wav").exists()
    with pytest.raises(ValueError, match="out_path"):
        sep.separate_file_condition(src, None, None, cond())


def test_folder_without_separator_is_refused(tmp_path):
    model = QueryUNet(QueryUNetConfig(n_fft=256, hop_length=64, channels=[4], bottleneck=4, cond_dim=COND_DIM))
    path = save_model(tmp_path / "m", {"other": Component("query_unet", to_dict(model.config), model.state_dict())})
    with pytest.raises(CheckpointError, match="no 'separator' component"):
        Separator.from_pretrained(path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_bf16_match_cpu(folder):
    x = 0.3 * torch.randn(2, 40000, generator=torch.Generator().manual_seed(6))
    cpu = Separator.from_pretrained(folder, segment=0.5).separate_condition(x, 44100, cond())
    gpu = Separator.from_pretrained(folder, device="cuda", segment=0.5).separate_condition(x, 44100, cond())
    assert gpu.target.device.type == "cpu"
    torch.testing.assert_close(gpu.target, cpu.target, rtol=0, atol=1e-3)
    bf = Separator.from_pretrained(folder, device="cuda", segment=0.5, bf16=True).separate_condition(x, 44100, cond())
    err = (bf.target - cpu.target).square().sum() / cpu.target.square().sum()
    assert float(err) < 1e-2  # bf16 keeps > 20 dB agreement


def test_bf16_on_cpu_is_close_to_float32_or_refused(folder):
    """bf16 autocast on a CPU with native bf16 stays close to float32; elsewhere it is a clear error."""
    x = 0.3 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(7))
    ref = Separator.from_pretrained(folder, device="cpu").separate_condition(x, 32000, cond()).target
    sep = Separator.from_pretrained(folder, device="cpu", bf16=True)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(ValueError, match="bf16"):
            sep.separate_condition(x, 32000, cond())
        return
    out = sep.separate_condition(x, 32000, cond()).target
    assert out.dtype == torch.float32
    snr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert 25 < snr < 120  # close, but really computed in bf16 (not bit-identical)
