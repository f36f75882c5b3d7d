"""Anchor detection on planted probability curves, and the sharded, resumable mining driver."""
from __future__ import annotations

import math

import pytest
import torch

from qsep_core.manifest import ManifestError
from sed.mining import Anchor, MiningConfig, MiningError, find_anchors, load_manifest, mine, shard_paths

from .fakes import RATE, FakeDetector, PlantedDataset

STEP = 0.1  # seconds per frame of the planted curves
TIMES = torch.arange(100, dtype=torch.float64) * STEP  # a 10 s clip


def curve(*events: tuple[float, float, float]) -> torch.Tensor:
    """(100,) probabilities: ``height`` on [start, end) seconds, 0.02 elsewhere."""
    p = torch.full((100,), 0.02, dtype=torch.float64)
    for a, b, h in events:
        p[round(a / STEP): round(b / STEP)] = h
    return p


def test_event_in_the_middle_is_centred():
    (a,) = find_anchors(curve((4.0, 5.0, 0.9)), TIMES)
    assert a.start == pytest.approx(3.5) and a.end == pytest.approx(5.5)
    # window mean: 10 frames of 0.9 and 10 of 0.02
    assert a.confidence == pytest.approx((10 * 0.9 + 10 * 0.02) / 20)


def test_long_event_gives_a_window_inside_it():
    (a,) = find_anchors(curve((1.0, 6.0, 0.8)), TIMES)
    assert 1.0 - 1e-9 <= a.start and a.end <= 6.0 + 1e-9
    assert a.confidence == pytest.approx(0.8)


def test_event_at_the_very_start_is_clamped_inside_the_clip():
    (a,) = find_anchors(curve((0.0, 0.5, 0.9)), TIMES)
    assert a.start == 0.0 and a.end == pytest.approx(2.0)


def test_event_at_the_very_end_is_clamped_inside_the_clip():
    (a,) = find_anchors(curve((9.6, 10.0, 0.9)), TIMES)
    assert a.end == pytest.approx(10.0) and a.start == pytest.approx(8.0)


def test_clip_shorter_than_the_segment_is_one_whole_anchor():
    times = torch.arange(15, dtype=torch.float64) * STEP
    prob = torch.linspace(0, 1, 15)
    anchors = find_anchors(prob, times, segment_seconds=2.0)
    assert anchors == [Anchor(0.0, pytest.approx(1.5), pytest.approx(float(prob.double().mean())))]
    assert find_anchors(prob, times, min_prob=0.9) == []


def test_several_non_overlapping_anchors_best_first():
    p = curve((2.0, 3.0, 0.9), (7.0, 7.5, 0.6))
    anchors = find_anchors(p, TIMES, max_anchors=3)
    assert len(anchors) == 3
    assert anchors[0].start == pytest.approx(1.5)  # the strong event, centred
    assert anchors[1].start <= 7.0 and anchors[1].end >= 7.5  # the weak one is covered
    assert [a.confidence for a in anchors] == sorted((a.confidence for a in anchors), reverse=True)
    for i in range(3):
        for j in range(i + 1, 3):
            x, y = anchors[i], anchors[j]
            assert x.end <= y.start + 1e-9 or y.end <= x.start + 1e-9, (x, y)


def test_min_prob_drops_weak_windows():
    p = curve((2.0, 4.0, 0.9), (7.0, 7.4, 0.5))
    anchors = find_anchors(p, TIMES, max_anchors=5, min_prob=0.5)
    assert len(anchors) == 1 and anchors[0].start == pytest.approx(2.0)
    assert find_anchors(curve((2.0, 3.0, 0.3)), TIMES, min_prob=0.5) == []


def test_many_anchors_stop_when_the_clip_is_used_up():
    anchors = find_anchors(curve(), TIMES, max_anchors=100)
    assert 1 <= len(anchors) <= 5  # at most five disjoint 2 s windows fit in 10 s


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        find_anchors(torch.zeros(5), torch.arange(6.0))
    with pytest.raises(ValueError, match="NaN"):
        find_anchors(torch.tensor([0.0, math.nan]), torch.arange(2.0))


# ---------------------------------------------------------------------------------------------
# driver

EVENTS = [
    [(0, 4.0, 5.0)],
    [(1, 0.0, 1.0)],
    [(0, 8.5, 10.0), (1, 2.0, 3.0)],
    [(0, 1.0, 2.0)],
    [(1, 6.0, 7.0)],
    [(0, 0.2, 0.6)],
    [(0, 3.0, 3.5), (1, 5.0, 6.0)],
]


def _config(**kw) -> MiningConfig:
    base = dict(shard_size=3, batch_size=2, accelerator="cpu", devices=1)
    base.update(kw)
    return MiningConfig(**base)


def test_driver_writes_shards_with_recomputed_latents(tmp_path):
    ds = PlantedDataset(EVENTS)
    out = mine(FakeDetector(), ds, tmp_path / "mined", _config())
    for s in range(3):
        assert all(p.is_file() for p in shard_paths(out, s))
    m = load_manifest(out)
    assert len(m) == 9 and m.sample_rate == RATE and m.class_names == ["up", "down"]
    first = m.segments.iloc[0]
    assert (first.clip_id, first.label, first.label_name, first.audio_path) == ("clip0", 0, "up", "/data/clip0.wav")
    assert (first.start, first.end) == (pytest.approx(3.5), pytest.approx(5.5))
    # latent recomputed on the 2 s crop: half of it is the +1 event
    assert m.latents[0].tolist() == pytest.approx([0.5, 0.5, 2.0])
    both = m.segments[m.segments.clip_id == "clip2"]
    assert list(both.label) == [0, 1] and all(c == (0, 1) for c in both.clip_labels)
    row = m.segments.index[(m.segments.clip_id == "clip2") & (m.segments.label == 0)][0]
    assert m.segments.loc[row, "end"] == pytest.approx(10.0)
    assert m.latents[row].tolist() == pytest.approx([0.75, 0.75, 2.0])


def test_short_clips_and_stored_audio(tmp_path):
    ds = PlantedDataset([[(0, 0.5, 1.0)], [(1, 1.0, 2.0)]], seconds=[1.5, 4.0])
    m = load_manifest(mine(FakeDetector(), ds, tmp_path / "m", _config(store_audio=True)))
    assert (m.segments.start[0], m.segments.end[0]) == (0.0, pytest.approx(1.5))
    assert m.latents[0, 2].item() == pytest.approx(1.5)  # the whole short clip
    assert m.audio.shape == (2, 2 * RATE) and m.audio_length.tolist() == [1500, 2000]
    assert m.audio[0, 500:1000].eq(1).all() and m.audio[0, 1500:].eq(0).all()


def test_kill_and_resume_gives_the_same_manifest(tmp_path):
    ds = PlantedDataset(EVENTS)
    mine(FakeDetector(), ds, tmp_path / "whole", _config())

    class Killed(RuntimeError):
        pass

    def kill_after_first(shard: int) -> None:
        raise Killed(f"simulated kill after shard {shard}")

    with pytest.raises(Killed):
        mine(FakeDetector(), ds, tmp_path / "resumed", _config(), on_shard_written=kill_after_first)
    assert shard_paths(tmp_path / "resumed", 0)[0].is_file()
    assert not shard_paths(tmp_path / "resumed", 1)[0].is_file()
    with pytest.raises(ManifestError, match="incomplete"):
        load_manifest(tmp_path / "resumed")
    written: list[int] = []
    mine(FakeDetector(), ds, tmp_path / "resumed", _config(), on_shard_written=written.append)
    assert written == [1, 2]  # the finished shard was skipped
    for s in range(3):
        for a, b in zip(shard_paths(tmp_path / "whole", s), shard_paths(tmp_path / "resumed", s)):
            assert a.read_bytes() == b.read_bytes(), a.name


def test_resume_with_other_settings_is_refused(tmp_path):
    ds = PlantedDataset(EVENTS)
    mine(FakeDetector(), ds, tmp_path / "m", _config())
    with pytest.raises(MiningError, match="other settings"):
        mine(FakeDetector(), ds, tmp_path / "m", _config(segment_seconds=1.0))


def test_dataset_without_paths_needs_store_audio(tmp_path):
    ds = PlantedDataset(EVENTS)
    del ds.paths
    with pytest.raises(MiningError, match="store_audio"):
        mine(FakeDetector(), ds, tmp_path / "m", _config())


@pytest.mark.slow
def test_ddp_mining_gives_the_same_shards(tmp_path):
    """Two CPU processes (DDP, gloo) take whole shards each; the manifest equals a one-process run."""
    ds = PlantedDataset(EVENTS)
    mine(FakeDetector(), ds, tmp_path / "one", _config())
    mine(FakeDetector(), ds, tmp_path / "two", _config(devices=2, strategy="ddp_spawn"))
    for s in range(3):
        for a, b in zip(shard_paths(tmp_path / "one", s), shard_paths(tmp_path / "two", s)):
            assert a.read_bytes() == b.read_bytes(), a.name


def test_mine_skips_bad_clips_only_when_told(tmp_path):
    """A corrupt clip stops `qsep mine` naming it (strict default); --max-bad-clips 1 skips it and mines the rest."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from separator.cli import app

    data = Path(__file__).resolve().parents[1] / "data" / "starter_events"
    shutil.copy(data / "rain.flac", tmp_path / "rain.flac")
    shutil.copy(data / "dog.flac", tmp_path / "dog.flac")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "clips.csv").write_text('path,labels\nrain.flac,Rain\nbroken.wav,Rain\ndog.flac,"Canidae, dogs, wolves"\n')
    runner = CliRunner()
    args = ["mine", "--data", str(tmp_path / "clips.csv"), "--accelerator", "cpu", "--batch-size", "2"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "strict")])
    assert res.exit_code == 1 and "broken.wav" in res.output and "--max-bad-clips" in " ".join(res.output.split())
    res = runner.invoke(app, args + ["--out", str(tmp_path / "lenient"), "--max-bad-clips", "1"])
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "lenient")
    assert sorted(Path(p).name for p in set(m.segments.audio_path)) == ["dog.flac", "rain.flac"]
