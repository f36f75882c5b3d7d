"""Music part of the starter corpus: MUSDB18-layout tracks with drums / bass / other / vocals.

Accompaniment: a chord chart + an MMA groove -> one MIDI file whose tracks MMA names ``Drum*``,
``Bass*``/``Walk*`` and others; the MIDI is split per stem and each stem is rendered on its own
with fluidsynth and a General MIDI soundfont. Vocals: a melody on the chord tones, sung on
syllables that espeak-ng speaks, each note pitch-shifted to its MIDI pitch and held by looping
the vowel. Stems are levelled, quantized to the 16-bit grid and summed, so the mixture is the
exact sum of the stems as written.

Arrays are numpy ``float32``; stereo signals are shaped ``(2, samples)``.
"""
from __future__ import annotations

import math
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .events import DATA_DIR, CorpusError, _data_lines, rms_db

CHARTS_TXT = DATA_DIR / "charts.txt"
#: MUSDB18 stem names (mixture = their sum).
STEMS = ("vocals", "drums", "bass", "other")
#: Largest value of the 16-bit grid the stems are quantized to (``separator.audio.save`` scales by 2**15).
PCM16_SCALE = 32768.0

_NOTE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
#: Chord quality -> intervals (semitones above the root) of its tones.
QUALITIES = {
    "": (0, 4, 7), "m": (0, 3, 7), "7": (0, 4, 7, 10), "m7": (0, 3, 7, 10), "maj7": (0, 4, 7, 11),
    "6": (0, 4, 7, 9), "m6": (0, 3, 7, 9), "sus4": (0, 5, 7), "dim": (0, 3, 6),
}
_CHORD = re.compile(r"^([A-G])([#b]?)(.*)$")


# ----------------------------------------------------------------------------- charts
def parse_chord(symbol: str) -> tuple[int, str]:
    """``"Bbm7"`` -> ``(10, "m7")`` (root pitch class, quality)."""
    m = _CHORD.match(symbol.strip())
    if not m or m.group(3) not in QUALITIES:
        raise CorpusError(f"chord {symbol!r} not understood (qualities: {sorted(QUALITIES)})")
    pc = (_NOTE[m.group(1)] + {"": 0, "#": 1, "b": -1}[m.group(2)]) % 12
    return pc, m.group(3)


def transpose_chord(symbol: str, semitones: int) -> str:
    pc, q = parse_chord(symbol)
    return _NAMES[(pc + semitones) % 12] + q


def chord_tones(symbol: str) -> list[int]:
    """Pitch classes of a chord."""
    pc, q = parse_chord(symbol)
    return [(pc + i) % 12 for i in QUALITIES[q]]


def read_charts(path: Path = CHARTS_TXT) -> dict[str, list[str]]:
    out = {}
    for ln in _data_lines(path):
        name, _, chords = ln.partition(":")
        out[name.strip()] = chords.split()
        for c in out[name.strip()]:
            parse_chord(c)
    return out


@dataclass(frozen=True)
class Note:
    """A sung note: start and length in beats, MIDI pitch, syllable index."""

    start: float
    beats: float
    pitch: int
    syllable: int


RHYTHMS = ((4.0,), (2.0, 2.0), (1.0, 1.0, 2.0), (2.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0), (3.0, 1.0), (1.5, 0.5, 2.0), (1.0, 2.0, 1.0))


def make_melody(chords: Sequence[str], low: int, high: int, n_syllables: int, rng: np.random.Generator, rest_bar_p: float = 0.2, rest_note_p: float = 0.15) -> list[Note]:
    """A 4/4 melody on the chord tones of each bar, within MIDI pitches ``[low, high]``."""
    notes: list[Note] = []
    prev = (low + high) // 2
    for bar, chord in enumerate(chords):
        if rng.random() < rest_bar_p:
            continue
        tones = set(chord_tones(chord))
        cands = [p for p in range(low, high + 1) if p % 12 in tones]
        t = bar * 4.0
        for beats in RHYTHMS[int(rng.integers(len(RHYTHMS)))]:
            if rng.random() >= rest_note_p:
                near = sorted(cands, key=lambda p: (abs(p - prev), p))[:3]
                prev = near[int(rng.integers(len(near)))]
                notes.append(Note(t, beats, prev, int(rng.integers(n_syllables))))
            t += beats
    return notes


# ----------------------------------------------------------------------------- MIDI
def stem_of_track(name: str) -> str:
    """MMA track name -> stem: ``Drum*`` -> drums, ``Bass*``/``Walk*`` -> bass, anything else -> other."""
    n = name.upper()
    if n.startswith("DRUM"):
        return "drums"
    if n.startswith("BASS") or n.startswith("WALK"):
        return "bass"
    return "other"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 0
    while i + 8 <= len(data):
        tag, n = data[i:i + 4], struct.unpack(">I", data[i + 4:i + 8])[0]
        out.append((tag, data[i + 8:i + 8 + n]))
        i += 8 + n
    return out


def track_name(track: bytes) -> str:
    """The first track-name meta event (FF 03) of an MTrk chunk, or ''."""
    j = track.find(b"\xff\x03")
    if j < 0:
        return ""
    n = track[j + 2]
    return track[j + 3:j + 3 + n].decode("latin-1")


def split_midi(data: bytes) -> dict[str, bytes]:
    """Split a format-1 MIDI file into one file per stem (each keeps the tempo track, track 0).

    Returns:
        stem -> MIDI bytes, for the stems that have at least one track.
    """
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"MThd":
        raise CorpusError("not a MIDI file (no MThd)")
    fmt, _, division = struct.unpack(">HHH", chunks[0][1][:6])
    tracks = [c for t, c in chunks[1:] if t == b"MTrk"]
    if fmt != 1 or len(tracks) < 2:
        raise CorpusError(f"expected a format-1 MIDI file with a tempo track and instrument tracks, got format {fmt} with {len(tracks)} tracks")
    by_stem: dict[str, list[bytes]] = {}
    for tr in tracks[1:]:
        by_stem.setdefault(stem_of_track(track_name(tr)), []).append(tr)
    out = {}
    for stem, trs in by_stem.items():
        body = b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in [tracks[0], *trs])
        out[stem] = b"MThd" + struct.pack(">IHHH", 6, 1, len(trs) + 1, division) + body
    return out


# ----------------------------------------------------------------------------- voice
def estimate_f0(x: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 500.0) -> float:
    """Median autocorrelation pitch (Hz) of 40-ms frames of the loud middle of ``x``."""
    n = int(0.04 * sample_rate)
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    mid = x[x.size // 5: x.size * 4 // 5]
    f0s = []
    for s in range(0, max(1, mid.size - n), n // 2):
        fr = mid[s:s + n] - mid[s:s + n].mean()
        if fr.size < n or np.sqrt(np.mean(fr ** 2)) < 1e-3:
            continue
        ac = np.correlate(fr, fr, mode="full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(sample_rate / lag)
    if not f0s:
        raise CorpusError("no voiced frame found in a sung syllable")
    return float(np.median(f0s))


def sing_note(syllable: np.ndarray, f0: float, pitch: int, length: int, sample_rate: int) -> np.ndarray:
    """A syllable shifted to MIDI ``pitch`` and held for ``length`` samples (vowel looped)."""
    ratio = 440.0 * 2 ** ((pitch - 69) / 12) / f0
    pos = np.arange(0, syllable.size - 1, ratio)
    y = np.interp(pos, np.arange(syllable.size), syllable).astype(np.float32)
    if y.size < length:
        core = y[int(0.3 * y.size): int(0.7 * y.size)]
        fade = min(int(0.01 * sample_rate), core.size // 4)
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        while y.size < length and core.size > 2 * fade > 0:
            joined = y[-fade:] * ramp[::-1] + core[:fade] * ramp
            y = np.concatenate([y[:-fade], joined, core[fade:]])
        y = np.pad(y, (0, max(0, length - y.size)))
    y = y[:length].copy()
    a, r = min(int(0.01 * sample_rate), length // 4), min(int(0.05 * sample_rate), length // 3)
    if a:
        y[:a] *= np.linspace(0, 1, a)
    if r:
        y[-r:] *= np.linspace(1, 0, r)
    return y


def render_vocals(notes: Sequence[Note], syllables: Sequence[tuple[np.ndarray, float]], tempo: float, samples: int, sample_rate: int) -> np.ndarray:
    """Mono vocal line ``(samples,)`` from notes and (syllable wave, f0) pairs."""
    out = np.zeros(samples, dtype=np.float32)
    beat = 60.0 / tempo * sample_rate
    for n in notes:
        start = int(round(n.start * beat))
        if start >= samples:
            break
        length = min(int(round(n.beats * beat * 0.92)), samples - start)
        wave, f0 = syllables[n.syllable]
        out[start:start + length] += sing_note(wave, f0, n.pitch, length, sample_rate)
    return out


# ----------------------------------------------------------------------------- mixing
def quantize(x: np.ndarray) -> np.ndarray:
    """Round to the 16-bit grid that :func:`separator.audio.save` writes exactly."""
    return (np.clip(np.round(x * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1) / PCM16_SCALE).astype(np.float32)


def mix_stems(stems: dict[str, np.ndarray], levels_db: dict[str, float], peak_limit: float = 0.9) -> dict[str, np.ndarray]:
    """Level each stem to its RMS target, scale all together below ``peak_limit``, quantize.

    Args:
        stems: name -> ``(2, samples)``; silent stems stay silent.
        levels_db: name -> RMS target in dBFS.

    Returns:
        The quantized stems plus ``"mixture"``, their exact sum (on the 16-bit grid).
    """
    out = {}
    for k, v in stems.items():
        lvl = rms_db(v)
        out[k] = v * 10 ** ((levels_db[k] - lvl) / 20) if math.isfinite(lvl) else v
    total = sum(out.values())
    peak = max(float(np.abs(total).max()), *(float(np.abs(v).max()) for v in out.values()))
    scale = min(1.0, peak_limit / peak) if peak > 0 else 1.0
    out = {k: quantize(v * scale) for k, v in out.items()}
    mixture = np.sum([out[k].astype(np.float64) for k in out], axis=0)
    if np.abs(mixture).max() > (PCM16_SCALE - 1) / PCM16_SCALE:
        raise CorpusError("mixture exceeds full scale after quantization (lower peak_limit)")
    out["mixture"] = mixture.astype(np.float32)
    return out


def stems_sum_error(mixture: np.ndarray, stems: Sequence[np.ndarray]) -> float:
    """Max absolute difference between the mixture and the sum of the stems."""
    return float(np.abs(mixture.astype(np.float64) - np.sum([s.astype(np.float64) for s in stems], axis=0)).max())


# ----------------------------------------------------------------------------- rendering (tools)
@dataclass(frozen=True)
class TrackSpec:
    """Everything that decides one track."""

    track_id: str
    split: str
    chart: str
    transpose: int
    groove: str
    tempo: int
    soundfont: str
    voice: str
    voice_low: int
    voice_high: int
    seconds: float
    seed: int


def mma_song(chords: Sequence[str], groove: str, tempo: int, seed: int) -> str:
    """MMA source of a song; ``RndSeed`` makes MMA's humanizing (random timing/velocity) repeatable."""
    lines = [f"RndSeed {seed}", f"Tempo {tempo}", f"Groove {groove}"]
    lines += [f"{i} {c}" for i, c in enumerate(chords, start=1)]
    return "\n".join(lines) + "\n"


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # mma is a Python program: keep its set order fixed
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if res.returncode != 0 or "Error" in res.stdout:
        raise CorpusError(f"`{' '.join(cmd)}` failed: {(res.stdout + res.stderr).strip()[-600:]}")


def render_midi(mid: Path, soundfont: Path, wav: Path, sample_rate: int, gain: float = 0.5) -> None:
    _run(["fluidsynth", "-ni", "-q", "-g", str(gain), "-r", str(sample_rate), "-T", "wav", "-O", "float", "-F", str(wav), str(soundfont), str(mid)], wav.parent)


#: MIDI pitch -> note name as Festival's singing mode reads it (``C4`` = MIDI 60).
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: Prefix of a TrackSpec voice sung by Festival's singing mode (``festival:<voice>``); other voices are espeak-ng.
FESTIVAL_PREFIX = "festival:"


def note_name(pitch: int) -> str:
    """MIDI pitch -> ``<name><octave>`` (``60`` -> ``C4``)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def singing_xml(notes: Sequence[Note], words: Sequence[str], tempo: float) -> str:
    """Festival singing-mode document (SINGING markup) for ``notes``: gaps become RESTs, so the
    first note starts at its beat; each note sings ``words[note.syllable % len(words)]``."""
    from xml.sax.saxutils import escape

    parts = [f'<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" "Singing.v0_1.dtd" []>\n<SINGING BPM="{tempo:g}">']
    t = 0.0
    for n in notes:
        if n.start > t + 1e-6:
            parts.append(f'<REST BEATS="{n.start - t:g}"></REST>')
        parts.append(f'<PITCH NOTE="{note_name(n.pitch)}"><DURATION BEATS="{n.beats:g}">{escape(words[n.syllable % len(words)])}</DURATION></PITCH>')
        t = n.start + n.beats
    parts.append("</SINGING>")
    return "\n".join(parts) + "\n"


def festival_vocals(notes: Sequence[Note], words: Sequence[str], tempo: float, voice: str, work: Path) -> tuple[np.ndarray, int]:
    """A sung vocal line by Festival's singing mode with ``voice`` (e.g. ``ked_diphone``).

    Returns:
        ``(wave (samples,) float32, sample_rate)`` as Festival wrote it (16 kHz for diphone voices).

    Raises:
        CorpusError: ``text2wave`` is missing or fails (``apt-get install festival festvox-kdlpc16k``).
    """
    from separator import audio

    if not notes:
        return np.zeros(1, np.float32), 16000
    (work / "song.xml").write_text(singing_xml(notes, words, tempo), encoding="utf-8")
    try:
        _run(["text2wave", "-mode", "singing", "-eval", f"(voice_{voice})", "song.xml", "-o", "sung.wav"], work)
    except FileNotFoundError as exc:
        raise CorpusError("text2wave not found: apt-get install festival festvox-kdlpc16k (or run the builder with --install-deps)") from exc
    wav, sr = audio.load(work / "sung.wav", channels=1)
    return wav[0].numpy().astype(np.float32), sr


def syllable_bank(voice: str, texts: Sequence[str], work: Path) -> list[tuple[np.ndarray, float, int]]:
    """(wave, f0, sample_rate) of each syllable spoken by espeak-ng ``voice`` (slow)."""
    from separator import audio

    from .events import trim_silence

    out = []
    for i, t in enumerate(texts):
        f = work / f"syl_{i}.wav"
        _run(["espeak-ng", "-v", voice, "-s", "80", "-w", str(f), t], work)
        wav, sr = audio.load(f, channels=1)
        x = trim_silence(wav[0].numpy(), sr, threshold_db=-35.0)
        out.append((x, estimate_f0(x, sr), sr))
    return out
