"""Write a small generated weakly-labeled corpus: the first recipe, which runs the whole chain in minutes.

Six synthetic sound classes with distinct spectro-temporal shapes (so a tiny detector learns them in a
few hundred steps); each clip holds one or two of them at random times over faint noise and is labeled
at the clip level only (weak labels, as AudioSet). ``chirp`` never occurs in the train and val splits: it
is the held-out (zero-shot) class of the test split.

Output (``--out DIR``)::

    DIR/audio/{train,val,test}/clip_NNNN.wav   mono, 32 kHz, 16-bit, 3 s
    DIR/train.csv, val.csv, test.csv           path,labels  (path relative to the CSV, labels ';'-separated)
    DIR/classes.csv                            class,split   (train or held-out)

Every clip is a function of ``(--seed, split, index)``; rerunning gives the same files.

    python -m recipes.toy.build --out toy
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 32000
CLIP_SECONDS = 3.0
TRAIN_CLASSES = ("beep", "hum", "hiss", "knock", "trill")
HELD_OUT_CLASSES = ("chirp",)
CLIPS = {"train": 160, "val": 32, "test": 48}


def _envelope(n: int, attack: int, rng: np.random.Generator) -> np.ndarray:
    env = np.ones(n)
    a = min(attack, n // 2)
    env[:a] = np.linspace(0, 1, a)
    env[n - a:] = np.linspace(1, 0, a)
    return env * rng.uniform(0.5, 1.0)


def make_event(name: str, rng: np.random.Generator) -> np.ndarray:
    """One event of class ``name``: float64 samples at :data:`SAMPLE_RATE`, peak about 0.3."""
    sr = SAMPLE_RATE
    if name == "beep":  # short pure-tone bursts
        f, n_burst = rng.uniform(700, 1400), rng.integers(2, 5)
        burst = int(rng.uniform(0.08, 0.2) * sr)
        gap = int(rng.uniform(0.05, 0.15) * sr)
        t = np.arange(burst) / sr
        one = np.sin(2 * math.pi * f * t) * _envelope(burst, 80, rng)
        out = np.concatenate([np.concatenate([one, np.zeros(gap)]) for _ in range(n_burst)])
    elif name == "hum":  # a low harmonic drone
        n = int(rng.uniform(0.8, 1.6) * sr)
        f0, t = rng.uniform(80, 160), np.arange(n) / sr
        out = sum(np.sin(2 * math.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 7)) * _envelope(n, 1600, rng)
    elif name == "hiss":  # high-passed noise
        n = int(rng.uniform(0.5, 1.2) * sr)
        x = rng.standard_normal(n)
        spec = np.fft.rfft(x)
        spec[: int(4000 / (sr / 2) * len(spec))] = 0
        out = np.fft.irfft(spec, n) * _envelope(n, 800, rng)
    elif name == "knock":  # trains of decaying low thuds
        n = int(rng.uniform(0.6, 1.2) * sr)
        out, period = np.zeros(n), int(rng.uniform(0.12, 0.25) * sr)
        f, decay = rng.uniform(150, 300), rng.uniform(25, 45)
        t = np.arange(period) / sr
        thud = np.sin(2 * math.pi * f * t) * np.exp(-decay * t)
        for start in range(0, n - period, period):
            out[start:start + period] += thud * rng.uniform(0.6, 1.0)
    elif name == "trill":  # a high tone amplitude-modulated at ~20 Hz
        n = int(rng.uniform(0.5, 1.0) * sr)
        t = np.arange(n) / sr
        f, fm = rng.uniform(2200, 3200), rng.uniform(15, 25)
        out = np.sin(2 * math.pi * f * t) * (0.5 + 0.5 * np.sin(2 * math.pi * fm * t)) * _envelope(n, 400, rng)
    elif name == "chirp":  # upward frequency sweeps
        n_sweeps = rng.integers(1, 4)
        pieces = []
        for _ in range(n_sweeps):
            n = int(rng.uniform(0.15, 0.4) * sr)
            t = np.arange(n) / sr
            f0, f1 = rng.uniform(400, 800), rng.uniform(3000, 5000)
            phase = 2 * math.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1]))
            pieces += [np.sin(phase) * _envelope(n, 100, rng), np.zeros(int(0.08 * sr))]
        out = np.concatenate(pieces)
    else:
        raise ValueError(f"unknown toy class {name!r}; classes: {TRAIN_CLASSES + HELD_OUT_CLASSES}")
    return 0.3 * out / (np.abs(out).max() + 1e-9)


def make_clip(labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """A clip holding one or more events of each class in ``labels`` over faint white noise (-60 dBFS)."""
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    clip = 1e-3 * rng.standard_normal(n)
    for name in labels:
        for _ in range(rng.integers(1, 3)):
            ev = make_event(name, rng)[:n]
            start = rng.integers(0, n - len(ev) + 1)
            clip[start:start + len(ev)] += ev
    return np.clip(clip, -1, 1)


def build(out: str | Path, seed: int = 0) -> Path:
    """Write the corpus to ``out`` (see the module doc); returns ``out``."""
    out = Path(out)
    rows: dict[str, list[tuple[str, str]]] = {}
    for split_index, (split, count) in enumerate(CLIPS.items()):
        classes = TRAIN_CLASSES + (HELD_OUT_CLASSES if split == "test" else ())
        folder = out / "audio" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows[split] = []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            k = 1 if rng.random() < 0.6 else 2
            labels = sorted(rng.choice(classes, size=k, replace=False).tolist())
            if split == "test" and i % len(classes) == 0 and "chirp" not in labels:
                labels = sorted(set(labels[:1]) | {"chirp"})  # enough held-out clips to evaluate
            path = folder / f"clip_{i:04d}.wav"
            sf.write(path, make_clip(labels, rng), SAMPLE_RATE, subtype="PCM_16")
            rows[split].append((path.relative_to(out).as_posix(), ";".join(labels)))
    for split, items in rows.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels"])
            w.writerows(items)
    with open(out / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "split"])
        w.writerows([(c, "train") for c in TRAIN_CLASSES] + [(c, "held-out") for c in HELD_OUT_CLASSES])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="toy", help="output folder (default: toy)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    folder = build(a.out, a.seed)
    n = sum(CLIPS.values())
    print(f"wrote {n} clips ({', '.join(f'{k} {v}' for k, v in CLIPS.items())}) of {len(TRAIN_CLASSES)} classes "
          f"+ held-out {', '.join(HELD_OUT_CLASSES)} to {folder}")


if __name__ == "__main__":
    main()
