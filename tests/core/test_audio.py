import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qsep_core import audio


def tone(freq=1000.0, sr=44100, seconds=1.0, channels=1, amp=0.5):
    t = torch.arange(int(sr * seconds)) / sr
    x = amp * torch.sin(2 * math.pi * freq * t)
    return x.repeat(channels, 1)


@pytest.mark.parametrize(
    "ext,bit_depth,tol",
    [(".wav", "16", 1 / 2**15), (".wav", "24", 1 / 2**23), (".wav", "32f", 0.0), (".flac", "16", 1 / 2**15), (".flac", "24", 1 / 2**23)],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip_formats(tmp_path, ext, bit_depth, tol, channels):
    x = torch.rand(channels, 12345, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    path = tmp_path / f"x{ext}"
    audio.save(path, x, 22050, bit_depth=bit_depth)
    y, sr = audio.load(path)
    assert sr == 22050
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert float((y - x).abs().max()) <= tol + 1e-9
    inf = audio.info(path)
    assert (inf.channels, inf.frames, inf.sample_rate) == (channels, 12345, 22050)


@pytest.mark.parametrize("fmt,subtype,ext", [("OGG", "VORBIS", ".ogg"), ("MP3", "MPEG_LAYER_III", ".mp3")])
def test_reads_lossy_formats(tmp_path, fmt, subtype, ext):
    x = tone(440, 44100, 1.0, channels=2, amp=0.3)
    path = tmp_path / f"x{ext}"
    sf.write(path, x.numpy().T, 44100, format=fmt, subtype=subtype)
    y, sr = audio.load(path)
    assert sr == 44100 and y.shape[0] == 2
    # lossy codecs add delay/padding, so compare loudness rather than samples
    n = min(y.shape[-1], x.shape[-1])
    assert abs(float(y[:, :n].pow(2).mean().sqrt()) - float(x.pow(2).mean().sqrt())) < 0.03


def test_resample_round_trip_keeps_tone_level():
    x = tone(1000.0, 44100, 1.0)
    y = audio.resample(audio.resample(x, 44100, 32000), 32000, 44100)
    assert y.shape == x.shape
    core = slice(2000, -2000)  # skip filter edges
    level_db = 20 * math.log10(float(y[..., core].pow(2).mean().sqrt()) / float(x[..., core].pow(2).mean().sqrt()))
    assert abs(level_db) < 0.1


def test_resample_any_leading_dims():
    x = torch.randn(3, 2, 4410)
    y = audio.resample(x, 44100, 32000)
    assert y.shape == (3, 2, 3200)


def test_channel_conversion():
    st = torch.stack([torch.ones(10), -torch.ones(10) * 0.5])
    assert torch.allclose(audio.to_channels(st, 1), torch.full((1, 10), 0.25))
    mono = torch.randn(1, 10)
    assert torch.equal(audio.to_channels(mono, 2), mono.repeat(2, 1))
    with pytest.raises(audio.UnsupportedFormatError, match="6 channels to 2"):
        audio.to_channels(torch.randn(6, 10), 2)


def test_load_with_conversion(tmp_path):
    path = tmp_path / "st.wav"
    audio.save(path, tone(1000, 44100, 0.5, channels=2), 44100, bit_depth="32f")
    y, sr = audio.load(path, sample_rate=32000, channels=1)
    assert sr == 32000 and y.shape == (1, 16000)


def test_missing_file(tmp_path):
    with pytest.raises(audio.AudioNotFoundError, match="not found"):
        audio.load(tmp_path / "nope.wav")
    assert issubclass(audio.AudioNotFoundError, FileNotFoundError)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(200))
    with pytest.raises(audio.AudioDecodeError, match="cannot decode"):
        audio.load(bad)
    txt = tmp_path / "notes.flac"
    txt.write_text("not audio at all")
    with pytest.raises(audio.AudioDecodeError):
        audio.info(txt)


def test_folder_is_not_audio(tmp_path):
    with pytest.raises(audio.AudioDecodeError, match="folder"):
        audio.load(tmp_path)


def test_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(audio.EmptyAudioError, match="no samples"):
        audio.load(path)
    with pytest.raises(audio.EmptyAudioError):
        audio.save(tmp_path / "o.wav", torch.zeros(1, 0), 16000)


def test_non_finite(tmp_path):
    path = tmp_path / "nan.wav"
    x = np.zeros((100, 1), dtype=np.float32)
    x[37, 0] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(audio.NonFiniteAudioError, match=r"1 NaN/inf samples \(first at frame 37 \(0.002 s\), channel 0\)"):
        audio.load(path)
    # the position is in the file, not in the block read
    y = np.zeros((40000, 2), dtype=np.float32)
    y[33000, 1] = np.inf
    sf.write(tmp_path / "late.wav", y, 16000, subtype="FLOAT")
    with audio.AudioReader(tmp_path / "late.wav") as r:
        with pytest.raises(audio.NonFiniteAudioError, match=r"frame 33000 \(2.062 s\), channel 1"):
            list(r.blocks(16000))
    with pytest.raises(audio.NonFiniteAudioError):
        audio.save(tmp_path / "o.wav", torch.tensor([[0.0, float("inf")]]), 16000)
    assert not (tmp_path / "o.wav").exists()


def test_unsupported_output(tmp_path):
    with pytest.raises(audio.UnsupportedFormatError, match="output formats"):
        audio.save(tmp_path / "x.mp3", torch.zeros(1, 10), 16000)
    with pytest.raises(audio.UnsupportedFormatError, match="bit depth"):
        audio.save(tmp_path / "x.flac", torch.zeros(1, 10), 16000, bit_depth="32f")


def test_unwritable_destination(tmp_path):
    with pytest.raises(audio.AudioWriteError, match="does not exist"):
        audio.save(tmp_path / "missing" / "x.wav", torch.zeros(1, 10), 16000)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: simulate with a file where the folder should be
            blocker = tmp_path / "file"
            blocker.write_text("x")
            with pytest.raises(audio.AudioWriteError):
                audio.save(blocker / "x.wav", torch.zeros(1, 10), 16000)
        else:
            with pytest.raises(audio.AudioWriteError):
                audio.save(ro / "x.wav", torch.zeros(1, 10), 16000)
    finally:
        ro.chmod(0o700)


def test_refuses_overwrite_when_asked(tmp_path):
    path = tmp_path / "x.wav"
    audio.save(path, torch.zeros(1, 10), 16000)
    with pytest.raises(audio.AudioWriteError, match="refusing to overwrite"):
        audio.save(path, torch.ones(1, 10) * 0.5, 16000, overwrite=False)
    assert float(audio.load(path)[0].abs().max()) == 0.0


def test_interrupted_save_keeps_previous_file(tmp_path):
    path = tmp_path / "keep.wav"
    audio.save(path, torch.full((1, 1000), 0.25), 16000, bit_depth="32f")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated crash"):
        with audio.AudioWriter(path, 16000, 1, bit_depth="32f") as w:
            w.write(torch.zeros(1, 500))
            raise RuntimeError("simulated crash")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_failed_write_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.flac"
    audio.save(path, torch.full((1, 1000), 0.25), 16000)
    before = path.read_bytes()
    calls = {"n": 0}
    real_write = sf.SoundFile.write

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", flaky)
    with pytest.raises(audio.AudioWriteError, match="No space left"):
        with audio.AudioWriter(path, 16000, 1) as w:
            w.write(torch.zeros(1, 100))
            w.write(torch.zeros(1, 100))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.flac"]


def test_block_read_write(tmp_path):
    src = torch.rand(2, 10007, generator=torch.Generator().manual_seed(3)) - 0.5
    path = tmp_path / "src.wav"
    audio.save(path, src, 8000, bit_depth="32f")
    out = tmp_path / "copy.flac"
    with audio.AudioReader(path) as r, audio.AudioWriter(out, r.sample_rate, r.channels, bit_depth="24") as w:
        sizes = []
        for block in r.blocks(1000):
            sizes.append(block.shape[-1])
            w.write(block)
    assert sizes == [1000] * 10 + [7]
    y, _ = audio.load(out)
    assert float((y - src).abs().max()) < 1 / 2**22
    with audio.AudioReader(path) as r:
        assert torch.equal(r.read(5000, 10), src[:, 5000:5010])
        assert r.read(10000, 100).shape == (2, 7)


def test_clipping_is_counted(tmp_path):
    w = audio.save(tmp_path / "loud.wav", torch.tensor([[0.5, 1.5, -2.0, 0.1]]), 16000)
    assert w.clipped == 2 and w.peak == 2.0
    w = audio.save(tmp_path / "loud_f.wav", torch.tensor([[0.5, 1.5, -2.0, 0.1]]), 16000, bit_depth="32f")
    assert w.clipped == 0
    y, _ = audio.load(tmp_path / "loud_f.wav")
    assert float(y.abs().max()) == 2.0


@pytest.mark.parametrize("rate", [44100, 48000, 16000, 11127])
def test_read_resampled_equals_slicing_the_resampled_whole_file(tmp_path, rate):
    """Bounded-memory reads of a span at another rate give the samples of resampling the whole file."""
    from qsep_core.audio import AudioReader, load, resampled_length

    rng = np.random.default_rng(rate)
    x = (0.2 * rng.standard_normal((int(rate * 3.7), 2))).astype("float32")
    path = tmp_path / "x.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    whole, _ = load(path, sample_rate=32000, channels=1)
    with AudioReader(path) as r:
        n = r.resampled_frames(32000)
        assert n == whole.shape[-1] == resampled_length(x.shape[0], rate, 32000)
        for start, frames in [(0, 64000), (40000, 32000), (n - 5000, 64000), (12345, 1)]:
            part = r.read_resampled(start, frames, 32000, channels=1)
            torch.testing.assert_close(part, whole[:, start: start + frames], atol=1e-6, rtol=0)
