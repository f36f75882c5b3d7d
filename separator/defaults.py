"""Defaults of separation that the API uses and the CLI's help states; this module imports nothing.

:mod:`separator.api` takes its defaults from here and ``qsep separate --help`` prints the same
values, so they cannot drift apart (the CLI reads them without importing torch).
"""
from __future__ import annotations

__all__ = ["DEFAULT_SEGMENT", "DEFAULT_OVERLAP", "DEFAULT_BATCH_SIZE", "DEFAULT_FILENAME", "RESIDUAL_PREFIX"]

# Defaults, from a measurement (2026-11): SI-SDR of chunked vs unchunked output of the same
# model (zsass with the fixture's synthetic official weights on 8 s of tones + chirp + noise;
# resunet_film_small with random weights on 30 s). Without overlap the chunk seams cost
# agreement: 39 / 42 / 48 dB (zsass, 1 / 2 / 4-s segments), 32 / 35 / 38 / 40 / 43 dB
# (small, 1 / 2 / 4 / 6 / 10 s). A 25% Hann cross-fade lifts every case to 48-72 dB for
# 1.33x the compute; 10% already gives ~54 dB on the small model. On the TRAINED shipped model
# (qsep-starter, 2026-11-23: the first 30 s of 3 test tracks x vocals/drums/bass text queries,
# 6.075-s chunks vs one 30-s chunk) the agreement is 32.1 / 33.9 / 33.6 dB median (26.7 / 27.4 /
# 27.7 dB worst) for overlap 0 / 0.1 / 0.25: far above the model's own error, and 0.1 is as good
# as 0.25 for 1.11x instead of 1.33x the compute, so 0.1 is the default. Longer segments mean
# fewer seams and more context, but activation memory grows with the segment (zsass: ~0.5 GB
# per 6-s mono chunk once prepared for inference), so 6 s with one chunk per call is the default.
#: chunk length in seconds (rounded to the model's padding-free length, see ``snap_segment``)
DEFAULT_SEGMENT = 6.0
#: fraction of a chunk shared with the next one
DEFAULT_OVERLAP = 0.1
#: chunks per model call (each chunk carries all channels); raise it on a GPU
DEFAULT_BATCH_SIZE = 1
#: output file name template of :meth:`Separator.separate_file` and ``qsep separate``
DEFAULT_FILENAME = "{track}/{query}.{ext}"
#: prefix of the residual's ``{query}`` name (Demucs' ``--two-stems`` convention: ``no_vocals``)
RESIDUAL_PREFIX = "no_"
