"""Evaluation: MUSDB18 under the SiSEC18 and the (non-standard) ZS-ASS protocols, and zero-shot
two-source mixture benchmarks.

Importing this package imports neither ``musdb`` nor ``museval`` (they need ffmpeg at import
time); they are imported by :mod:`separator.eval.deps` when an evaluation runs. Submodules:
``metrics`` (SDR, SI-SDR, MDX SDR), ``estimators`` (the Estimator interface and oracles),
``wiener`` (multichannel Wiener post-filter), ``musdb`` (MUSDB18 driver), ``queries`` (stem
queries from the MUSDB18 train set), ``mixtures`` (seeded two-source benchmarks).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "sdr": "metrics", "si_sdr": "metrics", "mdx_sdr": "metrics",
    "Estimator": "estimators", "MixtureOracle": "estimators", "IdealRatioMask": "estimators",
    "ConditionEstimator": "estimators", "oracle": "estimators",
    "wiener": "wiener",
    "evaluate_musdb": "musdb", "summarize": "musdb", "Sisec18Protocol": "musdb", "ZsassProtocol": "musdb",
    "FfmpegNotFoundError": "deps", "require_ffmpeg": "deps",
    "build_stem_queries": "queries", "StemQueryConfig": "queries",
    "evaluate_mixtures": "mixtures", "MixtureSetConfig": "mixtures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'separator.eval' has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"separator.eval.{module}"), name)
