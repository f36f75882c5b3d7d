"""What ``qsep evaluate musdb|mixtures`` runs: a model folder (or oracles) wired to the evaluation drivers.

The drivers (:mod:`separator.eval.musdb`, :mod:`separator.eval.mixtures`) only know the
:class:`~separator.eval.estimators.Estimator` interface. This module turns a model folder into
one (:func:`load_model`: a query encoder and a separator), builds the stem or class queries,
keeps the mixture set and the conditions cached, names and writes the results. The CLI parses
options, calls :func:`run_musdb` / :func:`run_mixtures`, and reports.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from qsep_core.atomic import atomic_write_text
from separator.eval import estimators as est_mod
from separator.eval import mixtures as mx

__all__ = ["Encode", "Separate", "load_model", "musdb_estimators", "run_musdb", "MixtureRun", "run_mixtures"]

#: ``encode(text=... | audio=[files] | label=...) -> condition (D,)``
Encode = Callable[..., torch.Tensor]
#: ``separate(waveform (C, T), sample_rate, condition) -> target (C, T)``
Separate = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[str, int, int], None]


def load_model(model: str | os.PathLike) -> tuple[Encode, Separate]:
    """A model folder as two callables: :data:`Encode` (its query encoders) and :data:`Separate` (its separator).

    Raises:
        separator.checkpoint.CheckpointError: the folder is missing, malformed or holds no separator.
    """
    from separator.api import Separator
    from separator.query.compose import Query, QueryEncoder

    sep = Separator.from_pretrained(model)
    encoder = QueryEncoder.from_model(model)

    def encode(**query: Any) -> torch.Tensor:
        return encoder.encode(Query.build(**query)).condition

    def separate(wav: torch.Tensor, sample_rate: int, condition: torch.Tensor) -> torch.Tensor:
        return sep.separate_condition(wav, sample_rate, condition).target

    return encode, separate


def musdb_estimators(root: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                     oracles: Sequence[str] = (), text_queries: bool = False,
                     query_dir: str | os.PathLike | None = None) -> list[est_mod.Estimator]:
    """The estimators of a MUSDB18 run: the oracles named, then the model (``"model"``, or ``"model-text"``
    with text queries).

    The model's stem queries are text (:data:`separator.eval.queries.DEFAULT_STEM_TEXTS`) or embeddings of
    train-set stems (:func:`separator.eval.queries.build_stem_queries`, cached in ``query_dir``,
    default ``out/queries``).

    Raises:
        ValueError: neither a model nor an oracle, or an unknown oracle.
        separator.checkpoint.CheckpointError: the model folder does not load.
        separator.eval.deps.FfmpegNotFoundError: train-set queries need musdb, which needs ffmpeg.
    """
    from separator.eval import musdb as ev
    from separator.eval.queries import DEFAULT_STEM_TEXTS, build_stem_queries

    if model is None and not oracles:
        raise ValueError("nothing to evaluate: give --model DIR and/or --oracle mixture|irm")
    estimators = [est_mod.oracle(kind) for kind in oracles]
    if model is not None:
        encode, separate = load_model(model)
        model_id = str(Path(model).resolve())
        if text_queries:
            queries = {stem: encode(text=text) for stem, text in DEFAULT_STEM_TEXTS.items()}
            name = "model-text"
        else:
            train = ev.select_tracks(ev.open_musdb(root, "train"))
            queries = build_stem_queries(train, embed_files=lambda files: encode(audio=[str(f) for f in files]),
                                         query_dir=query_dir or Path(out) / "queries", embedder_id=model_id)
            name = "model"
        estimators.append(est_mod.ConditionEstimator(separate=separate, queries=queries, name=name, model_id=model_id))
    return estimators


def run_musdb(root: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
              oracles: Sequence[str] = (), protocol: str = "sisec18", subset: str = "test",
              tracks: int | str | Sequence[str] | None = None, duration: float | None = None,
              text_queries: bool = False, query_dir: str | os.PathLike | None = None, jobs: int = 1,
              save_estimates: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Evaluate a model and/or oracles on MUSDB18 (:func:`separator.eval.musdb.evaluate_musdb`); returns the summary.

    Raises:
        ValueError: nothing to evaluate, an unknown protocol, oracle or track name, bad options.
        FileNotFoundError: no MUSDB18 tracks under ``root``.
        separator.eval.deps.FfmpegNotFoundError: ffmpeg is missing (musdb and museval need it).
        separator.checkpoint.CheckpointError: the model folder does not load.
    """
    from separator.eval import musdb as ev

    proto = ev.protocol_from_name(protocol)
    estimators = musdb_estimators(root, out, model=model, oracles=oracles, text_queries=text_queries,
                                  query_dir=query_dir)
    return ev.evaluate_musdb(root, estimators, out, protocol=proto, subset=subset, tracks=tracks, duration=duration,
                             jobs=jobs, save_estimates=save_estimates, progress=progress)


@dataclass
class MixtureRun:
    """What :func:`run_mixtures` did.

    Attributes:
        results: :func:`separator.eval.mixtures.evaluate_mixtures`'s dict.
        json_path, markdown_path: where the results were written (``results_<method>_<query>.json`` / ``.md``).
        reused_set: the mixture set was read from ``out/mixture_set.json`` (not drawn anew).
    """

    results: dict[str, Any]
    json_path: Path
    markdown_path: Path
    reused_set: bool


def _class_conditions(encode: Encode, separate: Separate) -> Callable[[torch.Tensor, int, mx.Query], torch.Tensor]:
    """``separate`` for :class:`~separator.eval.mixtures.Query` stems, encoding each (kind, class) query once."""
    conditions: dict[tuple[str, str], torch.Tensor] = {}

    def by_query(wav: torch.Tensor, sample_rate: int, q: mx.Query) -> torch.Tensor:
        key = (q.kind, q.label)
        if key not in conditions:
            value = {"text": q.text, "audio": list(q.audio), "label": q.label}[q.kind]
            conditions[key] = encode(**{q.kind: value})
        return separate(wav, sample_rate, conditions[key])

    return by_query


def run_mixtures(corpus: str | os.PathLike, out: str | os.PathLike, *, held_out: Sequence[str],
                 model: str | os.PathLike | None = None, oracle: str | None = None,
                 classes: Sequence[str] | None = None, query: str = "text", unrelated_text: str | None = None,
                 per_class: int = 10, seed: int = 0, progress: ProgressFn | None = None) -> MixtureRun:
    """Evaluate a model (or an oracle) on seeded two-source mixtures of a weak-label corpus and write the results.

    The mixture set is drawn once and kept in ``out/mixture_set.json``: a later run in the same ``out``
    evaluates exactly the same mixtures (its ``per_class`` and ``seed`` are then those of the file).

    Args:
        corpus: a CSV manifest (``path,labels``) or an AudioSet-style folder.
        held_out: classes never seen in training (reported separately).
        model, oracle: exactly one of a model folder or ``"mixture"`` / ``"irm"``.
        classes: the classes to evaluate (default: every label in the corpus).
        query: ``"text"``, ``"audio"`` or ``"label"`` (models only).
        unrelated_text: a control (text queries of a model): every class is queried with this one text;
            the results are named ``results_<method>_text_unrelated`` and record it as ``query_text``.

    Raises:
        ValueError: not exactly one of model / oracle, an unknown query kind or oracle, a class without clips,
            or ``unrelated_text`` without a model and text queries.
        FileNotFoundError: the corpus is missing.
        separator.checkpoint.CheckpointError: the model folder does not load.
    """
    if (model is None) == (oracle is None):
        raise ValueError("give exactly one of --model DIR or --oracle mixture|irm")
    if oracle is None and query not in mx.QUERY_KINDS:
        raise ValueError(f"unknown query kind {query!r}; choose one of {list(mx.QUERY_KINDS)}")
    if unrelated_text is not None and (query != "text" or oracle is not None):
        raise ValueError("--unrelated-text is a control for --query text with a --model")
    out = Path(out)
    items = mx.read_corpus(corpus)
    wanted = list(classes) if classes else sorted({lab for it in items for lab in it.labels})
    set_path = out / "mixture_set.json"
    reused = set_path.is_file()
    if reused:
        specs, query_audio, config = mx.load_mixture_set(set_path)
    else:
        config = mx.MixtureSetConfig(mixtures_per_class=per_class, seed=seed)
        specs, query_audio = mx.build_mixture_set(items, wanted, config)
        mx.save_mixture_set(set_path, specs, query_audio, config)
    if oracle is not None:
        estimator: est_mod.Estimator = est_mod.oracle(oracle)
    else:
        estimator = est_mod.ConditionEstimator(separate=_class_conditions(*load_model(model)), name="model")
    texts = {c: unrelated_text for c in wanted} if unrelated_text else None
    results = mx.evaluate_mixtures(specs, estimator, held_out, query_kind=query, query_audio=query_audio,
                                   config=config, texts=texts, progress=progress)
    if unrelated_text:
        results["query_text"] = unrelated_text
    out.mkdir(parents=True, exist_ok=True)
    stem = f"results_{results['method']}_{query}" + ("_unrelated" if unrelated_text else "")
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    atomic_write_text(md_path, mx.results_markdown(results))
    return MixtureRun(results, json_path, md_path, reused)
