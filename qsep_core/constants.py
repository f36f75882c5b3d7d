"""Facts shared by the detector, the separators, mining, evaluation and the CLI, each stated once.

Config dataclasses take their defaults from here, and the CLI's help reads the same names, so a
changed fact changes everywhere. This module imports nothing (the CLI reads it before torch loads).
"""
from __future__ import annotations

__all__ = ["SAMPLE_RATE", "HOP_LENGTH", "WIN_LENGTH", "N_FFT", "ANCHOR_SECONDS", "CACHE_ENV", "user_cache_dir"]

#: Hz: the rate every qsep model runs at (HTS-AT and the query U-Nets, as the official models)
SAMPLE_RATE = 32000
#: samples between STFT frames of HTS-AT and of the separators (10 ms at 32 kHz)
HOP_LENGTH = 320
#: samples: HTS-AT's analysis window and FFT size, also the FFT size of the small separator presets (32 ms)
WIN_LENGTH = 1024
#: samples: FFT size of the official ZS-ASS separator and of :class:`qsep_core.dsp.StftConfig` (64 ms)
N_FFT = 2048
#: seconds: one anchor segment (mining), one audio-query segment, one ZS-ASS evaluation segment
ANCHOR_SECONDS = 2.0

#: environment variable that moves qsep's user cache (models by name, text-embedding cache)
CACHE_ENV = "QSEP_CACHE"


def user_cache_dir():
    """qsep's user cache folder: ``$QSEP_CACHE``, default ``~/.cache/qsep`` (a :class:`pathlib.Path`)."""
    import os
    from pathlib import Path

    return Path(os.environ.get(CACHE_ENV, "~/.cache/qsep")).expanduser()
