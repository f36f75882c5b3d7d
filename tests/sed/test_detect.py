"""``qsep detect`` and the event extraction behind it."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from qsep_core.audio import save
from separator.checkpoint import Component, save_model
from separator.cli import app
from qsep_core.config import to_dict
from sed.config import htsat_config
from sed.detect import Event, events_from_framewise
from sed.htsat import HTSAT

NAMES = ["dog", "siren", "speech"]


def test_events_from_planted_framewise():
    times = torch.arange(10) * 0.5  # frames start every 0.5 s; the signal lasts 4.8 s
    fw = torch.zeros(10, 3)
    fw[2:5, 0] = torch.tensor([0.6, 0.9, 0.7])  # dog 1.0-2.5 s
    fw[8:, 0] = 0.8  # dog again to the end
    fw[0, 2] = 0.55  # speech in the first frame only
    fw[:, 1] = 0.4  # siren never above threshold
    ev = events_from_framewise(fw, times, 4.8, threshold=0.5, class_names=NAMES)
    assert ev == [
        Event("speech", 2, 0.0, 0.5, 0.55),
        Event("dog", 0, 1.0, 2.5, 0.9),
        Event("dog", 0, 4.0, 4.8, 0.8),
    ]
    assert events_from_framewise(fw, times, 4.8, classes=[1]) == []
    unnamed = events_from_framewise(fw, times, 4.8, classes=[2])
    assert [e.label for e in unnamed] == ["class_2"]
    with pytest.raises(ValueError, match="does not match"):
        events_from_framewise(fw, times[:5], 4.8)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = htsat_config("tiny", num_classes=len(NAMES))
    model = HTSAT(cfg)
    path = tmp_path_factory.mktemp("models") / "tiny-sed"
    save_model(path, {"detector": Component("htsat", to_dict(cfg), model.state_dict())},
               metadata={"class_names": NAMES, "preset": "tiny"})
    return path


def _write_tone(path, seconds, sr=16000, channels=2):
    t = torch.arange(int(seconds * sr)) / sr
    wav = 0.3 * torch.sin(2 * math.pi * 660 * t)
    save(path, wav.repeat(channels, 1), sr)
    return path


def test_cli_detect_prints_events(tiny_folder, tmp_path):
    short = _write_tone(tmp_path / "short.wav", 3.0)
    runner = CliRunner()
    res = runner.invoke(app, ["detect", str(short), "--model", str(tiny_folder), "--threshold", "0.01"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(str(short)) and "3.00 s" in lines[0] and "frame threshold 0.01" in lines[0]
    assert lines[1].split() == ["label", "start", "s", "end", "s", "conf."]  # a header names the columns
    # every class is above a 1 % threshold somewhere: one line per event, named by the folder's class names
    labels = {ln.split()[0] for ln in lines[2:]}
    assert labels == set(NAMES)
    res = runner.invoke(app, ["detect", str(short), "--model", str(tiny_folder), "--threshold", "0.01",
                              "--top-k", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert len(doc) == 1 and doc[0]["file"] == str(short) and doc[0]["duration"] == 3.0
    events = doc[0]["events"]
    assert events and len({e["label"] for e in events}) == 1
    for e in events:
        assert 0.0 <= e["start"] < e["end"] <= 3.0 and 0.01 < e["confidence"] < 1.0


def test_cli_detect_long_file_and_plot(tiny_folder, tmp_path):
    long = _write_tone(tmp_path / "long.wav", 23.0, sr=32000, channels=1)
    png = tmp_path / "act.png"
    res = CliRunner().invoke(app, ["detect", str(long), "--model", str(tiny_folder), "--json", "--plot", str(png),
                                   "--threshold", "0.01"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)[0]
    assert doc["duration"] == 23.0
    assert max(e["end"] for e in doc["events"]) == 23.0  # the tail is covered
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_detect_bad_inputs(tiny_folder, tmp_path):
    good = _write_tone(tmp_path / "ok.wav", 1.0)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    missing = tmp_path / "missing.wav"
    runner = CliRunner()
    res = runner.invoke(app, ["detect", str(missing), str(good), str(corrupt), "--model", str(tiny_folder)])
    assert res.exit_code == 1
    out = res.output
    assert "missing.wav" in out and "not found" in out
    assert "corrupt.wav" in out and "cannot decode" in out
    assert f"{good}  (1.00 s" in out  # the readable file is still reported
    assert "2 of 3 file(s) could not be read" in out
    res = runner.invoke(app, ["detect", str(good), "--model", str(tmp_path / "no-model")])
    assert res.exit_code == 1 and "cannot load the detector" in res.output
    res = runner.invoke(app, ["detect", str(good), "--model", str(tiny_folder), "--threshold", "1"])
    assert res.exit_code == 1 and "--threshold" in res.output


@pytest.mark.slow
def test_cli_detect_refuses_too_short_and_overflowing_inputs(tmp_path):
    """Issue 17: a 1-sample input gave 4 zero-length events at 0.999; a huge finite input gave NaN scores and
    invalid JSON. Both are now one error line each, and --json output stays valid JSON."""
    import json

    import numpy as np
    import soundfile as sf
    from typer.testing import CliRunner

    from qsep_core.config import to_dict
    from sed.config import htsat_config
    from sed.htsat import HTSAT
    from separator.checkpoint import Component, save_model
    from separator.cli import app

    torch.manual_seed(0)
    cfg = htsat_config("tiny")
    model = save_model(tmp_path / "det", {"detector": Component("htsat", to_dict(cfg), HTSAT(cfg).state_dict())})
    one = tmp_path / "one.wav"
    sf.write(one, np.full((1, 1), 0.5, np.float32), 32000)
    huge = tmp_path / "huge.wav"
    sf.write(huge, np.full((32000, 1), 3.0e38, np.float32), 32000, subtype="FLOAT")
    fine = tmp_path / "fine.wav"
    sf.write(fine, (0.1 * np.random.default_rng(0).standard_normal((32000, 1))).astype(np.float32), 32000)
    res = CliRunner().invoke(app, ["detect", str(one), str(huge), str(fine), "-m", str(model), "--json"])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "needs at least 100 ms" in out and "far beyond full scale" in out
    doc = res.stdout[res.stdout.index("["): res.stdout.rindex("]") + 1]
    assert [d["file"] for d in json.loads(doc)] == [str(fine)]


@pytest.mark.parametrize("rate", [44100, 11127])
def test_detect_file_streams_and_equals_the_whole_signal(tiny_folder, tmp_path, rate, monkeypatch):
    """`qsep detect` reads a long file window by window; events, clip scores and frames are the whole-signal ones."""
    import numpy as np
    import soundfile as sf

    import sed
    from qsep_core.audio import load
    from sed import detect as det_mod
    from sed.detect import detect_file, detect_wave

    model = sed.load_detector(tiny_folder)
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * 27.3)) / rate
    x = 0.1 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 0.1 * t) > 0) + 0.3 * np.sin(2 * np.pi * 900 * t)
    sf.write(tmp_path / "long.wav", np.stack([x, 0.5 * x], 1).astype("float32"), rate, subtype="FLOAT")
    streamed = detect_file(model, tmp_path / "long.wav", threshold=0.4)
    wav, _ = load(tmp_path / "long.wav", sample_rate=model.cfg.sample_rate, channels=1)
    whole = detect_wave(model, wav[0], threshold=0.4, path=str(tmp_path / "long.wav"))
    assert streamed.events == whole.events and streamed.events
    assert streamed.clipwise == whole.clipwise and streamed.duration == whole.duration
    torch.testing.assert_close(streamed.framewise, whole.framewise, atol=1e-5, rtol=0)
    # a long file keeps pooled frames for plotting: the maximum over bins, at the bins' start times
    monkeypatch.setattr(det_mod, "PLOT_FRAMES", 100)
    pooled = detect_file(model, tmp_path / "long.wav", threshold=0.4)
    assert pooled.events == whole.events and pooled.framewise.shape[0] <= 100
    pool = -(-whole.framewise.shape[0] // pooled.framewise.shape[0])
    torch.testing.assert_close(pooled.framewise[1], whole.framewise[pool: 2 * pool].max(dim=0).values, atol=1e-5, rtol=0)
    assert abs(float(pooled.frame_times[1]) - float(whole.frame_times[pool])) < 1e-4
