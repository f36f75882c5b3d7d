"""Pictures: block-wise spectrograms (known answers on tones), `separate --plot`, evaluation charts."""
import math

import pytest
import torch

from qsep_core import audio
from separator import plots


def _tones(path, freqs, rate=16000, seconds=3.0, channels=2):
    t = torch.arange(int(rate * seconds)) / rate
    x = sum(0.3 * torch.sin(2 * math.pi * f * t) for f in freqs)
    audio.save(path, x.repeat(channels, 1), rate, bit_depth="32f")
    return path


def test_spectrogram_finds_the_tones_and_does_not_depend_on_the_block_size(tmp_path):
    path = _tones(tmp_path / "two.wav", [1000.0, 3000.0])
    whole = plots.file_spectrogram(path, block_seconds=100.0)
    blocks = plots.file_spectrogram(path, block_seconds=0.37)  # blocks that do not hold whole frames
    assert whole.power.shape == blocks.power.shape == (1025, 1 + (48000 - 2048) // 512)
    torch.testing.assert_close(blocks.power, whole.power, rtol=1e-5, atol=1e-12)
    bins = torch.fft.rfftfreq(2048, 1 / 16000)
    peaks = sorted(bins[torch.topk(whole.power.mean(dim=1), 2).indices].tolist())
    assert peaks == [1000.0, 3000.0]
    assert whole.duration == 3.0 and whole.sample_rate == 16000


def test_spectrogram_of_a_long_file_is_averaged_into_columns(tmp_path):
    path = _tones(tmp_path / "long.wav", [500.0], seconds=20.0, channels=1)
    spec = plots.file_spectrogram(path, max_columns=50, block_seconds=3.0)
    assert spec.power.shape == (1025, 50)
    # a steady tone: every column holds the same mean power
    col = spec.power[64]  # the 500 Hz bin: 16 kHz / 2048 = 7.8125 Hz per bin
    assert float(col.std() / col.mean()) < 1e-3


def test_spectrogram_of_a_file_shorter_than_one_fft(tmp_path):
    path = _tones(tmp_path / "short.wav", [2000.0], seconds=0.05)
    spec = plots.file_spectrogram(path)
    assert spec.power.shape == (1025, 1) and int(spec.power[:, 0].argmax()) == 256


def test_plot_separation_writes_a_png(tmp_path):
    mix = _tones(tmp_path / "mix.wav", [1000.0, 3000.0])
    tgt = _tones(tmp_path / "t.wav", [1000.0])
    res = _tones(tmp_path / "r.wav", [3000.0])
    out = plots.plot_separation(mix, {"target": tgt, "residual": res}, tmp_path / "cmp.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.part"))  # written atomically


def test_evaluation_charts(tmp_path):
    summary = {"rows": [
        {"method": m, "protocol": "sisec18", "non_standard": False, "sdr": {"vocals": v, "drums": v - 1},
         "sdr_mean_over_stems": v - 0.5} for m, v in (("model", 3.0), ("oracle-mixture", -4.0), ("oracle-irm", 9.0))]}
    assert plots.plot_musdb_summary(summary, tmp_path / "m.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_musdb_summary({"rows": []}, tmp_path / "x.png")
    results = [{"method": m, "query_kind": "text", "settings": {"oracle": None if m == "model" else m},
                "per_class": {"dog": {"sdr": v, "held_out": False}, "chirp": {"sdr": v - 2, "held_out": True}},
                "seen": {"sdr": v}, "held_out": {"sdr": v - 2}}
               for m, v in (("model", 2.0), ("oracle-irm", 8.0))]
    assert plots.plot_mixture_results(results, tmp_path / "x.png").stat().st_size > 5000
    assert plots._method_label(results[0]) == "model (text)" and plots._method_label(results[1]) == "oracle-irm"
    with pytest.raises(ValueError, match="no mixture results"):
        plots.plot_mixture_results([], tmp_path / "y.png")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from qsep_core.extras import MissingExtraError

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr("importlib.import_module", lambda name: no_matplotlib(name))
    with pytest.raises(MissingExtraError, match=r"'plots' extra"):
        plots.plot_musdb_summary({"rows": [{"method": "m", "protocol": "p", "sdr": {"a": 1.0}}]}, tmp_path / "x.png")
