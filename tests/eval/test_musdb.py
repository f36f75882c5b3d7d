"""MUSDB18 evaluation on a tiny is_wav tree: known answers for both protocols, resume, summary."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

from .musdb_tree import RATE, STEMS

from separator.eval import deps
from separator.eval import musdb as M
from separator.eval.estimators import MixtureOracle


class Truth:
    """Returns the true stem: the estimate museval must score as (near) perfect."""

    name = "truth"
    needs_references = True

    def estimate(self, mixture, sample_rate, stem, references=None):
        return references[stem].clone()


def _frame_energy_ratio_db(ref: np.ndarray, err: np.ndarray, win: int) -> float:
    """Median over 1-s frames of 10 log10(|s|^2 / |e|^2) — the SDR of an orthogonal interferer."""
    n = ref.shape[0] // win
    vals = [10 * np.log10(np.sum(ref[i * win:(i + 1) * win] ** 2) / np.sum(err[i * win:(i + 1) * win] ** 2)) for i in range(n)]
    return float(np.median(vals))


@pytest.mark.slow
def test_sisec18_truth_and_mixture(tiny_musdb, tmp_path):
    root, tracks = tiny_musdb
    out = tmp_path / "out"
    summary = M.evaluate_musdb(root, [Truth(), MixtureOracle()], out, protocol="sisec18", tracks="A Steady", duration=2.0)
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"truth", "oracle-mixture"}
    # the audio as musdb reads it (ffmpeg s16le), so the expected values see the same samples
    track = M.load_track(M.select_tracks(M.open_musdb(root, "test"), "A Steady")[0], duration=2.0)
    assert track.mixture.shape == (2, 2 * RATE)
    arrays = {s: track.stems[s].double().numpy().T for s in STEMS}
    arrays["mixture"] = track.mixture.double().numpy().T
    assert np.abs(arrays["mixture"] - tracks["A Steady"]["mixture"][: 2 * RATE]).max() < 1e-4  # the files hold what was written
    for s in STEMS:
        # ground truth: museval reports an unbounded (inf) or at least enormous SDR
        assert rows["truth"]["sdr"][s] > 100.0
        # mixture as estimate: the other three stems are the error, orthogonal to the target
        expected = _frame_energy_ratio_db(arrays[s], arrays["mixture"] - arrays[s], RATE)
        assert rows["oracle-mixture"]["sdr"][s] == pytest.approx(expected, abs=0.1)
        mdx = 10 * np.log10((np.sum(arrays[s] ** 2) + 1e-7) / (np.sum((arrays["mixture"] - arrays[s]) ** 2) + 1e-7))
        assert rows["oracle-mixture"]["mdx_sdr_mean"][s] == pytest.approx(mdx, abs=1e-3)
        assert rows["truth"]["mdx_sdr_mean"][s] > 80.0
    # museval's own per-track JSON is written next to qsep's
    museval_json = out / "oracle-mixture" / "sisec18" / "museval" / "test" / "A Steady.json"
    assert [t["name"] for t in json.loads(museval_json.read_text())["targets"]] == list(STEMS)
    md = (out / "summary.md").read_text()
    assert "sisec18" in md and "oracle-mixture" in md and "NON-STANDARD" not in md


def test_zsass_skips_silent_segments_and_resumes(tiny_musdb, tmp_path):
    root, _ = tiny_musdb
    out = tmp_path / "out"
    calls = []

    class Counting(MixtureOracle):
        def estimate(self, mixture, sample_rate, stem, references=None):
            calls.append(stem)
            return super().estimate(mixture, sample_rate, stem, references)

    summary = M.evaluate_musdb(root, [Counting()], out, protocol="zsass")
    res = json.loads((out / "oracle-mixture" / "zsass" / "tracks" / "B Late Vocals.json").read_text())
    assert res["non_standard"] is True and "NON-STANDARD" in res["description"]
    # 4.5 s at 32 kHz -> two whole 2-s segments (tail dropped); vocals start at 2.2 s
    assert res["stems"]["vocals"]["segment_sdr"][0] is None
    assert res["stems"]["vocals"]["evaluated"] == 1 and res["stems"]["vocals"]["skipped"] == 1
    assert res["stems"]["drums"]["evaluated"] == 2 and res["stems"]["drums"]["skipped"] == 0
    # per-track value is the median over the evaluated segments only
    assert res["stems"]["vocals"]["sdr_median"] == res["stems"]["vocals"]["segment_sdr"][1]
    assert "NON-STANDARD" in (out / "summary.md").read_text()
    assert summary["rows"][0]["non_standard"] is True
    # resumable: a second run separates nothing
    n = len(calls)
    again = M.evaluate_musdb(root, [Counting()], out, protocol="zsass")
    assert len(calls) == n
    assert again["rows"] == summary["rows"]


def test_zsass_segments_mono_resampled_tail_dropped():
    proto = M.ZsassProtocol()
    wav = torch.stack([torch.ones(int(4.5 * RATE)), -torch.ones(int(4.5 * RATE)) * 0.5])  # (2, time)
    segs = M.zsass_segments(wav, RATE, proto)
    assert segs.shape == (2, proto.segment_samples)
    assert torch.allclose(segs[:, 1000:-1000], torch.full_like(segs[:, 1000:-1000], 0.25), atol=1e-3)


def test_zsass_wiener_recovers_disjoint_stems():
    """Wiener with the true stems' magnitudes nearly recovers disjoint-band stems."""
    proto = M.ZsassProtocol()
    g = torch.Generator().manual_seed(0)
    n = proto.segment_samples
    freqs = torch.fft.rfftfreq(n, 1 / proto.sample_rate)
    stems = {}
    for name, (lo, hi) in {"a": (100, 400), "b": (1000, 3000), "c": (5000, 9000)}.items():
        spec = torch.fft.rfft(torch.randn(2, n, generator=g))
        spec[:, (freqs < lo) | (freqs > hi)] = 0
        stems[name] = torch.fft.irfft(spec, n=n)  # (segments=2, samples)
    mix = sum(stems.values())
    out = M.zsass_wiener(mix, stems, proto)
    for name, ref in stems.items():
        assert 10 * torch.log10((ref**2).sum() / ((out[name] - ref) ** 2).sum()) > 20.0
    # equal estimates for every source: each output is a third of the mixture (up to the
    # regularisation, which mutes the near-empty bins between the bands)
    equal = M.zsass_wiener(mix, {k: mix for k in stems}, proto)
    for est in equal.values():
        assert 10 * torch.log10(((mix / 3) ** 2).sum() / ((est - mix / 3) ** 2).sum()) > 25.0


def test_summary_is_median_of_medians(tmp_path):
    track_dir = tmp_path / "m" / "zsass" / "tracks"
    track_dir.mkdir(parents=True)
    per_track = {"t1": [1.0, 5.0, 2.0], "t2": [7.0, None, 8.0], "t3": [-1.0, 0.0, 10.0, 11.0, 12.0]}
    for name, segs in per_track.items():
        seg_vals = [v for v in segs if v is not None]
        stems = {"vocals": {"sdr_median": statistics.median(seg_vals), "segment_sdr": segs}}
        (track_dir / f"{name}.json").write_text(json.dumps({"track": name, "non_standard": True, "stems": stems}))
    summary = M.summarize(tmp_path)
    # medians per track: 2.0, 7.5, 10.0 -> 7.5 (the median of all segments would be 6.0)
    assert summary["rows"][0]["sdr"]["vocals"] == 7.5
    all_segments = [v for segs in per_track.values() for v in segs if v is not None]
    assert statistics.median(all_segments) == 6.0
    assert M.summarize(tmp_path, track_names=["t1", "t2"])["rows"][0]["sdr"]["vocals"] == pytest.approx(4.75)


def test_track_selection_errors(tiny_musdb):
    root, _ = tiny_musdb
    db = M.open_musdb(root, "test")
    assert [t.name for t in M.select_tracks(db, 1)] == ["A Steady"]
    assert [t.name for t in M.select_tracks(db, "B Late Vocals")] == ["B Late Vocals"]
    with pytest.raises(ValueError, match="unknown track"):
        M.select_tracks(db, "A Stedy")
    with pytest.raises(FileNotFoundError, match="MUSDB18"):
        M.open_musdb(root / "nope", "test")


def test_import_does_not_pull_musdb_or_museval():
    code = (
        "import sys, separator, separator.eval, separator.eval.musdb, separator.eval.mixtures, separator.cli\n"
        "bad = [m for m in ('musdb', 'museval', 'stempeg') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ffmpeg_says_how_to_install(monkeypatch, tiny_musdb):
    monkeypatch.setattr(deps.shutil, "which", lambda name: None)
    with pytest.raises(deps.FfmpegNotFoundError) as err:
        M.open_musdb(tiny_musdb[0], "test")
    msg = str(err.value)
    assert "apt-get install ffmpeg" in msg and "conda install" in msg and "brew install ffmpeg" in msg


@pytest.mark.slow
def test_unscorable_tracks_are_reported_and_the_others_scored(tiny_musdb, tmp_path):
    """A stem that is digital silence in the evaluated range (issue 17) is left out and reported, and the track's
    other stems are scored; a stem shorter than the mixture fails its track, by name; the other tracks go on."""
    import shutil

    import soundfile as sf

    root, _ = tiny_musdb
    copy = tmp_path / "musdb"
    shutil.copytree(root, copy)
    short = copy / "test" / "C Short Bass"
    shutil.copytree(copy / "test" / "A Steady", short)
    bass, rate = sf.read(short / "bass.wav")
    sf.write(short / "bass.wav", bass[: rate], rate, subtype="PCM_16")
    out = tmp_path / "out"
    summary = M.evaluate_musdb(copy, [MixtureOracle()], out, protocol="sisec18", duration=2.0)
    failed = {f["track"]: f["error"] for f in summary["failed"]}
    assert set(failed) == {"C Short Bass"}
    assert "'bass'" in failed["C Short Bass"] and "fewer than the mixture" in failed["C Short Bass"]
    (row,) = summary["rows"]
    assert row["tracks"] == 2  # A Steady, and B Late Vocals without its silent vocals
    assert row["not_scored"] == {"vocals": 1}
    late = json.loads((out / "oracle-mixture" / "sisec18" / "tracks" / "B Late Vocals.json").read_text())
    assert late["stems"]["vocals"]["sdr_median"] is None and "digital silence" in late["stems"]["vocals"]["not_scored"]
    assert all(late["stems"][s]["sdr_median"] is not None for s in ("drums", "bass", "other"))
    assert json.loads((out / "failed.json").read_text()) == summary["failed"]
    assert "vocals in 1 track(s)" in (out / "summary.md").read_text()
