"""HTS-AT model: presets, front end, geometry, shapes and frame times for short / clip / long inputs."""
from __future__ import annotations

import math

import pytest
import torch

from qsep_core.config import ConfigError, from_dict, to_dict
from sed.config import PRESETS, HTSATConfig, htsat_config
from sed.features import fold_to_image, log_mel, mel_filterbank, stft_kernels, tile_frames
from sed.htsat import HTSAT, build_from_config, relative_position_index, shift_attention_mask


@pytest.fixture(scope="module")
def tiny() -> HTSAT:
    torch.manual_seed(0)
    return HTSAT(htsat_config("tiny")).eval()


def _tone(seconds: float, freq: float, sr: int, batch: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * freq * t)).repeat(batch, 1)


def test_presets_are_data_and_official_geometry():
    a = htsat_config("audioset")
    assert (a.sample_rate, a.n_fft, a.hop_length, a.n_mels, a.fmin, a.fmax) == (32000, 1024, 320, 64, 50.0, 14000.0)
    assert (a.embed_dim, a.depths, a.num_heads, a.window_size, a.num_classes) == (96, (2, 2, 6, 2), (4, 8, 16, 32), 8, 527)
    assert (a.clip_frames, a.target_frames, a.final_grid, a.time_steps, a.latent_dim) == (1001, 1024, 8, 32, 768)
    assert (a.bn_eps, a.layer_norm_eps, a.attn_mask_value, a.top_db) == (1e-5, 1e-5, -100.0, None)
    assert htsat_config("zsass_2048d").latent_dim == 2048
    assert set(PRESETS) == {"audioset", "zsass_2048d", "tiny"}
    # round trip through the model-folder config dict
    t = htsat_config("tiny", num_classes=7)
    assert from_dict(HTSATConfig, to_dict(t)) == t and t.num_classes == 7


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="unknown HTS-AT preset"):
        htsat_config("huge")
    with pytest.raises(ConfigError, match="n_mels"):
        htsat_config("tiny", n_mels=40)
    with pytest.raises(ConfigError, match="heads"):
        htsat_config("tiny", num_heads=[5, 4, 8])
    with pytest.raises(ConfigError, match="clip_samples"):
        htsat_config("tiny", clip_samples=400000)
    with pytest.raises(ConfigError, match="nope"):
        htsat_config("tiny", nope=1)


def test_front_end_matches_a_direct_dft_and_slaney_bank():
    cfg = htsat_config("audioset")
    fb = mel_filterbank(cfg)
    assert fb.shape == (513, 64)
    # Slaney area norm: each band integrates to 2/(f_hi - f_lo) per Hz; the peak of band 0 is small, not 1 (HTK-style)
    assert fb.max() < 0.05
    real, imag = stft_kernels(cfg)
    x = torch.randn(1, 4000, dtype=torch.float64).float()
    mel = log_mel(x, cfg, fb, torch.hann_window(1024, periodic=True))
    # same log-mel from the explicit conv-kernel DFT (torchlibrosa's formulation)
    padded = torch.nn.functional.pad(x[:, None], (512, 512), mode="reflect")
    re = torch.nn.functional.conv1d(padded, real, stride=320)
    im = torch.nn.functional.conv1d(padded, imag, stride=320)
    ref = 10 * torch.log10(torch.clamp((re**2 + im**2).transpose(1, 2) @ fb, min=1e-10))
    assert mel.shape == (1, 1 + 4000 // 320, 64)
    torch.testing.assert_close(mel, ref, atol=2e-3, rtol=0)
    # exact digital silence hits the -100 dB floor (no top_db clipping)
    silent = log_mel(torch.zeros(1, 4000), cfg, fb, torch.hann_window(1024, periodic=True))
    assert torch.all(silent == -100.0)


def test_fold_is_chunk_major_and_tiling_repeats():
    x = torch.arange(8 * 3, dtype=torch.float32).view(1, 1, 8, 3)  # 8 frames, 3 mels
    img = fold_to_image(x, 2)  # 2 chunks of 4 frames
    assert img.shape == (1, 1, 6, 4)
    for c in range(2):
        for m in range(3):
            for t in range(4):
                assert img[0, 0, c * 3 + m, t] == x[0, 0, c * 4 + t, m]
    tiled = tile_frames(x[:, :, :3], 8)  # floor(8/3) = 2 repeats, not interleaved
    assert torch.equal(tiled[0, 0], torch.cat([x[0, 0, :3], x[0, 0, :3]]))


def test_swin_buffers():
    idx = relative_position_index(2)
    assert idx.shape == (4, 4) and idx.max() == 8 and idx.min() == 0 and torch.all(idx.diagonal() == 4)
    mask = shift_attention_mask(8, 4, 2, -100.0)
    assert mask.shape == (4, 16, 16)
    assert torch.all(mask[0] == 0)  # the top-left window holds a single region
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_sdpa_and_explicit_attention_agree(tiny):
    x = _tone(3.0, 440.0, tiny.cfg.sample_rate)
    with torch.no_grad():
        a = tiny(x)
        for mod in tiny.modules():
            if hasattr(mod, "use_sdpa"):
                mod.use_sdpa = False
        b = tiny(x)
        for mod in tiny.modules():
            if hasattr(mod, "use_sdpa"):
                mod.use_sdpa = True
    torch.testing.assert_close(a["latent"], b["latent"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["framewise"], b["framewise"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("seconds", [1.0, 10.0, 25.0])
def test_shapes_and_frame_times(tiny, seconds):
    cfg = tiny.cfg
    n = int(seconds * cfg.sample_rate)
    with torch.no_grad():
        out = tiny(_tone(seconds, 1000.0, cfg.sample_rate, batch=2))
    k, d = cfg.num_classes, cfg.latent_dim
    assert out["clipwise"].shape == (2, k) and out["latent"].shape == (2, d)
    times = out["frame_times"]
    if n <= cfg.clip_samples:
        assert out["framewise"].shape == (2, cfg.target_frames, k)
    else:  # stitched on the input's own frame axis
        assert out["framewise"].shape == (2, cfg.frames(n), k)
        torch.testing.assert_close(times[1:] - times[:-1], torch.full((len(times) - 1,), cfg.hop_length / cfg.sample_rate))
    assert times.shape == (out["framewise"].shape[1],)
    assert times.min() == 0.0 and abs(times.max().item() - cfg.hop_length * (n // cfg.hop_length) / cfg.sample_rate) < 1e-4
    for key in ("clipwise", "framewise"):
        assert torch.all((out[key] > 0) & (out[key] < 1))
    # both rows are the same signal
    torch.testing.assert_close(out["latent"][0], out["latent"][1])


def test_frame_times_of_clip_paths(tiny):
    cfg = tiny.cfg
    ten = tiny.clip_frame_times(cfg.clip_samples)
    assert torch.all(ten[1:] > ten[:-1])  # plain stretch: monotone
    short = tiny.clip_frame_times(cfg.sample_rate, tile=True)
    assert (short[1:] < short[:-1]).sum() == cfg.target_frames // cfg.frames(cfg.sample_rate) - 1  # wraps per tile
    plain = tiny.clip_frame_times(cfg.sample_rate, tile=False)
    assert torch.all(plain[1:] >= plain[:-1]) and abs(plain[-1].item() - 1.0) < 1e-6


def test_infer_tiling_changes_short_clips_only(tiny):
    cfg = tiny.cfg
    short = _tone(2.0, 700.0, cfg.sample_rate)
    clip = _tone(cfg.clip_samples / cfg.sample_rate, 700.0, cfg.sample_rate)
    with torch.no_grad():
        assert not torch.allclose(tiny(short, tile=True)["latent"], tiny(short, tile=False)["latent"])
        torch.testing.assert_close(tiny(clip, tile=True)["latent"], tiny(clip, tile=False)["latent"])
        # the embedding method is the forward's latent (the query-encoder path)
        torch.testing.assert_close(tiny.embed(short), tiny(short)["latent"])


def test_long_input_stitches_windows(tiny):
    """A long input equals its windows run one by one; a constant signal gives a flat frame axis."""
    cfg = tiny.cfg
    x = torch.randn(1, int(2.2 * cfg.clip_samples), generator=torch.Generator().manual_seed(1)) * 0.1
    starts = tiny.window_starts(x.shape[-1])
    assert starts[0] == 0 and starts[-1] == x.shape[-1] - cfg.clip_samples and len(starts) >= 4
    with torch.no_grad():
        out = tiny(x)
        per = [tiny(x[:, s:s + cfg.clip_samples]) for s in starts]
    torch.testing.assert_close(out["latent"], torch.stack([p["latent"] for p in per]).mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["clipwise"], torch.stack([p["clipwise"] for p in per]).amax(0), atol=1e-6, rtol=0)
    # frame 0 is covered by the first window only: it is that window's first frame-wise value
    torch.testing.assert_close(out["framewise"][0, 0], per[0]["framewise"][0, 0], atol=1e-6, rtol=0)
    # the window batch size changes memory, not results
    tiny.cfg.long_batch = 1
    try:
        with torch.no_grad():
            again = tiny(x)
    finally:
        tiny.cfg.long_batch = htsat_config("tiny").long_batch
    torch.testing.assert_close(again["framewise"], out["framewise"], atol=1e-6, rtol=0)
    assert "framewise" not in tiny(x, framewise=False)


def test_tiny_inputs_and_bad_shapes(tiny):
    with torch.no_grad():
        out = tiny(torch.zeros(1, 10))  # shorter than the STFT padding: zero-extended
    assert torch.isfinite(out["latent"]).all()
    with pytest.raises(ValueError, match="batch, samples"):
        tiny(torch.zeros(1, 1, 32000))
    with pytest.raises(TypeError, match="float"):
        tiny(torch.zeros(1, 32000, dtype=torch.int16))


def test_build_from_config_and_training_step():
    cfg = htsat_config("tiny", num_classes=3)
    model = build_from_config(to_dict(cfg))
    assert isinstance(model, HTSAT) and model.cfg == cfg
    model.train()
    wave = _tone(cfg.clip_samples / cfg.sample_rate, 500.0, cfg.sample_rate, batch=2)
    out = model.forward_mel(model.features(wave))
    loss = torch.nn.functional.binary_cross_entropy(out["clipwise"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None and model.tscam_conv.weight.grad.abs().sum() > 0
    assert model.mel.melW.grad is None  # frozen front end
