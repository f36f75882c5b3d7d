"""Evaluation: MUSDB18 under the SiSEC18 and the (non-standard) ZS-ASS protocols, and zero-shot
two-source mixture benchmarks.

Importing this package imports neither ``musdb`` nor ``museval`` (they need ffmpeg at import
time); they are imported by :mod:`separator.eval.deps` when an evaluation runs. Submodules:
``estimators`` (the Estimator interface and oracles), ``wiener`` (multichannel Wiener
post-filter), ``musdb`` (MUSDB18 driver), ``queries`` (stem queries from the MUSDB18 train set),
``mixtures`` (seeded two-source benchmarks), ``run`` (what ``qsep evaluate`` runs: a model folder
or oracles wired to the drivers). The metrics (SDR, SI-SDR, MDX SDR) are
:mod:`qsep_core.metrics`, re-exported here.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "sdr": "qsep_core.metrics", "si_sdr": "qsep_core.metrics", "mdx_sdr": "qsep_core.metrics",
    "Estimator": "separator.eval.estimators", "MixtureOracle": "separator.eval.estimators",
    "IdealRatioMask": "separator.eval.estimators", "ConditionEstimator": "separator.eval.estimators",
    "oracle": "separator.eval.estimators",
    "wiener": "separator.eval.wiener",
    "evaluate_musdb": "separator.eval.musdb", "summarize": "separator.eval.musdb",
    "Sisec18Protocol": "separator.eval.musdb", "ZsassProtocol": "separator.eval.musdb",
    "FfmpegNotFoundError": "separator.eval.deps", "require_ffmpeg": "separator.eval.deps",
    "build_stem_queries": "separator.eval.queries", "StemQueryConfig": "separator.eval.queries",
    "evaluate_mixtures": "separator.eval.mixtures", "MixtureSetConfig": "separator.eval.mixtures",
    "run_musdb": "separator.eval.run", "run_mixtures": "separator.eval.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'separator.eval' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
