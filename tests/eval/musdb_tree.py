"""A tiny MUSDB18-HQ (``is_wav``) tree written by the tests: band-limited noise as stems."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
STEMS = ("vocals", "drums", "bass", "other")
#: Per stem: (band in Hz, RMS). Noise in disjoint bands keeps the stems orthogonal to each other's
#: filtered versions, so BSS Eval's projection of the mixture onto a stem is that stem (up to a
#: tiny leakage) and the mixture-as-estimate SDR is an energy ratio the test computes by hand.
BANDS = {"vocals": ((400.0, 1500.0), 0.08), "drums": ((3000.0, 6000.0), 0.06),
         "bass": ((50.0, 200.0), 0.10), "other": ((9000.0, 15000.0), 0.04)}


def _band_noise(band: tuple[float, float], rms: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(round(seconds * RATE))
    spec = np.fft.rfft(rng.standard_normal((2, n)), axis=-1)
    freqs = np.fft.rfftfreq(n, 1.0 / RATE)
    spec[:, (freqs < band[0]) | (freqs > band[1])] = 0.0
    x = np.fft.irfft(spec, n=n, axis=-1)
    x *= rms / np.sqrt(np.mean(x**2, axis=-1, keepdims=True))
    return x.T  # (time, channels)


def quantize(x: np.ndarray) -> np.ndarray:
    """What a 16-bit wav file holds (musdb reads wav through ffmpeg as s16le)."""
    return np.round(x * 32767.0) / 32767.0


def write_track(folder: Path, seconds: float, silent_vocals_until: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``mixture.wav`` + the four stems; return the stems as written (time, channels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stems = {}
    for s in STEMS:
        band, rms = BANDS[s]
        x = _band_noise(band, rms, seconds, rng)
        if s == "vocals" and silent_vocals_until > 0:
            x[: int(round(silent_vocals_until * RATE))] = 0.0
        stems[s] = quantize(x)
        sf.write(folder / f"{s}.wav", stems[s], RATE, subtype="PCM_16")
    mix = quantize(sum(stems.values()))
    sf.write(folder / "mixture.wav", mix, RATE, subtype="PCM_16")
    stems["mixture"] = mix
    return stems


def tiny_musdb_tree(root: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Write ``root/{train,test}/<track>/*.wav``; return the root and the test tracks' arrays by name."""
    write_track(root / "train" / "Train Song", 4.5, seed=1)
    write_track(root / "train" / "Train Quiet Vocals", 4.5, silent_vocals_until=2.2, seed=2)
    tracks = {
        "A Steady": write_track(root / "test" / "A Steady", 3.0, seed=3),
        "B Late Vocals": write_track(root / "test" / "B Late Vocals", 4.5, silent_vocals_until=2.2, seed=4),
    }
    return root, tracks
