"""Audio queries: segmentation, the energy gate, and per-file / across-file averaging."""
from __future__ import annotations

import math

import pytest
import torch

from .query_toy import TOY_RATE, FakeDetector, noise_band, tone
from qsep_core import audio as audio_io
from separator.query.audio import (
    AudioQueryEncoder,
    official_floor_dbfs,
    segment_bounds,
    segment_rms_dbfs,
)
from separator.query.errors import NoUsableAudioError, QueryError

SEG = 2.0


def test_segment_bounds_cover_everything_and_keep_segment_length():
    L = 100
    assert segment_bounds(40, L) == [(0, 40)]  # short file: one segment, the whole file
    assert segment_bounds(100, L) == [(0, 100)]
    assert segment_bounds(300, L) == [(0, 100), (100, 200), (200, 300)]
    # the tail is covered by a last segment aligned to the end, overlapping the previous one
    assert segment_bounds(250, L) == [(0, 100), (100, 200), (150, 250)]
    with pytest.raises(ValueError):
        segment_bounds(0, L)


def _segments_mean(det: FakeDetector, mono: torch.Tensor, bounds, keep) -> torch.Tensor:
    with torch.no_grad():
        lat = torch.cat([det(mono[None, a:b])["latent"] for (a, b), k in zip(bounds, keep) if k])
    return lat.mean(dim=0)


def test_file_embedding_is_mean_of_its_segment_latents(tmp_path, fake_detector):
    """A stereo 16 kHz file of 7.3 s: read, down-mixed, resampled, cut into 4 segments, each through the detector."""
    g = torch.Generator().manual_seed(3)
    n = int(7.3 * 16000)
    left = 0.3 * torch.randn(n, generator=g)
    right = tone(440.0, 7.3, rate=16000)
    path = tmp_path / "q.wav"
    audio_io.save(path, torch.stack([left, right]), 16000, bit_depth="32f")

    enc = AudioQueryEncoder(fake_detector, segment_seconds=SEG)
    res = enc.encode_files([path])

    mono, _ = audio_io.load(path, sample_rate=TOY_RATE, channels=1)
    mono = mono[0]
    bounds = segment_bounds(mono.numel(), int(SEG * TOY_RATE))
    assert len(bounds) == 4 and len(res.segments) == 4
    assert all(s.used for s in res.segments)
    expected = _segments_mean(fake_detector, mono, bounds, [True] * 4)
    torch.testing.assert_close(res.condition, expected, rtol=0, atol=1e-6)
    # every detector call got exactly one segment length
    assert {c[-1] for c in fake_detector.calls} == {int(SEG * TOY_RATE)}


def test_tone_plus_long_silence_equals_tone_alone(tmp_path, fake_detector):
    t = tone(700.0, 4.0) + 0.1 * tone(1900.0, 4.0)
    silence = torch.zeros(int(6.0 * TOY_RATE))
    audio_io.save(tmp_path / "tone.wav", t[None], TOY_RATE, bit_depth="32f")
    audio_io.save(tmp_path / "tone_sil.wav", torch.cat([t, silence])[None], TOY_RATE, bit_depth="32f")
    enc = AudioQueryEncoder(fake_detector, segment_seconds=SEG)
    alone = enc.encode_files([tmp_path / "tone.wav"])
    padded = enc.encode_files([tmp_path / "tone_sil.wav"])
    torch.testing.assert_close(padded.condition, alone.condition, rtol=0, atol=1e-7)
    used = [s.used for s in padded.segments]
    assert used == [True, True, False, False, False]
    assert "below floor" in padded.segments[-1].reason
    # the silent segments would change the embedding if they were used: the test can fail
    mono = torch.cat([t, silence])
    bounds = segment_bounds(mono.numel(), int(SEG * TOY_RATE))
    with_silence = _segments_mean(fake_detector, mono, bounds, [True] * len(bounds))
    assert (with_silence - alone.condition).abs().max() > 1e-2


def test_quiet_segments_are_dropped_relative_to_the_file_loudness(fake_detector):
    g = torch.Generator().manual_seed(0)
    loud = tone(500.0, 2.0, amp=0.5)  # about -9 dBFS
    quiet = noise_band(100, 3000, 2.0, g, amp=1e-3)  # about -65 dBFS: above the -80 floor, 56 dB below
    wav = torch.cat([loud, quiet])
    enc = AudioQueryEncoder(fake_detector, segment_seconds=SEG, relative_db=40.0)
    res = enc.encode_waveform(wav, "w")
    assert [s.used for s in res.segments] == [True, False]
    assert "below the loudest" in res.segments[1].reason
    # the same quiet segment alone is usable (it is the loudest of its file)
    assert enc.encode_waveform(quiet, "q").segments[0].used
    # relative gate off: both used
    both = AudioQueryEncoder(fake_detector, segment_seconds=SEG, relative_db=math.inf).encode_waveform(wav, "w")
    assert [s.used for s in both.segments] == [True, True]


def test_silent_file_is_an_error_naming_the_file(tmp_path, fake_detector):
    path = tmp_path / "silent_query.wav"
    audio_io.save(path, torch.zeros(1, 3 * TOY_RATE), TOY_RATE)
    enc = AudioQueryEncoder(fake_detector)
    with pytest.raises(NoUsableAudioError, match="silent_query.wav.*no usable audio"):
        enc.encode_files([path])


def test_short_file_is_one_segment(fake_detector):
    enc = AudioQueryEncoder(fake_detector, segment_seconds=SEG)
    x = tone(800.0, 0.7)
    res = enc.encode_waveform(x, "short")
    assert len(res.segments) == 1 and res.segments[0].end_s == pytest.approx(0.7)
    with torch.no_grad():
        torch.testing.assert_close(res.latent, fake_detector(x[None])["latent"][0], rtol=0, atol=1e-7)


def test_files_are_averaged_as_mean_of_file_means(fake_detector):
    a = torch.cat([tone(300.0, 2.0), tone(2000.0, 2.0)])  # 2 segments
    b = tone(1000.0, 2.0)  # 1 segment
    enc = AudioQueryEncoder(fake_detector, segment_seconds=SEG)
    res = enc.encode_waveforms([a, b], ["a", "b"])
    with torch.no_grad():
        la = fake_detector(torch.stack([a[: 2 * TOY_RATE], a[2 * TOY_RATE :]]))["latent"].mean(0)
        lb = fake_detector(b[None])["latent"][0]
    torch.testing.assert_close(res.condition, (la + lb) / 2, rtol=0, atol=1e-6)
    # not the mean over all three segments
    all3 = (2 * la + lb) / 3
    assert (res.condition - all3).abs().max() > 1e-4
    assert len(res.report_lines()) == 3


def test_official_floor_is_the_official_energy_rule():
    n = int(SEG * 32000)
    floor = official_floor_dbfs(n)
    assert floor == pytest.approx(-58.06, abs=0.01)
    for amp in (2e-3, 1.5e-3, 1e-3):  # sum(x^2) = 0.128, 0.072, 0.032 for a 64000-sample square wave
        x = torch.full((n,), amp) * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
        official_uses = float((x.double() ** 2).sum()) > 0.1
        assert (float(segment_rms_dbfs(x)) > floor) == official_uses


def test_detector_without_sample_rate_needs_one():
    det = torch.nn.Identity()
    with pytest.raises(QueryError, match="sample rate"):
        AudioQueryEncoder(det)


def test_real_htsat_tiny_query_path():
    """With the real (tiny) HTS-AT: a 2-s query embeds like the detector's own forward on the segment (infer path)."""
    htsat = pytest.importorskip("sed.htsat")
    config = pytest.importorskip("sed.config")
    cfg = config.htsat_config("tiny")
    model = htsat.HTSAT(cfg).eval()
    rate = cfg.sample_rate
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(int(4.5 * rate), generator=g)
    enc = AudioQueryEncoder(model, segment_seconds=SEG)
    assert enc.sample_rate == rate
    res = enc.encode_waveform(x, "x")
    bounds = segment_bounds(x.numel(), int(SEG * rate))
    with torch.no_grad():
        expected = torch.cat([model(x[None, a:b])["latent"] for a, b in bounds]).mean(0)
    torch.testing.assert_close(res.latent, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rate", [44100, 11127])
def test_encode_file_streams_and_equals_the_whole_file_path(tmp_path, rate):
    """`qsep embed` / audio queries read a file segment-batch by segment-batch; the result is the whole-file one."""
    import numpy as np
    import soundfile as sf

    from qsep_core import audio as audio_io
    from separator.query import QueryEncoder

    enc = QueryEncoder.from_model(None).audio
    t = np.arange(int(rate * 9.5)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (t < 5)  # the last segments are silent: the gate drops them
    sf.write(tmp_path / "q.wav", np.stack([x, 0.5 * x], 1).astype("float32"), rate, subtype="FLOAT")
    streamed = enc.encode_file(tmp_path / "q.wav")
    wav, _ = audio_io.load(tmp_path / "q.wav", sample_rate=enc.sample_rate, channels=1)
    whole = enc.encode_waveform(wav, name=str(tmp_path / "q.wav"))
    torch.testing.assert_close(streamed.latent, whole.latent, atol=1e-5, rtol=0)  # float rounding (soxr rates: 1.5e-6)
    assert [s.used for s in streamed.segments] == [s.used for s in whole.segments]
    assert not streamed.segments[-1].used
